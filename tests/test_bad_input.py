"""Malformed raw data files, built here: every loader source, under both on_error policies, refuses or
counts them with a message naming the file and the line or row, and nothing is written under a final name."""
import gzip
import json
import logging

import pandas as pd
import pytest

from rpo.data.loaders import load_eval_prompts, load_preference_data
from rpo.data.prepare import main as prepare_main
from rpo.errors import DataError

HH = {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?",
      "rejected": "\n\nHuman: Hi there\n\nAssistant: What."}
TLDR = {"info": {"id": "t3_a", "post": "A long post about my cat.", "title": "Cat", "subreddit": "cats"},
        "summaries": [{"text": "My cat.", "policy": "ref"}, {"text": "A cat post.", "policy": "sup"}], "choice": 1}
UF = {"prompt": "Say hi.", "prompt_id": "p", "chosen": [{"role": "user", "content": "Say hi."},
                                                        {"role": "assistant", "content": "Hi!"}],
      "rejected": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "No."}]}
MINE = {"id": "w-0", "prompt": "\n<|user|>\nq\n<|assistant|>\n", "chosen": "good", "rejected": "bad",
        "metadata": {"task": "dialogue"}}
ALPACA = {"instruction": "Name a colour.", "output": "Blue.", "generator": "gpt4", "dataset": "x"}
GOOD = {"hh": HH, "tldr": TLDR, "ultrafeedback": UF, "jsonl": MINE}
POLICIES = ("raise", "skip")


def variant(source, i):
    """Row i of a good file: distinct rows (our own schema needs distinct ids)."""
    row = json.loads(json.dumps(GOOD[source]))
    if source == "jsonl":
        row["id"] = f"w-{i}"
    return row


def lines(source, n=3):
    return [json.dumps(variant(source, i)) for i in range(n)]


def write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def load(source, path, policy):
    return load_preference_data(source, str(path), "train", on_error=policy, cache_dir=str(path.parent / "hf"))


def refused(source, path, policy) -> str:
    with pytest.raises(DataError) as info:
        load(source, path, policy)
    return str(info.value)


# ---- whole-file problems: an error under both policies -----------------------------------------

@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("source", GOOD)
def test_an_empty_file_is_an_error_naming_it(tmp_path, source, policy):
    for content in ("", "\n  \n"):
        path = write(tmp_path / "empty.jsonl", content)
        message = refused(source, path, policy)
        assert message.startswith(f"{path}: empty file, no rows to load; restore the complete file")


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("source", GOOD)
def test_a_file_that_is_not_json_lines_at_all_names_its_line_1(tmp_path, source, policy):
    # e.g. a CSV export named .jsonl: refused as invalid JSON at line 1, not as "missing column(s) ... found []"
    path = write(tmp_path / "data.jsonl", "chosen,rejected\n\"Human: hi\",\"Assistant: yo\"\n")
    message = refused(source, path, policy)
    assert message.startswith(f"{path}, line 1: invalid JSON (Expecting value at column 1); no line of the file is "
                              "a JSON object, so it is not JSON lines")
    assert "\n" not in message and "missing column" not in message


@pytest.mark.parametrize("policy", POLICIES)
def test_an_empty_split_of_a_folder_and_an_empty_parquet_are_errors(tmp_path, policy):
    (tmp_path / "hh").mkdir()
    empty = write(tmp_path / "hh" / "train.jsonl", "")
    write(tmp_path / "hh" / "test.jsonl", lines("hh")[0] + "\n")
    assert refused("hh", tmp_path / "hh", policy).startswith(f"{empty}: empty file")
    parquet = tmp_path / "none.parquet"
    pd.DataFrame({k: pd.Series([], dtype=str) for k in ("id", "prompt", "chosen", "rejected")}).to_parquet(parquet)
    assert refused("parquet", parquet, policy).startswith(f"{parquet}: empty file")
    with pytest.raises(DataError, match=rf"^{tmp_path / 'alpaca.json'}: empty file"):
        load_eval_prompts("alpaca_eval", str(write(tmp_path / "alpaca.json", "[]")), "eval")


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("source", GOOD)
def test_invalid_utf8_is_an_error_naming_line_and_column(tmp_path, source, policy):
    rows = [row.encode() for row in lines(source)]
    bad = rows[1].replace(b'": "', b'": "\xe9', 1)  # a latin-1 e-acute inside the first string
    path = write(tmp_path / "latin1.jsonl", b"\n".join([rows[0], bad, rows[2]]) + b"\n")
    message = refused(source, path, policy)
    column = bad.index(b"\xe9") + 1
    assert message == (f"{path}, line 2: not UTF-8 text (byte 0xe9 at column {column}); re-encode the file as UTF-8 "
                       "(e.g. iconv -f latin1 -t utf-8)")


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("source", GOOD)
def test_a_json_array_where_json_lines_were_expected_is_an_error(tmp_path, source, policy):
    rows = [variant(source, i) for i in range(2)]
    for text in (json.dumps(rows), json.dumps(rows, indent=2)):
        path = write(tmp_path / "array.jsonl", text)
        assert refused(source, path, policy) == (
            f"{path}: holds a JSON array, but JSON lines (one object per line) were expected; write one object "
            "per line (e.g. jq -c '.[]')")


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("source", GOOD)
def test_a_compressed_file_under_a_plain_name_is_an_error(tmp_path, source, policy):
    data = gzip.compress(("\n".join(lines(source)) + "\n").encode())
    path = write(tmp_path / "train.jsonl", data)
    assert refused(source, path, policy) == (
        f"{path}: holds gzip-compressed data under a plain name; decompress it, or name it train.jsonl.gz where "
        "a compressed file is accepted")
    records, _ = load(source, write(tmp_path / "train.jsonl.gz", data), policy)  # named for what it is: read
    assert len(records) == 3
    parquet = write(tmp_path / "rows.parquet", data)
    assert refused("parquet", parquet, policy).startswith(f"{parquet}: holds gzip-compressed data, not Parquet")


@pytest.mark.parametrize("policy", POLICIES)
def test_a_cut_off_parquet_or_json_array_is_an_error(tmp_path, policy):
    frame = pd.DataFrame([variant("jsonl", i) for i in range(3)]).assign(metadata="{}")
    frame.to_parquet(tmp_path / "whole.parquet")
    data = (tmp_path / "whole.parquet").read_bytes()
    cut = write(tmp_path / "cut.parquet", data[: len(data) // 2])
    assert refused("parquet", cut, policy).startswith(f"{cut}: not a readable Parquet file (")
    array = json.dumps([ALPACA, {**ALPACA, "instruction": "Say hi."}])
    path = write(tmp_path / "alpaca.json", array[:-10])
    with pytest.raises(DataError, match=rf"^{path}: truncated: the file ends before its JSON array is closed"):
        load_eval_prompts("alpaca_eval", str(path), "eval")


# ---- bad lines: raised with their line, or skipped and counted ---------------------------------

@pytest.mark.parametrize("source", GOOD)
def test_a_truncated_last_line_names_it_or_is_counted(tmp_path, source, caplog):
    rows = lines(source)
    path = write(tmp_path / "cut.jsonl", "\n".join(rows[:2] + [rows[2][: len(rows[2]) // 2]]))
    assert refused(source, path, "raise").startswith(
        f"{path}, row 3: truncated: the file ends in the middle of this row; restore the complete file")
    with caplog.at_level(logging.WARNING, logger="rpo.data.loaders"):
        records, report = load(source, path, "skip")
    assert len(records) == 2 and report.reason_counts() == {"truncated line": 1}
    assert report.skipped[0].location == f"{path}, row 3"
    assert f"{path}: skipped 1 of 3 rows {{'truncated line': 1}}" in caplog.text


@pytest.mark.parametrize("source", GOOD)
def test_a_line_that_is_not_json_names_it_or_is_counted(tmp_path, source):
    rows = lines(source)
    path = write(tmp_path / "bad.jsonl", "\n".join([rows[0], "", "{not json", rows[1], "[1, 2]", rows[2]]) + "\n")
    message = refused(source, path, "raise")
    assert message.startswith(f"{path}, line 3 (row 2): invalid JSON (Expecting property name enclosed in double "
                              "quotes at column 2); fix or remove this line")
    assert message.endswith("fix or remove this line (or set on_error: skip to skip such rows)")
    records, report = load(source, path, "skip")
    assert len(records) == 3 and report.reason_counts() == {"invalid JSON": 1, "not an object": 1}
    assert [s.location for s in report.skipped] == [f"{path}, line 3 (row 2)", f"{path}, line 5 (row 4)"]
    if source != "jsonl":  # ids are positions in the split, skipped rows included
        assert [r.id for r in records] == [f"{source}-train-{i}" for i in (0, 2, 4)]


def _set(path, value):
    def change(row):
        *parents, last = path
        for key in parents:
            row = row[key]
        row[last] = value
    return change


WRONG_TYPES = [  # (source, change, the kind counted under skip, the message's problem)
    ("hh", _set(["chosen"], 5), "not a string", "not a string: chosen is int"),
    ("hh", _set(["rejected"], None), "not a string", "not a string: rejected is NoneType"),
    ("hh", _set(["chosen"], {"text": "hi"}), "not a string", "not a string: chosen is dict"),
    ("hh", lambda row: row.pop("rejected"), "missing field", "missing field: no field 'rejected'"),
    ("tldr", _set(["info"], "a post"), "bad info", "bad info: info is str, expected an object"),
    ("tldr", _set(["info", "post"], 7), "bad info", "bad info: info.post is int, expected a string"),
    ("tldr", _set(["choice"], "1"), "bad choice", "bad choice: choice must be 0 or 1, got '1'"),
    ("tldr", _set(["choice"], 1.0), "bad choice", "bad choice: choice must be 0 or 1, got 1.0"),
    ("tldr", _set(["choice"], None), "bad choice", "bad choice: choice must be 0 or 1, got None"),
    ("tldr", _set(["summaries"], {"text": "x"}), "bad summaries", "bad summaries: expected a list of exactly two"),
    ("tldr", _set(["summaries", 0, "text"], ["x"]), "bad summaries", "bad summaries: summaries[0] has no text string"),
    ("ultrafeedback", _set(["chosen"], "Hi!"), "bad messages", "bad messages: chosen must be a non-empty list"),
    ("ultrafeedback", _set(["rejected", 1, "content"], 3), "bad messages",
     "bad messages: rejected message 2 has no content string"),
    ("ultrafeedback", _set(["chosen", 0], [1, 2]), "bad messages", "bad messages: chosen message 1 has no content"),
    ("jsonl", _set(["id"], 7), "invalid record", "field 'id' must be a string, got int"),
    ("jsonl", _set(["prompt"], None), "invalid record", "field 'prompt' must be a string, got NoneType"),
    ("jsonl", _set(["chosen"], ["good"]), "invalid record", "field 'chosen' must be a string, got list"),
    ("jsonl", _set(["metadata"], [1]), "invalid record", "field 'metadata' must be an object, got list"),
]


@pytest.mark.parametrize("source, change, kind, problem", WRONG_TYPES)
def test_wrong_types_in_any_field_name_row_and_field_or_are_counted(tmp_path, source, change, kind, problem):
    rows = [variant(source, i) for i in range(3)]
    change(rows[1])
    path = write(tmp_path / "typed.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    message = refused(source, path, "raise")
    assert message.startswith(f"{path}, row 2: ") and problem in message, message
    records, report = load(source, path, "skip")
    assert len(records) == 2 and report.reason_counts() == {kind: 1}


def test_wrong_types_in_parquet_and_alpaca_eval_rows(tmp_path):
    frame = pd.DataFrame([variant("jsonl", i) for i in range(3)]).assign(metadata=["{}", "{not json", "{}"])
    frame.to_parquet(tmp_path / "m.parquet")
    assert refused("parquet", tmp_path / "m.parquet", "raise").startswith(
        f"{tmp_path / 'm.parquet'}, row 2: bad metadata: metadata is not valid JSON")
    records, report = load("parquet", tmp_path / "m.parquet", "skip")
    assert len(records) == 2 and report.reason_counts() == {"bad metadata": 1}
    for change, problem in ((_set(["instruction"], 5), "row 2: bad instruction: instruction is int"),
                            (_set(["output"], {"text": "Blue."}), "row 2: bad output: output is dict"),
                            (lambda row: row.pop("output"), "row 2: missing field: no field 'output'")):
        rows = [ALPACA, {**ALPACA, "instruction": "Say hi."}]
        change(rows[1])
        path = write(tmp_path / "alpaca.json", json.dumps(rows))
        with pytest.raises(DataError, match=rf"^{path}, {problem}"):
            load_eval_prompts("alpaca_eval", str(path), "eval")


def test_duplicate_ids_are_named_or_counted(tmp_path):
    rows = [variant("jsonl", i) for i in (0, 1, 0)]
    path = write(tmp_path / "dup.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    assert refused("jsonl", path, "raise").startswith(
        f"{path}, row 3: duplicate id: id 'w-0' is already at {path}, row 1; fix the row")
    records, report = load("jsonl", path, "skip")
    assert [r.id for r in records] == ["w-0", "w-1"] and report.reason_counts() == {"duplicate id": 1}
    pd.DataFrame(rows).assign(metadata="{}").to_parquet(tmp_path / "dup.parquet")
    _, report = load("parquet", tmp_path / "dup.parquet", "skip")
    assert report.reason_counts() == {"duplicate id": 1}
    # AlpacaEval pairs outputs with references by instruction text: a repeated one is a duplicate id
    path = write(tmp_path / "alpaca.json", json.dumps([ALPACA, {**ALPACA, "output": "Red."}]))
    with pytest.raises(DataError, match=rf"^{path}, row 2: duplicate instruction: the same instruction is already "
                                        rf"at {path}, row 1"):
        load_eval_prompts("alpaca_eval", str(path), "eval")


def test_a_file_of_only_bad_rows_is_an_error_even_under_skip(tmp_path):
    path = write(tmp_path / "junk.jsonl", "{not json\n" + json.dumps({"chosen": 1, "rejected": 2}) + "\n")
    assert refused("hh", path, "skip") == (f"{path}: all 2 rows are bad ({{'invalid JSON': 1, 'not a string': 1}}), "
                                           "nothing to load; check that this is the right file and source")


# ---- through the data step: load_report.json, one line, nothing half-written -------------------

def hub_config(tmp_path, train, on_error="skip") -> str:
    """A hub data config whose dialogue task reads `train` for both splits (a single file is any split)."""
    alpaca = write(tmp_path / "alpaca.json", json.dumps([ALPACA]))
    return json.dumps({"source": "hub", "tasks": ["dialogue"], "hub": {
        "dialogue": {"source": "hh", "path": str(train), "train_split": "train", "test_split": "test",
                     "on_error": on_error},
        "instructions": {"source": "alpaca_eval", "path": str(alpaca), "split": "eval"}}})


def test_skipped_rows_are_counted_by_reason_in_load_report_json(tmp_path, caplog):
    rows = lines("hh")
    train = write(tmp_path / "train.jsonl", "\n".join([rows[0], "{oops", rows[1], json.dumps({"chosen": 3, "rejected":
                                                       HH["rejected"]}), rows[2][:20]]))
    out = tmp_path / "data"
    with caplog.at_level(logging.WARNING, logger="rpo.data.loaders"):
        assert prepare_main(["--data-config", hub_config(tmp_path, train), "--out", str(out)]) == 0
    report = json.loads((out / "load_report.json").read_text())["tasks"]["dialogue/train"]
    assert (report["n_rows"], report["n_loaded"], report["n_skipped"]) == (5, 2, 3)
    assert report["reason_counts"] == {"invalid JSON": 1, "not a string": 1, "truncated line": 1}
    assert [s["location"] for s in report["skipped"]] == [f"{train}, row {i}" for i in (2, 4, 5)]
    assert f"{train}: skipped 3 of 5 rows" in caplog.text


@pytest.mark.parametrize("on_error", POLICIES)
def test_the_data_step_stops_in_one_line_and_leaves_no_data_folder(tmp_path, capsys, on_error):
    train = write(tmp_path / "train.jsonl", b"\x1f\x8b\x08\x00 compressed bytes")
    out = tmp_path / "data"
    assert prepare_main(["--data-config", hub_config(tmp_path, train, on_error), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: {train}: holds gzip-compressed data under a plain name; decompress it, or name it "
                       "train.jsonl.gz where a compressed file is accepted")
    assert "Traceback" not in "\n".join(err)
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".data")] == []
