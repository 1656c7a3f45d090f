"""The generated preference world: determinism, config errors, labels, the reward, clusters, files,
the oracle's verdict rule and the atomic data folder written by rpo.data.prepare."""
import filecmp
import itertools
import json
import math
import random

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from rpo.data.prepare import main as prepare_main, prepare
from rpo.data.records import ASSISTANT, USER, read_eval_prompts, read_records
from rpo.errors import ConfigError, DataError
from rpo.world import World, WorldConfig, generate_world, load_world, reward, verdict
from rpo.world.generator import _draw_prompt
from rpo.world.lexicon import DIALOGUE_THEMES, GOOD_FRAMES
from rpo.world.lexicon_posts import POST_THEMES
from rpo.world.ground_truth import content_words, words
from rpo.world.tasks import join_clauses, second_person

SMALL = {
    "seed": 3, "dialogue_clusters": 6, "dialogue_train_pairs": 90, "dialogue_test_pairs": 30,
    "summarization_clusters": 6, "summarization_train_pairs": 90, "summarization_test_pairs": 30,
    "instruction_prompts": 12,
}
FILES = ["dialogue/train.jsonl", "dialogue/test.jsonl", "summarization/train.jsonl",
         "summarization/test.jsonl", "instructions/eval.jsonl", "world.json"]


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world({**SMALL, "label_noise": 0.0})


@pytest.fixture(scope="module")
def noisy_world() -> World:
    return generate_world({"seed": 7, "label_noise": 0.25, "instruction_prompts": 8})  # default sizes


def all_records(w: World):
    return [r for task in w.splits for split in w.splits[task] for r in w.splits[task][split]]


def by_name(themes):
    return {theme.name: theme for theme in themes}


# ---- determinism and files ----

def test_same_seed_gives_byte_identical_files_and_load_world_regenerates_them(tmp_path):
    generate_world(SMALL).write(tmp_path / "a")
    generate_world(dict(SMALL)).write(tmp_path / "b")
    load_world(tmp_path / "a" / "world.json").write(tmp_path / "c")
    for name in FILES:
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False), name
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "c" / name, shallow=False), name
    generate_world({**SMALL, "seed": 4}).write(tmp_path / "d")
    assert not filecmp.cmp(tmp_path / "a" / FILES[0], tmp_path / "d" / FILES[0], shallow=False)


def test_written_files_are_valid_records_with_the_metadata_the_pipeline_needs(world, tmp_path):
    world.write(tmp_path)
    for task, truncation in (("dialogue", "keep_end"), ("summarization", "keep_start")):
        for split, n in (("train", 90), ("test", 30)):
            records = read_records(tmp_path / task / f"{split}.jsonl")
            assert len(records) == n
            assert records == world.records(task, split)
            assert {r.metadata["truncation"] for r in records} == {truncation}
            assert {r.metadata["task"] for r in records} == {task}
            assert {r.metadata["cluster"] for r in records} == set(range(6))
    prompts = read_eval_prompts(tmp_path / "instructions" / "eval.jsonl")
    assert len(prompts) == 12 and all(p.reference.strip() for p in prompts)
    assert json.loads((tmp_path / "world.json").read_text()) == world.config.to_dict() == {**WorldConfig().to_dict(), **SMALL, "label_noise": 0.0}


def test_test_split_does_not_depend_on_the_train_size():
    small = generate_world({**SMALL, "dialogue_train_pairs": 40})
    assert small.records("dialogue", "test") == generate_world(SMALL).records("dialogue", "test")


DATA_CONFIG = {"source": "world", "tasks": ["dialogue", "summarization"], "world": SMALL}


def test_prepare_cli_writes_the_world_and_reports_bad_keys(tmp_path, capsys):
    assert prepare_main(["--data-config", json.dumps(DATA_CONFIG), "--out", str(tmp_path / "out")]) == 0
    assert all((tmp_path / "out" / name).is_file() for name in FILES + ["load_report.json"])
    assert len(read_records(tmp_path / "out" / "dialogue" / "train.jsonl")) == 90
    bad = {**DATA_CONFIG, "world": {"dialog_clusters": 4}}
    assert prepare_main(["--data-config", json.dumps(bad), "--out", str(tmp_path / "bad")]) == 2
    assert "dialog_clusters" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        prepare_main(["--data-config", "{not json", "--out", str(tmp_path / "bad")])
    assert "--data-config: invalid JSON" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def _folder(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_prepare_replaces_an_existing_folder_as_a_whole(tmp_path):
    out = tmp_path / "data"
    (out / "dialogue").mkdir(parents=True)  # as snakemake leaves it: output folders made before the job
    (out / "stale.txt").write_text("left by an earlier run\n")
    prepare(DATA_CONFIG, out)
    fresh = tmp_path / "fresh"
    prepare(DATA_CONFIG, fresh)
    assert _folder(out) == _folder(fresh) and "stale.txt" not in _folder(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


@pytest.mark.parametrize("existing", [False, True])
def test_a_failure_mid_way_leaves_no_partial_folder(tmp_path, monkeypatch, existing):
    out = tmp_path / "data"
    if existing:
        prepare({**DATA_CONFIG, "world": {**SMALL, "seed": 9}}, out)
    before = _folder(out) if existing else None

    def fail(path, prompts):  # the world's records are written, then the eval prompts fail
        raise OSError("disk full")

    monkeypatch.setattr("rpo.world.generator.write_eval_prompts", fail)
    with pytest.raises(OSError, match="disk full"):
        prepare(DATA_CONFIG, out)
    assert (_folder(out) == before) if existing else not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == (["data"] if existing else [])


# ---- config ----

@pytest.mark.parametrize("raw, key", [
    ({"dialog_train_pairs": 10}, "dialog_train_pairs"),
    ({"dialogue_clusters": "4"}, "dialogue_clusters"),
    ({"dialogue_clusters": len(DIALOGUE_THEMES) + 1}, "dialogue_clusters"),
    ({"summarization_test_pairs": 0}, "summarization_test_pairs"),
    ({"label_noise": 0.5}, "label_noise"),
    ({"label_noise": True}, "label_noise"),
    ({"post_facts": 6}, "post_facts"),
    ({"candidates_per_prompt": 1}, "candidates_per_prompt"),
    # one cluster has 4 objects x 3 problems x 4 frames = 48 distinct instructions
    ({**SMALL, "dialogue_clusters": 1, "instruction_prompts": 60}, "instruction_prompts"),
])
def test_config_errors_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=key):
        generate_world(raw)


def test_load_world_names_the_file_on_a_bad_config(tmp_path):
    path = tmp_path / "world.json"
    path.write_text(json.dumps({"seed": 1, "colour": "red"}))
    with pytest.raises(ConfigError, match="world.json.*colour"):
        load_world(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="world.json"):
        load_world(path)


# ---- labels ----

def test_label_noise_rate_matches_the_config_and_labels_follow_the_true_reward(noisy_world):
    for task in ("dialogue", "summarization"):
        records = noisy_world.records(task, "train")
        assert len(records) == 2000
        flipped = [r.metadata["label_flipped"] for r in records]
        assert abs(np.mean(flipped) - 0.25) < 0.035, task
        correct = [r.metadata["chosen_reward"] > r.metadata["rejected_reward"] for r in records]
        assert correct == [not f for f in flipped]  # the true order holds exactly where no flip happened
        assert abs(np.mean(correct) - 0.75) < 0.035


def test_without_noise_chosen_is_always_truly_better(world):
    for r in all_records(world):
        assert r.metadata["label_flipped"] is False
        assert r.metadata["chosen_reward"] > r.metadata["rejected_reward"]


def test_stored_rewards_are_the_reward_of_the_stored_texts(world):
    for r in all_records(world):
        task = r.metadata["task"]
        assert reward(task, r.prompt, r.chosen, r.metadata) == r.metadata["chosen_reward"]
        assert reward(task, r.prompt, r.rejected, r.metadata) == r.metadata["rejected_reward"]


def test_records_are_well_formed_short_and_unique(world):
    records = all_records(world)
    prompts = [r.prompt for r in records] + [p.prompt for p in world.instructions]
    assert len(set(prompts)) == len(prompts)  # one metadata per prompt text
    for r in records:
        assert r.chosen != r.rejected and r.chosen.strip() and r.rejected.strip()
        assert r.prompt.startswith(USER) and r.prompt.endswith(ASSISTANT)
        assert len(words(r.prompt)) <= 60
        assert max(len(words(r.chosen)), len(words(r.rejected))) <= 60
    for p in world.instructions:
        assert p.prompt.startswith(USER) and p.prompt.endswith(ASSISTANT)


# ---- the reward ----

def _dialogue_case(world):
    record = world.records("dialogue", "test")[0]
    meta = record.metadata
    theme = by_name(DIALOGUE_THEMES)[meta["theme"]]
    clauses = dict(theme.problems)[meta["problem"]]
    problem = second_person(meta["problem"])
    good = GOOD_FRAMES[0].format(obj=meta["object"], problem=problem, advice=join_clauses(clauses))
    partial = GOOD_FRAMES[0].format(obj=meta["object"], problem=problem, advice=clauses[0])
    other = next(t for t in DIALOGUE_THEMES if t.name != theme.name)
    off_topic = GOOD_FRAMES[1].format(obj=other.objects[0], problem=other.problems[0][0],
                                      advice=join_clauses(other.problems[0][1]))
    return record, theme, good, partial, off_topic


def test_dialogue_reward_orders_good_partial_off_topic_and_empty(world):
    record, theme, good, partial, off_topic = _dialogue_case(world)
    score = lambda text: world.reward_by_prompt(record.prompt, text)  # noqa: E731
    assert score(good) > 0.8
    assert score(good) > score(partial) > score("") >= score(off_topic)
    assert score(off_topic) < -0.3  # another cluster's good words earn nothing and cost
    assert score(good + " " + off_topic) < score(good) - 0.3
    assert 0 < score(record.metadata["object"]) < score(partial)  # a fragment gets partial credit


def test_dialogue_reward_penalises_flaws_repetition_and_length(world):
    record, theme, good, _, _ = _dialogue_case(world)
    score = lambda text: world.reward_by_prompt(record.prompt, text)  # noqa: E731
    assert score(f"{good} you could also {theme.harmful[0]}.") < score(good) - 0.9
    assert score(theme.evasive[0]) < 0
    assert score(f"{good} by the way, {theme.ramble[1]}") < score(good) - 0.3
    assert score(" ".join([good] * 2)) < score(good) - 0.5
    word = record.metadata["required"][0]
    assert score(word) - score(" ".join([word] * 12)) > 0.5  # within the word budget: repetition alone
    assert score(good + " and so on" * 100) < score(good) - 5
    assert math.isfinite(score("¿ñ 🙂 <|user|> \n\t" * 500))


def _summary_case(world):
    record = world.records("summarization", "test")[0]
    meta = record.metadata
    theme = by_name(POST_THEMES)[meta["theme"]]
    post = record.prompt.split("POST: ")[1].split("\nTL;DR:")[0]
    return record, theme, meta, post


def test_summary_reward_prefers_key_facts_without_filler(world):
    record, theme, meta, post = _summary_case(world)
    score = lambda text: world.reward_by_prompt(record.prompt, text)  # noqa: E731
    good = ", ".join(meta["facts"]) + "."
    partial = meta["facts"][0] + "."
    assert score(good) > 0.85
    assert score(good) > score(partial) > score("")
    assert score(post) < score(good) - 0.5  # copying the post keeps the filler and runs long
    assert score(good + " " + meta["filler"][0]) < score(good) - 0.3
    assert score(good + " " + meta["absent"][0]) < score(good) - 0.4  # a fact the post never states
    other = next(t for t in POST_THEMES if t.name != theme.name)
    assert score(", ".join(phrase for _, phrase in other.facts[:3])) < score("")
    assert score(" ".join([good] * 4)) < score(good) - 0.5


def test_instruction_references_are_mid_quality(world):
    for item in world.instructions:
        meta = item.metadata
        theme = by_name(DIALOGUE_THEMES)[meta["theme"]]
        advice = join_clauses(dict(theme.problems)[meta["problem"]])
        best = GOOD_FRAMES[0].format(obj=meta["object"], problem=second_person(meta["problem"]), advice=advice)
        assert world.reward_by_prompt(item.prompt, best) > meta["reference_reward"] > 0.3
        assert meta["reference_reward"] > world.reward_by_prompt(item.prompt, theme.evasive[0])


def test_reward_rejects_unknown_tasks_and_incomplete_metadata(world):
    record = world.records("dialogue", "test")[0]
    with pytest.raises(DataError, match="unknown task"):
        reward("poetry", record.prompt, "x", record.metadata)
    with pytest.raises(DataError, match="required"):
        reward("dialogue", record.prompt, "x", {k: v for k, v in record.metadata.items() if k != "required"})


def test_reward_by_prompt_finds_every_generated_prompt(world):
    for r in all_records(world):
        assert world.reward_by_prompt(r.prompt, r.chosen) == r.metadata["chosen_reward"]
        assert world.reward_by_prompt(r.prompt.strip(), r.chosen) == r.metadata["chosen_reward"]
    for item in world.instructions:
        assert world.reward_by_prompt(item.prompt, item.reference) == item.metadata["reference_reward"]
    with pytest.raises(KeyError, match="not generated by this world"):
        world.reward_by_prompt(USER + "an unknown question" + ASSISTANT, "answer")



# ---- the oracle's verdict ----

def test_the_oracle_verdict_is_exact_and_refuses_non_finite_rewards(world):
    assert [verdict(0.5, 0.25), verdict(0.25, 0.5), verdict(0.5, 0.5)] == ["A", "B", "tie"]
    assert verdict(0.5 + 1e-12, 0.5) == "A"  # no tolerance: equal rewards tie, any difference decides
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="not finite"):
            verdict(bad, 0.0)
    # the world's rewards are rounded to 6 decimals: distinct ones are never closer than float noise
    rewards = sorted({r.metadata[key] for r in all_records(world) for key in ("chosen_reward", "rejected_reward")})
    assert min(b - a for a, b in zip(rewards, rewards[1:])) > 0.99e-6

# ---- cluster structure ----

def test_tfidf_similarity_is_higher_within_clusters_than_across(world):
    for task in ("dialogue", "summarization"):
        records = world.records(task, "train")
        clusters = np.array([r.metadata["cluster"] for r in records])
        tfidf = TfidfVectorizer().fit_transform([r.prompt for r in records])
        similarity = (tfidf @ tfidf.T).toarray()
        same = (clusters[:, None] == clusters[None, :]) & ~np.eye(len(records), dtype=bool)
        within, across = similarity[same].mean(), similarity[clusters[:, None] != clusters[None, :]].mean()
        assert within > 2 * across, (task, within, across)


def _dialogue_theme_words(theme):
    good = set(content_words(theme.topic + " " + " ".join(theme.objects)))
    for problem, clauses in theme.problems:
        good |= set(content_words(problem + " " + " ".join(clauses)))
    bad = {phrase: set(content_words(phrase)) for phrase in theme.harmful + theme.evasive + theme.ramble}
    return good, bad


def test_dialogue_clusters_have_disjoint_vocabularies():
    vocab = {}
    for theme in DIALOGUE_THEMES:
        good, bad = _dialogue_theme_words(theme)
        for phrase, phrase_words in bad.items():
            assert phrase_words, f"{theme.name}: {phrase!r} has no content word, the reward cannot see it"
            assert not phrase_words & good, f"{theme.name}: {phrase!r} shares {phrase_words & good} with good words"
        for _, clauses in theme.problems:
            assert all(content_words(clause) for clause in clauses), theme.name
        vocab[theme.name] = good.union(*bad.values())
    for (a, words_a), (b, words_b) in itertools.combinations(vocab.items(), 2):
        assert not words_a & words_b, f"themes {a} and {b} share {sorted(words_a & words_b)}"


def test_post_clusters_have_disjoint_scored_phrases():
    vocab = {}
    for theme in POST_THEMES:
        phrase_words = [set(content_words(phrase)) for _, phrase in theme.facts + theme.fillers]
        assert all(phrase_words), theme.name
        for (i, x), (j, y) in itertools.combinations(enumerate(phrase_words), 2):
            assert not x & y, f"{theme.name}: phrases {i} and {j} share {x & y}"
        for sentence, phrase in theme.facts + theme.fillers:  # a contiguous run of the sentence's words
            assert f" {' '.join(words(phrase))} " in f" {' '.join(words(sentence))} ", f"{theme.name}: {phrase!r} not a span of {sentence!r}"
        vocab[theme.name] = set().union(*phrase_words)
    for (a, words_a), (b, words_b) in itertools.combinations(vocab.items(), 2):
        assert not words_a & words_b, f"themes {a} and {b} share {sorted(words_a & words_b)}"


def test_related_prompts_share_their_failure_modes(world):
    records = world.records("dialogue", "train")
    bad_by_cluster = {}
    for r in records:
        bad = (tuple(r.metadata["harmful"]), tuple(r.metadata["evasive"]), tuple(r.metadata["ramble"]))
        assert bad_by_cluster.setdefault(r.metadata["cluster"], bad) == bad


def test_default_sized_world_is_small_enough_to_learn(noisy_world):
    stats = noisy_world.stats()
    assert 500 <= stats["vocabulary_words"] <= 2500
    for key in ("dialogue/train", "summarization/train"):
        assert stats[key]["prompt_words"]["max"] <= 60
        assert stats[key]["response_words"]["p95"] <= 32
        assert stats[key]["chosen_reward"] > stats[key]["rejected_reward"]
    corpus = set(noisy_world.corpus())
    assert all({r.prompt, r.chosen, r.rejected} <= corpus for r in all_records(noisy_world))



def _candidates(task: str, n: int = 600) -> list[tuple[str, dict, str]]:
    """(prompt, metadata, candidate) for n fresh prompts of the first theme of `task`, drawn as the world draws them."""
    rng, config = random.Random(5), WorldConfig()
    theme = (DIALOGUE_THEMES if task == "dialogue" else POST_THEMES)[0]
    out = []
    for _ in range(n):
        prompt, metadata, write_candidate = _draw_prompt(task, theme, config, rng)
        out.append((prompt, metadata, write_candidate()))
    return out


def test_flaws_concentrate_on_careless_candidates():
    """Complete answers ramble or harm less often than incomplete ones: care is one trait of a response."""
    flawed = {True: [], False: []}
    for _, metadata, text in _candidates("dialogue"):
        present = set(content_words(text))
        bad = any(set(content_words(p)) & present for p in metadata["harmful"] + metadata["ramble"])
        flawed[set(metadata["required"]) <= present].append(bad)
    assert np.mean(flawed[True]) < 0.6 * np.mean(flawed[False]), {k: np.mean(v) for k, v in flawed.items()}


def test_summary_filler_follows_the_final_period_as_a_sentence_of_its_own():
    """Stopping after the facts and adding a filler sentence are then different tokens from stopping
    early and adding a fact: a preference loss can learn the one without the other."""
    with_filler = 0
    for prompt, metadata, text in _candidates("summarization"):
        if text[:-1] in prompt:
            continue  # the lazy summary: copied post sentences
        filler = {w for phrase in metadata["filler"] for w in content_words(phrase)}
        first, _, rest = text.partition(". ")
        assert not set(content_words(first)) & filler, text
        with_filler += bool(set(content_words(rest)) & filler)
    assert with_filler > 30
