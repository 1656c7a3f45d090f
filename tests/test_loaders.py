import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from rpo.data.loaders import KNOWN_SOURCES, load_eval_prompts, load_preference_data
from rpo.data.records import PreferenceRecord, format_turns, write_records
from rpo.errors import ConfigError, DataError

HUB = Path(__file__).parent / "fixtures" / "hub"
HH_DIR, TLDR_DIR = HUB / "hh-rlhf", HUB / "summarize_from_feedback"
UF_DIR, ALPACA_DIR = HUB / "ultrafeedback_binarized", HUB / "alpaca_eval"
GOOD_HH = {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?",
           "rejected": "\n\nHuman: Hi there\n\nAssistant: What."}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf-cache"))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def first_fixture_row(path):
    return json.loads(path.read_text().splitlines()[0])


# ---- Anthropic HH ------------------------------------------------------------------------------

def test_hh_multi_turn_row_parses_into_exact_prompt(cache):
    records, report = load_preference_data("hh", str(HH_DIR / "helpful-base" / "train.jsonl"), "train", cache_dir=cache)
    assert (report.n_rows, report.n_loaded, report.n_skipped) == (6, 6, 0)
    bread = records[3]
    assert bread.id == "hh-train-3"
    assert bread.prompt == (
        "\n<|user|>\nI want to bake bread but I have no yeast."
        "\n<|assistant|>\nYou could make a soda bread, which rises with baking soda and buttermilk instead of "
        "yeast. Would you like a recipe?"
        "\n<|user|>\nYes please, something simple."
        "\n<|assistant|>\nMix 500 g flour, 1 teaspoon baking soda and 1 teaspoon salt, then stir in about 400 ml "
        "buttermilk."
        "\n<|user|>\nHow long does it bake?"
        "\n<|assistant|>\n"
    )
    assert bread.chosen.startswith("Shape it into a round") and bread.chosen.endswith("when tapped.")
    assert bread.rejected == "Bake it until it is done."
    assert bread.metadata == {"source": "hh", "split": "train", "task": "dialogue", "truncation": "keep_end",
                              "n_turns": 5}
    assert records[0].prompt == format_turns([("user", "How do I keep basil alive on a windowsill?")])


def test_hh_folder_reads_every_subset_of_the_split(cache):
    records, report = load_preference_data("hh", str(HH_DIR), "train", cache_dir=cache)
    assert report.n_loaded == 9 and len({r.id for r in records}) == 9
    assert [r.id for r in records] == [f"hh-train-{i}" for i in range(9)]
    helpful, _ = load_preference_data("hh", str(HH_DIR / "helpful-base" / "train.jsonl"), "train", cache_dir=cache)
    harmless, _ = load_preference_data("hh", str(HH_DIR / "harmless-base" / "train.jsonl"), "train", cache_dir=cache)
    assert sorted(r.prompt for r in records) == sorted(r.prompt for r in helpful + harmless)
    test, _ = load_preference_data("hh", str(HH_DIR), "test", cache_dir=cache)
    assert [r.chosen for r in test][0] == "The capital of Australia is Canberra."


def test_hh_spaces_collapsed_and_responses_kept_unstripped(tmp_path, cache):
    # dataloader.py get_hh: runs of 2+ spaces or tabs become one space (prompt and responses), a single tab
    # stays, and the responses are what follows the prompt, not stripped
    row = {"chosen": "\n\nHuman: Hi  there\tfriend\n\nAssistant: Hello.\n\nHuman: Bye\n\nAssistant:  See  you. \n",
           "rejected": "\n\nHuman: Hi  there\tfriend\n\nAssistant: Hello.\n\nHuman: Bye\n\nAssistant: Go."}
    [record], report = load_preference_data("hh", str(write_jsonl(tmp_path / "hh.jsonl", [row])), "train",
                                            cache_dir=cache)
    assert record.prompt == "\n<|user|>\nHi there\tfriend\n<|assistant|>\nHello.\n<|user|>\nBye\n<|assistant|>\n"
    assert (record.chosen, record.rejected) == (" See you. \n", "Go.")
    assert record.metadata["n_turns"] == 3 and report.kept == {}


def test_hh_keeps_every_row_the_public_code_keeps(tmp_path, cache):
    rows = [
        # a marker after a single newline is a turn too; text before the first turn is kept; the histories are
        # not compared: the rejected response starts at the chosen prompt's length (here past its end: empty)
        {"chosen": "Intro text\n\nHuman: a\nHuman: b\n\nAssistant: c", "rejected": "\n\nHuman: x\n\nAssistant: yy"},
        {"chosen": "\n\nHuman: a\n\nAssistant: same", "rejected": "\n\nHuman: a\n\nAssistant: same"},
        # no "\n\nAssistant: ": the prompt is the first 12 characters
        {"chosen": "Human: hello there Assistant: hi", "rejected": "Human: hello world"},
        {"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d", "rejected": "\n\nHuman: a\n\nAssistant: e"},
    ]
    path = write_jsonl(tmp_path / "hh_odd.jsonl", rows)
    records, report = load_preference_data("hh", str(path), "train", on_error="raise", cache_dir=cache)
    assert [(r.prompt, r.chosen, r.rejected) for r in records] == [
        ("Intro text\n<|user|>\na\n<|user|>\nb\n<|assistant|>\n", "c", ""),
        ("\n<|user|>\na\n<|assistant|>\n", "same", "same"),
        ("\n<|user|>\nhello", " there Assistant: hi", " world"),
        ("\n<|user|>\na\n<|assistant|>\nb\n<|user|>\nc\n<|assistant|>\n", "d", ""),
    ]
    assert (report.n_loaded, report.n_skipped) == (4, 0)
    assert report.kept == {"empty response": 2, "identical responses": 1}
    assert json.loads(json.dumps(report.to_dict()))["kept"] == report.kept


@pytest.mark.parametrize("bad, problem", [
    ({"chosen": None, "rejected": "\n\nHuman: a\n\nAssistant: b"}, "not a string: chosen is NoneType"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": 3}, "not a string: rejected is int"),
])
def test_hh_bad_rows_raise_with_file_and_row(tmp_path, cache, bad, problem):
    path = write_jsonl(tmp_path / "hh_bad.jsonl", [GOOD_HH, bad])
    with pytest.raises(DataError) as info:
        load_preference_data("hh", str(path), "train", cache_dir=cache)
    assert f"{path}, row 2: " in str(info.value)
    assert problem in str(info.value)


def test_hh_skip_policy_counts_and_logs(tmp_path, cache, caplog):
    rows = [GOOD_HH, {"chosen": 7, "rejected": "none"}, GOOD_HH, {"chosen": "\n\nHuman: q\n\nAssistant: x"}]
    path = write_jsonl(tmp_path / "hh_mixed.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="rpo.data.loaders"):
        records, report = load_preference_data("hh", str(path), "train", on_error="skip", cache_dir=cache)
    assert [r.id for r in records] == ["hh-train-0", "hh-train-2"]
    assert (report.n_rows, report.n_loaded, report.n_skipped) == (4, 2, 2)
    assert [skip.row for skip in report.skipped] == [2, 4]
    assert report.reason_counts() == {"not a string": 1, "missing field": 1}
    assert "skipped 2 of 4 rows" in caplog.text and "hh_mixed.jsonl" in caplog.text
    summary = json.loads(json.dumps(report.to_dict()))
    assert summary["n_skipped"] == 2 and summary["skipped"][0]["row"] == 2
    assert summary["skipped"][0]["detail"] == "not a string: chosen is int"


# ---- TL;DR -------------------------------------------------------------------------------------

def test_tldr_prompt_is_the_post_only_and_summaries_unstripped(cache):
    records, report = load_preference_data("tldr", str(TLDR_DIR), "train", cache_dir=cache)
    assert report.n_loaded == 6
    first = records[0]
    assert first.id == "tldr-train-0"
    # dataloader.py get_tldr: "\n<|user|>\n" + post + "\n<|assistant|>\n", no subreddit, title or "TL;DR:"
    post = first_fixture_row(TLDR_DIR / "comparisons" / "train.jsonl")["info"]["post"]
    assert first.prompt == "\n<|user|>\n" + post + "\n<|assistant|>\n"
    assert first.prompt.startswith("\n<|user|>\nWe've lived together for a year")
    assert first.chosen.startswith(" Roommate keeps eating") and first.rejected == " roommate food"
    assert first.metadata == {"source": "tldr", "split": "train", "task": "summarization", "truncation": "keep_start",
                              "post_id": "t3_a1", "subreddit": "relationships", "site": None,
                              "chosen_policy": "sup2", "rejected_policy": "ref", "comparison_split": "train",
                              "confidence": 7}
    picked_second = records[2]  # choice == 1
    assert picked_second.chosen.startswith(" Can run 10k now") and picked_second.rejected == " I want to run."
    assert picked_second.metadata["chosen_policy"] == "sup2"


def test_tldr_rows_without_a_post_share_the_empty_post_prompt(tmp_path, cache):
    records, report = load_preference_data("tldr", str(TLDR_DIR), "validation", cache_dir=cache)
    article = records[1]  # a CNN/DM item: info.post is null, the text is in info.article
    assert article.prompt == "\n<|user|>\n\n<|assistant|>\n"
    assert article.metadata["site"] == "dailymail" and article.metadata["comparison_split"] == "valid2"
    assert report.kept == {"no post (CNN/DM article): the empty-post prompt": 1}
    # spaces collapsed in the post and the summaries, as remove_extra_spaces
    row = first_fixture_row(TLDR_DIR / "comparisons" / "train.jsonl")
    row["info"]["post"], row["summaries"][row["choice"]]["text"] = "Two  spaces\t\tand tabs.", " a  b "
    [record], _ = load_preference_data("tldr", str(write_jsonl(tmp_path / "t.jsonl", [row])), "train", cache_dir=cache)
    assert (record.prompt, record.chosen) == ("\n<|user|>\nTwo spaces and tabs.\n<|assistant|>\n", " a b ")


@pytest.mark.parametrize("change, problem", [
    (lambda row: row.update(choice=2), "bad choice: choice must be 0 or 1, got 2"),
    (lambda row: row["info"].update(post=3), "bad info: info.post is int"),
    (lambda row: row.update(summaries=row["summaries"][:1]), "bad summaries"),
])
def test_tldr_bad_rows(tmp_path, cache, change, problem):
    good = first_fixture_row(TLDR_DIR / "comparisons" / "train.jsonl")
    bad = json.loads(json.dumps(good))
    change(bad)
    path = write_jsonl(tmp_path / "tldr_bad.jsonl", [good, good, bad])
    with pytest.raises(DataError, match=rf"tldr_bad\.jsonl, row 3: {problem}"):
        load_preference_data("tldr", str(path), "train", cache_dir=cache)


# ---- UltraFeedback -----------------------------------------------------------------------------

def test_ultrafeedback_rows(cache):
    records, report = load_preference_data("ultrafeedback", str(UF_DIR), "train_prefs", cache_dir=cache)
    assert report.n_loaded == 5
    record = records[1]
    assert record == PreferenceRecord(
        "ultrafeedback-train_prefs-1", format_turns([("user", "Convert 5 kilometres to miles.")]),
        "5 kilometres is about 3.11 miles (5 x 0.6214).", "5 kilometres is 8 miles.",
        {"source": "ultrafeedback", "split": "train_prefs", "task": "dialogue", "truncation": "keep_end",
         "prompt_id": "b" * 64, "score_chosen": 10.0, "score_rejected": 2.0})
    test, _ = load_preference_data("ultrafeedback", str(UF_DIR), "test_prefs", cache_dir=cache)
    assert len(test) == 2


@pytest.mark.parametrize("change, problem", [
    (lambda row: row["rejected"][0].update(content="Another question"), "histories differ"),
    (lambda row: row["chosen"][0].update(role="system"), "bad messages: chosen message 1 has role 'system'"),
    (lambda row: row.update(chosen=row["chosen"][:1]), "bad messages: chosen must end with"),
])
def test_ultrafeedback_bad_rows(tmp_path, cache, change, problem):
    good = first_fixture_row(UF_DIR / "data" / "train_prefs.jsonl")
    bad = json.loads(json.dumps(good))
    change(bad)
    path = write_jsonl(tmp_path / "uf_bad.jsonl", [good, bad])
    with pytest.raises(DataError, match=rf"uf_bad\.jsonl, row 2: {problem}"):
        load_preference_data("ultrafeedback", str(path), "train_prefs", cache_dir=cache)


# ---- AlpacaEval --------------------------------------------------------------------------------

def test_alpaca_eval_reads_the_gpt4_turbo_reference_config(cache):
    prompts = load_eval_prompts("alpaca_eval", str(ALPACA_DIR), "eval", cache_dir=cache)
    assert len(prompts) == 6 and prompts[0].id == "alpaca_eval-eval-0"
    assert {p.metadata["generator"] for p in prompts} == {"gpt4_turbo"}
    poem = prompts[2]
    # the public code's prompt: the instruction as it is, trailing spaces included
    assert poem.prompt == "\n<|user|>\nWrite a short poem about a lighthouse.  \n<|assistant|>\n"
    assert poem.metadata["instruction"] == "Write a short poem about a lighthouse.  "  # verbatim
    assert poem.reference == "Alone upon the rocky shore,\nit sweeps the dark forevermore."
    assert prompts[5].metadata["instruction"] == "What is the ratio of 3/4 to 1/2?"  # "\\/" in the file
    assert (poem.metadata["generator"], poem.metadata["dataset"]) == ("gpt4_turbo", "selfinstruct")
    same = load_eval_prompts("alpaca_eval", str(ALPACA_DIR / "alpaca_eval_gpt4_baseline.json"), "eval")
    assert same == prompts
    with pytest.raises(DataError, match=r"alpaca_eval: no alpaca_eval\.json \(the file of AlpacaEval config "):
        load_eval_prompts("alpaca_eval", str(ALPACA_DIR), "eval", config="alpaca_eval")


def test_alpaca_eval_file_without_the_reference_columns(tmp_path):
    rows = json.loads((ALPACA_DIR / "alpaca_eval_gpt4_baseline.json").read_text())
    path = tmp_path / "ref.json"
    path.write_text(json.dumps([{"instruction": r["instruction"], "output": r["output"]} for r in rows]))
    with pytest.raises(DataError) as info:
        load_eval_prompts("alpaca_eval", str(path), "eval")
    assert str(info.value).startswith(f"{path}: missing column(s) ['generator', 'dataset']")
    assert "\n" not in str(info.value)


def test_alpaca_eval_blank_instruction(tmp_path, cache):
    rows = json.loads((ALPACA_DIR / "alpaca_eval_gpt4_baseline.json").read_text())
    rows[1]["instruction"] = "  "
    path = tmp_path / "alpaca_bad.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"alpaca_bad\.json, row 2: empty instruction"):
        load_eval_prompts("alpaca_eval", str(path), "eval", cache_dir=cache)


# ---- our own schema (jsonl / parquet) ----------------------------------------------------------

def sample_records():
    return [PreferenceRecord(f"w-{i}", format_turns([("user", f"q{i}")]), f"good {i}", f"bad {i}",
                             {"task": "dialogue", "truncation": "keep_end"}) for i in range(4)]


def test_jsonl_source_reads_split_file_from_folder(tmp_path):
    write_records(tmp_path / "data" / "test.jsonl", sample_records())
    records, report = load_preference_data("jsonl", str(tmp_path / "data"), "test")
    assert records == sample_records() and report.n_loaded == 4


def test_jsonl_source_skip_uses_line_numbers(tmp_path):
    rows = [r.to_dict() for r in sample_records()]
    rows[2]["chosen"] = 5
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    with pytest.raises(DataError, match=r"mine\.jsonl, row 3: field 'chosen' must be a string"):
        load_preference_data("jsonl", str(path), "train")
    records, report = load_preference_data("jsonl", str(path), "train", on_error="skip")
    assert [r.id for r in records] == ["w-0", "w-1", "w-3"]
    assert report.skipped[0].row == 3 and report.reason_counts() == {"invalid record": 1}


def test_parquet_source_with_json_or_struct_metadata(tmp_path, cache):
    frame = pd.DataFrame([r.to_dict() for r in sample_records()])
    frame.to_parquet(tmp_path / "struct.parquet")
    frame.assign(metadata=frame["metadata"].map(json.dumps)).to_parquet(tmp_path / "text.parquet")
    for name in ("struct.parquet", "text.parquet"):
        records, _ = load_preference_data("parquet", str(tmp_path / name), "train", cache_dir=cache)
        assert records == sample_records()


# ---- entry-point errors ------------------------------------------------------------------------

def test_unknown_source_and_policy_are_config_errors():
    with pytest.raises(ConfigError) as info:
        load_preference_data("reddit", "x", "train")
    assert "'reddit'" in str(info.value) and all(name in str(info.value) for name in KNOWN_SOURCES)
    with pytest.raises(ConfigError, match="on_error"):
        load_preference_data("hh", str(HH_DIR), "train", on_error="ignore")
    with pytest.raises(ConfigError, match="eval source"):
        load_eval_prompts("mt_bench", str(ALPACA_DIR))


def test_missing_and_unreadable_inputs_name_the_file(tmp_path, cache):
    missing = tmp_path / "nope" / "train.jsonl"
    with pytest.raises(DataError, match=rf"{missing}: no such file"):
        load_preference_data("hh", str(missing), "train", cache_dir=cache)
    with pytest.raises(DataError, match=rf"{missing}: no such file"):
        load_preference_data("jsonl", str(missing), "train")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(GOOD_HH) + "\n{\"chosen\": \n")
    with pytest.raises(DataError, match=rf"{broken}, row 2: invalid JSON \(Expecting value at column 12\)"):
        load_preference_data("hh", str(broken), "train", cache_dir=cache)
    wrong_schema = write_jsonl(tmp_path / "wrong.jsonl", [{"prompt": "p", "chosen": "c"}])
    with pytest.raises(DataError, match=r"wrong\.jsonl: missing column\(s\) \['rejected'\]"):
        load_preference_data("hh", str(wrong_schema), "train", cache_dir=cache)
    with pytest.raises(DataError, match=r"hh-rlhf: cannot load split 'validation'"):
        load_preference_data("hh", str(HH_DIR), "validation", cache_dir=cache)


def test_hub_id_fails_fast_offline_with_the_id_named(cache):
    with pytest.raises(DataError, match="Anthropic/hh-rlhf: cannot load split 'train'"):
        load_preference_data("hh", None, "train", cache_dir=cache)


def test_alpaca_eval_hub_id_reads_the_configs_raw_file(cache, monkeypatch):
    # the hub repository's loading script (which datasets 4+ refuses to run) maps a config c to the file c.json
    import huggingface_hub

    asked = []

    def download(repo_id, filename, **kwargs):
        asked.append((repo_id, filename, kwargs["repo_type"]))
        return str(ALPACA_DIR / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    prompts = load_eval_prompts("alpaca_eval", None, "eval", cache_dir=cache)
    assert asked == [("tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline.json", "dataset")]
    assert len(prompts) == 6 and prompts[0].metadata["generator"] == "gpt4_turbo"
    monkeypatch.undo()
    with pytest.raises(DataError, match=r"^tatsu-lab/alpaca_eval: cannot fetch alpaca_eval_gpt4_baseline\.json: "):
        load_eval_prompts("alpaca_eval", None, "eval", cache_dir=cache)


def test_a_local_folder_rewritten_in_place_loads_its_new_rows(tmp_path):
    """datasets keys a folder whose README declares its configs (the hub's layout) by that
    declaration: a raw file rewritten in place must still load as its new rows, never the cached old."""
    folder = tmp_path / "summarize_from_feedback"
    (folder / "comparisons").mkdir(parents=True)
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: comparisons\n  data_files:\n"
                                      "  - split: train\n    path: comparisons/train.jsonl\n---\n")
    cache = tmp_path / "cache"
    for post in ("the old post.", "the new post."):
        row = {"info": {"id": "p0", "post": post, "title": "t", "subreddit": "s"}, "choice": 0,
               "summaries": [{"text": "a."}, {"text": "b."}]}
        (folder / "comparisons" / "train.jsonl").write_text(json.dumps(row) + "\n")
        records, _ = load_preference_data("tldr", str(folder), "train", on_error="raise", cache_dir=str(cache))
        assert post in records[0].prompt
