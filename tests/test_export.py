"""World -> the hub's raw formats (rpo.world.export) -> the hub loaders -> the same records."""
import gzip
import json

import datasets
import pytest

from pathlib import Path

from rpo.world.export import export_hub_layout, main, post_fields, prompt_turns, write_alpaca_eval_json
from rpo.data.hub_rows import hh_row, hh_transcript
from rpo.data.loaders import load_eval_prompts, load_preference_data
from rpo.data.prepare import prepare
from rpo.data.records import format_turns, read_eval_prompts, read_records, write_records
from rpo.errors import DataError
from rpo.world import generate_world
from rpo.world.lexicon_posts import POST_FRAME

SMALL = {"seed": 3, "dialogue_clusters": 2, "dialogue_train_pairs": 8, "dialogue_test_pairs": 5,
         "dialogue_max_turns": 3, "summarization_clusters": 2, "summarization_train_pairs": 7,
         "summarization_test_pairs": 4, "instruction_prompts": 3}


@pytest.fixture(scope="module")
def world():
    return generate_world(SMALL)


@pytest.fixture(scope="module")
def exported(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hub"
    return export_hub_layout(world, out), out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf-cache"))


def test_hh_transcript_is_read_back_by_the_hh_parser():
    turns = [("user", "Hi"), ("assistant", "Hello."), ("user", "Help me\nwith this."), ("assistant", "Sure.")]
    text = hh_transcript(turns)
    assert text == "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Help me\nwith this.\n\nAssistant: Sure."
    prompt, chosen, _, _ = hh_row({"chosen": text, "rejected": text})
    assert (prompt, chosen) == (format_turns(turns[:-1]), "Sure.")


def test_prompt_turns_inverts_format_turns_and_rejects_unmarked_prompts():
    turns = [("user", "a"), ("assistant", "b"), ("user", "c")]
    assert prompt_turns(format_turns(turns), "f, row 1") == turns
    with pytest.raises(DataError, match=r"^f, row 2: .*assistant marker"):
        prompt_turns("no markers at all", "f, row 2")
    with pytest.raises(DataError, match="alternate"):
        prompt_turns(format_turns([("user", "a")]).replace("\n<|user|>\n", "\n<|assistant|>\n", 1), "f")


def test_dialogue_round_trips_exactly_through_prepare(world, exported, tmp_path, monkeypatch):
    hub, _ = exported
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    prepare({"source": "hub", "tasks": ["dialogue", "summarization"], "hub": hub}, tmp_path / "data")
    for split, hub_split in (("train", "train"), ("test", "test")):
        original = world.records("dialogue", split)
        loaded = read_records(tmp_path / "data" / "dialogue" / f"{split}.jsonl")
        assert [(r.prompt, r.chosen, r.rejected) for r in loaded] == \
               [(r.prompt, r.chosen, r.rejected) for r in original]
        # ids map by position: the world's "dialogue-train-00007" is the loader's "hh-train-7"
        assert [r.id for r in loaded] == [f"hh-{hub_split}-{i}" for i in range(len(original))]
    # the small world must hold multi-turn histories, or the HH transcript path is not exercised
    assert max(len(prompt_turns(r.prompt, "t")) for r in world.records("dialogue", "train")) == 5
    prompts = read_eval_prompts(tmp_path / "data" / "instructions" / "eval.jsonl")
    assert [(p.prompt, p.reference, p.metadata["instruction"]) for p in prompts] == \
           [(p.prompt, p.reference, p.metadata["instruction"]) for p in world.instructions]


def test_summarization_keeps_pairs_order_and_post_fields(world, exported, cache):
    hub, out = exported
    spec = hub["summarization"]
    for split, hub_split in (("train", spec["train_split"]), ("test", spec["test_split"])):
        original = world.records("summarization", split)
        loaded, report = load_preference_data("tldr", spec["path"], hub_split, on_error="raise", cache_dir=cache)
        assert report.n_skipped == 0
        assert [(r.chosen, r.rejected) for r in loaded] == [(r.chosen, r.rejected) for r in original]
        assert [r.metadata["post_id"] for r in loaded] == [r.id for r in original]
        for before, after in zip(original, loaded):
            # the world's post frame holds its fields ...
            assert format_turns([("user", POST_FRAME.format(**post_fields(before.prompt, "t")))]) == before.prompt
            # ... and the loader's prompt (info.post alone, as the public code) is the world's, byte for byte
            assert after.prompt == before.prompt
    rows = [json.loads(line) for line in (out / "summarize_from_feedback" / "comparisons" / "train.jsonl").open()]
    assert {row["choice"] for row in rows} == {0, 1}  # the chosen summary sits in both positions


def test_exported_hh_rows_are_valid_under_raise(world, exported, cache):
    _, out = exported
    path = out / "hh-rlhf" / "helpful-base" / "train.jsonl.gz"
    rows = [json.loads(line) for line in gzip.open(path, "rt", encoding="utf-8")]
    assert len(rows) == len(world.records("dialogue", "train"))
    for row in rows:
        assert set(row) == {"chosen", "rejected"} and row["chosen"].startswith("\n\nHuman: ")
        chosen_prompt = row["chosen"][: row["chosen"].rfind("\n\nAssistant: ")]
        assert row["rejected"].startswith(chosen_prompt + "\n\nAssistant: ") and row["chosen"] != row["rejected"]
    records, report = load_preference_data("hh", str(path), "train", on_error="raise", cache_dir=cache)
    assert (report.n_rows, report.n_loaded, report.n_skipped) == (len(rows), len(rows), 0)


def test_alpaca_eval_file_is_the_gpt4_baseline_configs_raw_format(world, exported, cache, tmp_path):
    hub, out = exported
    assert hub["instructions"]["config"] == "alpaca_eval_gpt4_baseline"
    text = (out / "alpaca_eval" / "alpaca_eval_gpt4_baseline.json").read_text()
    rows = json.loads(text)
    assert [list(row) for row in rows] == [["dataset", "instruction", "output", "generator"]] * len(world.instructions)
    # byte for byte the hub file's format: the writer reproduces the fixture copied from that format
    fixture = Path(__file__).parent / "fixtures" / "hub" / "alpaca_eval" / "alpaca_eval_gpt4_baseline.json"
    write_alpaca_eval_json(tmp_path / "again.json", json.loads(fixture.read_text()))
    assert (tmp_path / "again.json").read_bytes() == fixture.read_bytes()
    loaded = load_eval_prompts("alpaca_eval", str(out / "alpaca_eval"), "eval", cache_dir=cache)
    assert [p.prompt for p in loaded] == [p.prompt for p in world.instructions]
    assert {p.metadata["generator"] for p in loaded} == {"world"}


def test_data_folder_world_json_and_world_export_the_same_bytes(world, exported, tmp_path, capsys):
    _, from_world = exported
    world.write(tmp_path / "data")
    assert main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "a")]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["dialogue/train"] == SMALL["dialogue_train_pairs"]
    assert main(["--world", str(tmp_path / "data" / "world.json"), "--out", str(tmp_path / "b")]) == 0
    files = sorted(p.relative_to(from_world) for p in from_world.rglob("*") if p.is_file())
    assert len(files) == 8
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes() == (from_world / name).read_bytes()


def test_bad_record_is_one_line_error_naming_file_and_row(world, tmp_path, capsys):
    world.write(tmp_path / "data")
    path = tmp_path / "data" / "summarization" / "test.jsonl"
    records = read_records(path)
    records[1] = type(records[1])(records[1].id, format_turns([("user", "not a post")]), "a", "b")
    write_records(path, records)
    with pytest.raises(DataError, match=rf"^{path}, row 2: prompt is not a single-turn world post"):
        export_hub_layout(tmp_path / "data", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
