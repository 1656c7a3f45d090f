"""A judge endpoint that refuses: a real OpenAI-compatible server on 127.0.0.1 answers 401, 403, 404 (the run
stops at once, no retries, one line) or 400 for an over-long prompt (that item fails with its reason)."""
import json

import pytest

from rpo.io import write_jsonl
from rpo.judge.__main__ import main as judge_main
from rpo.judge.protocols import paper_answer, split_paper_messages
from rpo.judge.server import ChatServer
from test_bad_artefacts import judge_args, one_error_line, sample_rows

# ---- the judge against a real HTTP endpoint on 127.0.0.1 ---------------------------------------

CONTEXT = 60  # words of prompt the test endpoint accepts, like a model's context window


def bounded_judge(messages):
    """A judge with a context limit: an over-long request is a 400, as OpenAI answers it."""
    words = sum(len(m["content"].split()) for m in messages)
    if words > CONTEXT:
        raise ValueError(f"This model's maximum context length is {CONTEXT} tokens, but the messages have {words}")
    paper = split_paper_messages(messages)
    return paper_answer(paper["task"], "A" if "GOOD" in paper["response_a"] else "B")


@pytest.fixture
def endpoint(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    with ChatServer(bounded_judge) as server:
        yield server


@pytest.mark.parametrize("status, says", [
    (401, "the API key was refused (the judge reads it from OPENAI_API_KEY); set a valid key"),
    (403, "this API key may not use model 'gpt-4-0613'; use a key with access to it, or another judge model"),
    (404, "no model 'gpt-4-0613' at this endpoint (or no chat-completions route there); check the judge model"),
])
def test_a_refused_key_or_unknown_model_stops_at_once_without_retries(endpoint, tmp_path, capsys, status, says):
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, sample_rows(8))
    endpoint.fail(status, times=100)
    args = judge_args(samples, tmp_path, "--base-url", endpoint.base_url, "--concurrency", "1", "--max-attempts", "5",
                      "--backoff-base", "0.01", "--cache", str(tmp_path / "cache.sqlite"))
    assert judge_main(args) == 1
    message = one_error_line(capsys)
    assert message.startswith(f"judge: HTTP {status} from {endpoint.base_url}/: {says}") and "sk-test-key" not in message
    assert endpoint.requests == 1  # no retry, and no other item tried
    assert not (tmp_path / "j").exists()


def test_an_over_long_prompt_fails_that_item_and_the_others_go_on(endpoint, tmp_path, capsys):
    rows = sample_rows(6)
    rows[2]["prompt"] = "\n<|user|>\n" + "a very long question " * 20 + "\n<|assistant|>\n"
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, rows)
    endpoint.garble()  # and one answer without a verdict
    args = judge_args(samples, tmp_path, "--base-url", endpoint.base_url, "--concurrency", "1", "--backoff-base", "0.01")
    assert judge_main(args) == 0
    summary = json.loads((tmp_path / "j" / "run.winrate.json").read_text())
    assert endpoint.requests == 6  # the refused request was not retried
    assert (summary["n"], summary["unparseable"], summary["failed_items"]) == (6, 1, 1)
    assert summary["wins"] + summary["ties"] + summary["losses"] + 1 + 1 == 6
    assert [failure["id"] for failure in summary["failures"]] == ["s2"]
    assert summary["failures"][0]["error"].startswith(f"BadRequestError (HTTP 400): This model's maximum context "
                                                      f"length is {CONTEXT} tokens, but the messages have")
    judged = {row["id"]: row for row in map(json.loads, (tmp_path / "j" / "run.jsonl").read_text().splitlines())}
    assert judged["s2"]["failed"] and judged["s2"]["error"] == summary["failures"][0]["error"]
    err = capsys.readouterr()
    assert "1 unparseable answers, 1 failed calls" in err.out
    assert "failed: item s2: BadRequestError (HTTP 400): This model's maximum context length" in err.err
