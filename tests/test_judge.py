"""Judging protocol and the OpenAI backend, run with the real openai client against rpo/judge/server.py."""
import json
import os
import secrets
import signal
import subprocess
import sys
import time

import pytest

from rpo.judge.server import ChatServer
from rpo.errors import ConfigError, DataError
from rpo.io import write_jsonl
from rpo.judge import (
    TASKS, JudgeAPIError, JudgeCache, JudgeItem, OracleJudge, answer_line, judge_samples, parse_verdict, read_samples,
    render_prompt, split_rendered, template_sha256,
)
from rpo.judge.__main__ import main as judge_main
from rpo.judge.openai_backend import OpenAIJudge, estimate_cost
from rpo.judge.protocols import model_shown_first, paper_answer, protocol_sha256, split_paper_messages
from rpo.judge.samples import outcome

N = 12


def make_samples(n=N):
    """Even items: the model response is the better one (marked GOOD); odd items: the chosen one is."""
    return [
        {
            "id": f"s{i}",
            "prompt": f"\n<|user|>\nQuestion number {i} {{with braces}}?\n<|assistant|>\n",
            "response": f"GOOD model answer {i}" if i % 2 == 0 else f"weak model answer {i}",
            "chosen": f"plain reference {i}" if i % 2 == 0 else f"GOOD reference {i}",
            "metadata": {"quality_model": 1.0 if i % 2 == 0 else 0.0},
        }
        for i in range(n)
    ]


def expected_verdicts(n=N):
    return ["model_win" if i % 2 == 0 else "chosen_win" for i in range(n)]


def prefer_good(messages):
    """A judge that sees through either protocol's request: it picks the response containing GOOD."""
    paper = split_paper_messages(messages)
    if paper:
        return paper_answer(paper["task"], "A" if "GOOD" in paper["response_a"] else "B")
    text = messages[-1]["content"]
    for task in TASKS:
        parts = split_rendered(task, text)
        if parts:
            letter = "A" if "GOOD" in parts["response_a"] else "B"
            return f"Response {letter} answers the question directly.\n{answer_line(task, letter)}"
    return "I was not sent a judging prompt."


@pytest.fixture
def api_key(monkeypatch):
    key = "sk-test-" + secrets.token_hex(16)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    return key


@pytest.fixture
def server():
    with ChatServer(prefer_good) as srv:
        yield srv


def openai_judge(server, cache=None, **kwargs):
    options = dict(base_url=server.base_url, cache=cache, timeout=0.5, backoff_base=0.01, max_attempts=4,
                   concurrency=4, progress=False)
    options.update(kwargs)
    return OpenAIJudge("gpt-4-0613", **options)


@pytest.mark.parametrize("text, verdict", [
    ("A is shorter and correct.\nMore helpful: A", "A"),
    ("Summary B keeps the key point.\nPreferred: B", "B"),
    ("**More helpful:** Response B", "B"),
    ("Preferred: **A**.", "A"),
    ("More helpful: A\nOn reflection:\nMore helpful: B", "B"),
    ("They are equally good.\nPreferred: tie", "tie"),
    ("Preferred: a longer summary would have helped", "unparseable"),
    ("I think A is better.", "unparseable"),
    ("", "unparseable"),
    (None, "unparseable"),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize("task", TASKS)
def test_render_and_split_round_trip(task):
    prompt, a, b = "post with {response_a} inside", "first {prompt}", "second\n[End of response A]"
    text = render_prompt(task, prompt, a, b)
    assert "{response_a} inside" in text and "first {prompt}" in text  # braces never re-substituted
    assert split_rendered(task, text) == {"prompt": prompt, "response_a": a, "response_b": b}
    assert split_rendered(task, "something else") is None
    assert len(template_sha256(task)) == 64


def test_presentation_order_is_seeded_and_balanced():
    orders = [model_shown_first(1, f"id{i}") for i in range(400)]
    assert orders == [model_shown_first(1, f"id{i}") for i in range(400)]
    assert 160 < sum(orders) < 240
    assert orders != [model_shown_first(2, f"id{i}") for i in range(400)]
    assert outcome("A", True) == "model_win" and outcome("A", False) == "chosen_win"
    assert outcome("B", False) == "model_win" and outcome("tie", True) == "tie"


def test_both_orders_are_undone(api_key, server, tmp_path):
    with JudgeCache(tmp_path / "cache.sqlite") as cache:
        rows = judge_samples(make_samples(), "dialogue", openai_judge(server, cache), seed=3)
    assert [r["verdict"] for r in rows] == expected_verdicts()
    assert {r["order"] for r in rows} == {"model_first", "chosen_first"}
    assert {r["judge_verdict"] for r in rows} == {"A", "B"}
    assert server.requests == N


def test_retries_after_429_500_and_timeout(api_key, server):
    server.fail(429, times=2)
    server.fail(500, times=2)
    server.stall(3.0)  # longer than the 0.5 s client timeout
    judge = openai_judge(server, concurrency=1, max_attempts=6)  # the first item meets all five faults
    rows = judge_samples(make_samples(), "summarization", judge, seed=1)
    assert [r["verdict"] for r in rows] == expected_verdicts()
    assert server.requests == N + 5
    assert judge.usage()["api_calls"] == N


def test_garbage_is_unparseable(api_key, server):
    server.garble(times=3)
    rows = judge_samples(make_samples(), "dialogue", openai_judge(server, concurrency=1), seed=1)
    verdicts = [r["verdict"] for r in rows]
    assert verdicts[:3] == ["unparseable"] * 3
    assert verdicts[3:] == expected_verdicts()[3:]


def test_second_run_is_served_from_cache_without_a_key(api_key, server, tmp_path, monkeypatch):
    samples = make_samples()
    with JudgeCache(tmp_path / "cache.sqlite") as cache:
        first = judge_samples(samples, "dialogue", openai_judge(server, cache), seed=1)
    assert server.requests == N
    monkeypatch.delenv("OPENAI_API_KEY")  # a fully cached rerun needs no client at all
    with JudgeCache(tmp_path / "cache.sqlite") as cache:
        judge = openai_judge(server, cache)
        second = judge_samples(samples, "dialogue", judge, seed=1)
    assert server.requests == N
    assert [r["raw"] for r in second] == [r["raw"] for r in first]
    assert all(r["cached"] for r in second)
    assert judge.usage() == {"api_calls": 0, "cached": N, "input_tokens": 0, "output_tokens": 0,
                             "estimated_cost_usd": 0.0, "endpoint": server.base_url}


def test_exhausted_retries_fail_after_the_others_and_keep_their_answers(api_key, server, tmp_path):
    server.fail(500, times=3)  # with one worker, the first item gets all three failures
    with JudgeCache(tmp_path / "cache.sqlite") as cache:
        with pytest.raises(JudgeAPIError, match=r"1 of 12 judge calls failed .* item s0: InternalServerError"):
            judge_samples(make_samples(), "dialogue", openai_judge(server, cache, max_attempts=3, concurrency=1),
                          seed=1)
        assert len(cache) == N - 1
    before = server.requests
    with JudgeCache(tmp_path / "cache.sqlite") as cache:
        rows = judge_samples(make_samples(), "dialogue", openai_judge(server, cache), seed=1)
    assert server.requests - before == 1
    assert [r["verdict"] for r in rows] == expected_verdicts()


def test_interrupt_starts_no_further_calls(api_key, server, tmp_path):
    judge = openai_judge(server, JudgeCache(tmp_path / "cache.sqlite"), concurrency=1)
    original, interrupted = judge._call_with_retries, []

    def call_or_interrupt(text):
        if server.requests == 3 and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt  # as if Ctrl-C arrived before the 4th call
        return original(text)

    judge._call_with_retries = call_or_interrupt
    with pytest.raises(KeyboardInterrupt):
        judge_samples(make_samples(), "dialogue", judge, seed=1)
    # The one worker may already have taken the next item; nothing after that starts (11 calls without the cancel).
    assert server.requests <= 4 and len(judge.cache) == server.requests


def test_killed_run_keeps_answers_already_received(api_key, tmp_path):
    """SIGKILL the CLI while its 4th call is in flight; the rerun pays only for the other N - 3."""
    released = __import__("threading").Event()
    calls = []

    def reply(messages):
        calls.append(1)
        if len(calls) >= 4:
            released.wait(20)
        return prefer_good(messages)

    samples_path = tmp_path / "samples.jsonl"
    write_jsonl(samples_path, make_samples())
    with ChatServer(reply) as srv:
        args = ["--samples", str(samples_path), "--task", "dialogue", "--base-url", srv.base_url,
                "--cache", str(tmp_path / "cache.sqlite"), "--seed", "1", "--out", str(tmp_path / "j.jsonl"),
                "--summary", str(tmp_path / "w.json"), "--usage", str(tmp_path / "u.json"), "--concurrency", "1",
                "--timeout", "30", "--no-progress"]
        proc = subprocess.Popen([sys.executable, "-m", "rpo.judge", *args], env=os.environ.copy(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while len(calls) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert len(calls) == 4, "the CLI never reached its 4th call"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        released.set()
        assert not (tmp_path / "j.jsonl").exists()  # no half-written outputs under the final names
        with JudgeCache(tmp_path / "cache.sqlite") as cache:
            assert len(cache) == 3
        before = srv.requests
        assert judge_main(args + ["--timeout", "2"]) == 0
        assert srv.requests - before == N - 3
    usage = json.loads((tmp_path / "u.json").read_text())
    assert usage["cached"] == len(usage["cached_ids"]) == 3 and usage["api_calls"] == N - 3
    assert "cached" not in json.loads((tmp_path / "w.json").read_text())  # the summary: verdicts only


def test_cli_summary_tokens_cost_and_no_key_in_any_file(api_key, server, tmp_path, capsys):
    samples_path = tmp_path / "samples.jsonl"
    write_jsonl(samples_path, make_samples())
    server.garble()
    common = ["--samples", str(samples_path), "--task", "dialogue", "--base-url", server.base_url,
              "--cache", str(tmp_path / "cache.sqlite"), "--seed", "7", "--concurrency", "1",
              "--timeout", "0.5", "--backoff-base", "0.01", "--no-progress"]
    out, summary_path = tmp_path / "judgments" / "run.jsonl", tmp_path / "judgments" / "run.winrate.json"
    usage_path = tmp_path / "judgments" / "run.usage.json"
    assert judge_main(common + ["--out", str(out), "--summary", str(summary_path), "--usage", str(usage_path)]) == 0
    summary, usage = json.loads(summary_path.read_text()), json.loads(usage_path.read_text())
    assert {k: summary[k] for k in ("run", "task", "n", "wins", "ties", "losses", "unparseable")} == {
        "run": "samples", "task": "dialogue", "n": N, "wins": 5, "ties": 0, "losses": 6, "unparseable": 1}
    assert summary["win_rate"] == pytest.approx(5 / N)
    assert summary["ci_low"] <= summary["win_rate"] <= summary["ci_high"]
    served_in = sum(len(m["content"].split()) for body in server.bodies for m in body["messages"])
    served_out = sum(len(parse.split()) for parse in [json.loads(r)["raw"] for r in out.read_text().splitlines()])
    assert (usage["input_tokens"], usage["output_tokens"]) == (served_in, served_out)
    assert usage["estimated_cost_usd"] == pytest.approx(served_in * 30e-6 + served_out * 60e-6)
    assert usage["endpoint"] == server.base_url
    assert "endpoint" not in summary  # a local server's port would make the summary differ run to run
    assert summary["judge_model"] == "gpt-4-0613" and summary["protocol"] == "rpo-paper"
    assert summary["template_sha256"] == protocol_sha256("rpo-paper", "dialogue") != template_sha256("dialogue")
    assert (summary["retried_items"], summary["failed_items"]) == (0, 0)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert set(rows[0]) >= {"id", "task", "prompt", "response", "chosen", "order", "raw", "verdict"}
    assert "cached" not in rows[0]  # a verdict file is the same bytes whatever the shared cache held

    server.fail(401, times=100)  # a failing run: its error message must not carry the key either
    assert judge_main(["--samples", str(samples_path), "--task", "summarization", "--base-url",
                       server.base_url, "--cache", str(tmp_path / "cache2.sqlite"), "--timeout", "0.5",
                       "--out", str(tmp_path / "x.jsonl"), "--summary", str(tmp_path / "x.json"),
                       "--no-progress"]) == 1
    assert "judge: HTTP 401 from" in capsys.readouterr().err  # stopped at once: the key was refused
    assert all(h == f"Bearer {api_key}" for h in server.auth_headers)  # the key really was used
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 4
    for path in written:
        assert api_key.encode() not in path.read_bytes(), f"API key leaked into {path}"


def test_missing_key_is_a_config_error(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        judge_samples(make_samples(2), "dialogue", openai_judge(server), seed=1)


def test_cost_table():
    assert estimate_cost("gpt-4-0613", 1_000_000, 1_000_000) == pytest.approx(90.0)
    assert estimate_cost("gpt-4-turbo", 2_000_000, 0) == pytest.approx(20.0)
    assert estimate_cost("my-local-judge", 10, 10) is None


def test_samples_row_missing_a_field_names_file_and_line(tmp_path):
    rows = make_samples(3)
    del rows[2]["chosen"]
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n")
    with pytest.raises(DataError, match=r"samples\.jsonl, line 4: missing field 'chosen'"):
        read_samples(path)
    rows[2]["chosen"] = 5
    write_jsonl(path, rows)
    with pytest.raises(DataError, match=r"line 3: field 'chosen' must be a string"):
        read_samples(path)


def test_duplicate_ids_are_refused():
    samples = make_samples(3)
    samples[2]["id"] = "s0"
    with pytest.raises(DataError, match="duplicate ids"):
        judge_samples(samples, "dialogue", OracleJudge(lambda *a: 0.0), seed=1)


def test_oracle_judge_by_ground_truth_reward():
    seen = []

    def reward(task, prompt, response, metadata):
        seen.append(task)
        return 1.0 if "GOOD" in response else 0.5  # equal rewards tie (rpo.world.oracle.verdict)

    samples = make_samples()
    samples[1]["chosen"] = "weak reference 1"
    rows = judge_samples(samples, "summarization", OracleJudge(reward), seed=5)
    expected = expected_verdicts()
    expected[1] = "tie"
    assert [r["verdict"] for r in rows] == expected
    assert set(seen) == {"summarization"}
    with pytest.raises(ValueError, match="not finite"):
        OracleJudge(lambda *a: float("nan")).judge([JudgeItem("x", "dialogue", "p", "a", "b")])


def test_cli_oracle_backend(tmp_path, monkeypatch):
    (tmp_path / "toy_world.py").write_text(
        "def reward(task, prompt, response, metadata):\n    return float('GOOD' in response)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    samples_path = tmp_path / "samples.jsonl"
    write_jsonl(samples_path, make_samples())
    args = ["--samples", str(samples_path), "--task", "dialogue", "--backend", "oracle", "--seed", "2",
            "--out", str(tmp_path / "o.jsonl"), "--summary", str(tmp_path / "o.json"), "--run", "toy"]
    assert judge_main(args + ["--reward", "toy_world:reward"]) == 0
    summary = json.loads((tmp_path / "o.json").read_text())
    assert (summary["run"], summary["wins"], summary["losses"], summary["judge_backend"]) == ("toy", 6, 6, "oracle")
    assert judge_main(args + ["--reward", "toy_world:missing"]) == 1


def test_the_endpoint_names_the_server_without_credentials(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert OpenAIJudge().endpoint() == "https://api.openai.com/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    assert OpenAIJudge().endpoint() == "http://127.0.0.1:8000/v1"
    judge = OpenAIJudge(base_url="https://user:secret@judge.example.org:8443/v1?key=secret")
    assert judge.endpoint() == "https://judge.example.org:8443/v1" and "secret" not in str(judge.usage())
