import json
from collections import Counter

import pytest

from rpo.data.batching import unpaired_batches, unpaired_items
from rpo.data.records import (ASSISTANT, USER, EvalPrompt, PreferenceRecord, UnpairedItem, format_turns,
                              read_eval_prompts, read_records, sft_examples,
                              validate_record, write_eval_prompts, write_records)
from rpo.errors import DataError

GOOD = {"id": "r1", "prompt": "\n<|user|>\nHi\n<|assistant|>\n", "chosen": "Hello!", "rejected": "Go away.",
        "metadata": {"task": "dialogue"}}


def make_records(prompts_and_pairs):
    return [PreferenceRecord(f"r{i}", p, c, r, {}) for i, (p, c, r) in enumerate(prompts_and_pairs)]


def test_markers_and_format_turns_exact_text():
    assert USER == "\n<|user|>\n" and ASSISTANT == "\n<|assistant|>\n"
    text = format_turns([("user", "Hi"), ("assistant", "Hello."), ("user", "Tell me a joke.")])
    assert text == "\n<|user|>\nHi\n<|assistant|>\nHello.\n<|user|>\nTell me a joke.\n<|assistant|>\n"


@pytest.mark.parametrize("turns, problem", [
    ([], "at least one turn"),
    ([("system", "x"), ("user", "y")], "role 'system'"),
    ([("user", "q"), ("assistant", "a")], "last turn must be a user turn"),
    ([("user", 3)], "not str"),
])
def test_format_turns_rejects_bad_turns(turns, problem):
    with pytest.raises(ValueError, match=problem):
        format_turns(turns)


def test_validate_record_builds_record():
    record = validate_record(GOOD, "data.jsonl", 1)
    assert record == PreferenceRecord("r1", GOOD["prompt"], "Hello!", "Go away.", {"task": "dialogue"})
    assert validate_record({k: v for k, v in GOOD.items() if k != "metadata"}, "f", 1).metadata == {}


@pytest.mark.parametrize("change, problem", [
    ({"id": None}, "field 'id' must be a string"),
    ({"prompt": ""}, "field 'prompt' is empty"),
    ({"prompt": 5}, "field 'prompt' must be a string, got int"),
    ({"chosen": ["x"]}, "field 'chosen' must be a string, got list"),
    ({"rejected": None}, "field 'rejected' must be a string, got NoneType"),
    ({"metadata": [1]}, "'metadata' must be an object"),
])
def test_validate_record_errors_name_file_row_and_problem(change, problem):
    row = {**GOOD, **change}
    with pytest.raises(DataError) as info:
        validate_record(row, "some/data.jsonl", 7)
    assert "some/data.jsonl, row 7" in str(info.value)
    assert problem in str(info.value)


@pytest.mark.parametrize("field", ["id", "prompt", "chosen", "rejected"])
def test_validate_record_missing_field(field):
    row = {k: v for k, v in GOOD.items() if k != field}
    with pytest.raises(DataError, match=rf"x\.jsonl, row 3: missing field '{field}'"):
        validate_record(row, "x.jsonl", 3)


def test_validate_record_rejects_non_object():
    with pytest.raises(DataError, match="x.jsonl, row 2: expected an object, got list"):
        validate_record([1, 2], "x.jsonl", 2)


def test_write_then_read_records_round_trip(tmp_path):
    records = make_records([("p1", "a", "b"), ("p2", "c", "d")])
    records[1] = PreferenceRecord("r1", "p2", "c", "d", {"task": "summarization", "n": 2})
    path = tmp_path / "out" / "train.jsonl"
    write_records(path, records)
    assert read_records(path) == records
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {"id": "r0", "prompt": "p1", "chosen": "a", "rejected": "b", "metadata": {}}


def test_validate_record_keeps_pairs_without_a_preference():
    # the paper's data holds identical and empty responses, and its public code trains on them
    for change in ({"rejected": "Hello!"}, {"chosen": "", "rejected": "   \n"}):
        record = validate_record({**GOOD, **change}, "f", 1)
        assert (record.chosen, record.rejected) == (change.get("chosen", "Hello!"), change["rejected"])


def test_read_records_reports_real_line_numbers_past_blank_lines(tmp_path):
    path = tmp_path / "train.jsonl"
    bad = {**GOOD, "id": "r2", "chosen": 3}
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"train\.jsonl, row 3: field 'chosen' must be a string"):
        read_records(path)


def test_read_records_rejects_duplicate_ids(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "chosen": "Hey"}) + "\n")
    with pytest.raises(DataError, match=r"dup\.jsonl, row 2: duplicate id 'r1' \(first at row 1\)"):
        read_records(path)


def test_read_records_bad_json_and_missing_file(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{not json\n")
    with pytest.raises(DataError, match=r"broken\.jsonl, line 2: invalid JSON"):
        read_records(path)
    with pytest.raises(DataError, match="absent.jsonl: cannot read file"):
        read_records(tmp_path / "absent.jsonl")


def test_eval_prompts_round_trip_and_errors(tmp_path):
    prompts = [EvalPrompt("a-0", format_turns([("user", "Name a colour.")]), "Blue.", {"instruction": "Name a colour."}),
               EvalPrompt("a-1", format_turns([("user", "Say hi.")]), "", {})]
    path = tmp_path / "eval.jsonl"
    write_eval_prompts(path, prompts)
    assert read_eval_prompts(path) == prompts
    path.write_text(json.dumps({"id": "a", "prompt": "p"}) + "\n")
    with pytest.raises(DataError, match=r"eval\.jsonl, row 1: missing field 'reference'"):
        read_eval_prompts(path)


def test_unpaired_items_keep_every_response_once_and_are_deterministic():
    records = make_records([(f"prompt {i}", f"good {i}", f"bad {i}") for i in range(20)])
    items = unpaired_items(records, seed=3)
    assert len(items) == 40
    expected = Counter()
    for i, record in enumerate(records):
        expected[UnpairedItem(i, record.prompt, record.chosen, True)] += 1
        expected[UnpairedItem(i, record.prompt, record.rejected, False)] += 1
    assert Counter(items) == expected
    assert unpaired_items(records, seed=3) == items
    assert unpaired_items(records, seed=4) != items
    # Shuffled: not the chosen/rejected alternation of the input order.
    assert [item.desirable for item in items] != [True, False] * 20


def test_unpaired_batches_take_half_from_each_queue():
    records = make_records([(f"prompt {i}", f"good {i}", f"bad {i}") for i in range(30)])
    items = unpaired_items(records, seed=0)
    batches = unpaired_batches(records, 4, seed=0)
    assert len(batches) == 30 // 4  # 2 items a side are left over: the short batch is dropped
    assert all(len(c) == 4 and len(r) == 4 for c, r in batches)
    # The queues keep the shuffled order of the flat list.
    assert [i for c, _ in batches for i in c] == [x.record_index for x in items if x.desirable][:28]
    assert [j for _, r in batches for j in r] == [x.record_index for x in items if not x.desirable][:28]
    assert any(set(c) != set(r) for c, r in batches)
    assert unpaired_batches(records, 4, seed=0) == batches
    assert unpaired_batches(records, 4, seed=1) != batches
    with pytest.raises(ValueError, match="per_side must be >= 1"):
        unpaired_batches(records, 0, seed=0)


def test_sft_examples_take_first_pair_of_each_unique_prompt():
    records = make_records([
        ("p-a", "a first", "a bad"),
        ("p-b", "b first", "b bad"),
        ("p-a", "a second", "a bad 2"),
        ("p-c", "c first", "c bad"),
        ("p-b", "b second", "b bad 2"),
    ])
    assert sft_examples(records) == [(0, "p-a", "a first"), (1, "p-b", "b first"), (3, "p-c", "c first")]
    assert sft_examples([]) == []
