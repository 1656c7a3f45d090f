"""AlpacaEval end to end: our exports, the real alpaca_eval package and its default annotator
(alpaca_eval_gpt4_turbo_fn, function calling), against rpo/judge/server.py on 127.0.0.1."""
import json
import re
import secrets

import pytest

from rpo.judge.server import ChatServer
from rpo.alpacaeval import (
    DEFAULT_ANNOTATOR, export_model_outputs, export_reference_outputs, main, preference_scores, resolve_annotator,
    run_alpaca_eval,
)
from rpo.errors import ConfigError, DataError
from rpo.io import write_jsonl
from rpo.stats import bootstrap_interval

# Model outputs: 3 clearly better than the reference, 2 clearly worse => win rate 3/5.
QUALITY = {"GOOD": 2, "fine": 1, "bad": 0}


def quality(text):
    return max(score for word, score in QUALITY.items() if word in text)


def rank_outputs(messages):
    """Answer the annotator's make_partial_leaderboard call: the better output's model gets rank 1."""
    text = messages[-1]["content"]
    outputs = dict(re.findall(r'"model": "(m|M)",\s*"output": """(.*?)"""', text, re.DOTALL))
    first, second = ("m", "M") if quality(outputs["m"]) > quality(outputs["M"]) else ("M", "m")
    return json.dumps({"ordered_models": [{"model": first, "rank": 1}, {"model": second, "rank": 2}]})


def write_samples(path, n=5):
    rows = [{
        "id": f"alpaca_eval-eval-{i}",
        "prompt": f"\n<|user|>\nInstruction {i}: list {i} fruits.\n<|assistant|>\n",
        "response": f"GOOD answer {i}" if i < 3 else f"bad answer {i}",
        "chosen": f"fine reference answer {i}",
        "metadata": {"instruction": f"Instruction {i}: list {i} fruits.", "dataset": "helpful_base"},
    } for i in range(n)]
    write_jsonl(path, rows)
    return rows


def test_exports(tmp_path):
    write_samples(tmp_path / "s.jsonl")
    assert export_model_outputs(tmp_path / "s.jsonl", tmp_path / "m.json", "rpo-paired") == 5
    model = json.loads((tmp_path / "m.json").read_text())
    assert model[1] == {"instruction": "Instruction 1: list 1 fruits.", "output": "GOOD answer 1",
                        "generator": "rpo-paired", "dataset": "helpful_base"}
    export_reference_outputs(tmp_path / "s.jsonl", tmp_path / "r.json")
    reference = json.loads((tmp_path / "r.json").read_text())
    assert [r["output"] for r in reference] == [f"fine reference answer {i}" for i in range(5)]
    assert {r["generator"] for r in reference} == {"gpt4_turbo"}
    evals = [{"id": "e0", "prompt": "p", "reference": "the reference", "metadata": {"instruction": "raw"}}]
    write_jsonl(tmp_path / "eval.jsonl", evals)
    export_reference_outputs(tmp_path / "eval.jsonl", tmp_path / "r2.json", "gpt4_1106_preview")
    assert json.loads((tmp_path / "r2.json").read_text())[0]["output"] == "the reference"


def test_export_errors_name_file_and_line(tmp_path):
    rows = write_samples(tmp_path / "s.jsonl")
    del rows[3]["metadata"]["instruction"]
    write_jsonl(tmp_path / "s.jsonl", rows)
    with pytest.raises(DataError, match=r"s\.jsonl, line 4: missing field 'metadata\.instruction'"):
        export_model_outputs(tmp_path / "s.jsonl", tmp_path / "m.json", "x")
    rows[3]["metadata"]["instruction"] = rows[0]["metadata"]["instruction"]
    write_jsonl(tmp_path / "s.jsonl", rows)
    with pytest.raises(DataError, match="instruction repeated"):
        export_model_outputs(tmp_path / "s.jsonl", tmp_path / "m.json", "x")
    assert not (tmp_path / "m.json").exists()


def test_resolve_annotator(tmp_path, monkeypatch):
    assert resolve_annotator(DEFAULT_ANNOTATOR) == DEFAULT_ANNOTATOR
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "configs.yaml").write_text("x: 1\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_annotator("mine/configs.yaml") == str(tmp_path / "mine" / "configs.yaml")
    with pytest.raises(ConfigError, match="annotators_config: 'no_such_annotator'"):
        resolve_annotator("no_such_annotator")


def test_alpaca_eval_end_to_end_with_cache_and_no_key_leak(tmp_path, monkeypatch):
    api_key = "sk-alpaca-" + secrets.token_hex(16)
    monkeypatch.setenv("OPENAI_API_KEY", api_key)
    monkeypatch.delenv("OPENAI_CLIENT_CONFIG_PATH", raising=False)
    write_samples(tmp_path / "s.jsonl")
    assert main(["export", "--samples", str(tmp_path / "s.jsonl"), "--out", str(tmp_path / "model.json"),
                 "--generator", "rpo-paired", "--reference-out", str(tmp_path / "reference.json")]) == 0
    with ChatServer(rank_outputs) as server:
        args = ["evaluate", "--model-outputs", str(tmp_path / "model.json"), "--reference-outputs",
                str(tmp_path / "reference.json"), "--output-dir", str(tmp_path / "out"), "--caching-path",
                str(tmp_path / "cache" / "annotations.json"), "--base-url", server.base_url,
                "--summary", str(tmp_path / "result.json")]
        assert main(args) == 0
        assert server.requests == 5
        assert all(body.get("tools") for body in server.bodies)  # the function-calling annotator was used
        result = json.loads((tmp_path / "result.json").read_text())
        assert (result["win_rate"], result["n"], result["n_wins"], result["n_losses"]) == (0.6, 5, 3, 2)
        assert result["standard_error"] == pytest.approx(0.2449, abs=1e-3)  # sem of [1, 1, 1, 0, 0]
        # the interval: the project's bootstrap over the per-instruction scores (was 0.6 +- 1.96 SE = [0.12, 1.0])
        assert (result["ci_low"], result["ci_high"]) == bootstrap_interval([0, 0, 1, 1, 1], seed=1)[1:]
        assert (result["ci_low"], result["ci_high"]) == (0.2, 1.0)
        assert result["lc_win_rate"] is None and result["lc_error"]  # needs the hub: offline here
        assert result["annotator"] == DEFAULT_ANNOTATOR

        again = run_alpaca_eval(tmp_path / "model.json", tmp_path / "reference.json", output_dir=tmp_path / "out2",
                                caching_path=tmp_path / "cache" / "annotations.json", base_url=server.base_url)
        assert server.requests == 5  # every pair came from the annotation cache
        assert again["win_rate"] == 0.6
    assert all(h == f"Bearer {api_key}" for h in server.auth_headers)
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):
        assert api_key.encode() not in path.read_bytes(), f"API key leaked into {path}"


def test_missing_key_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_CLIENT_CONFIG_PATH", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        run_alpaca_eval(tmp_path / "m.json", tmp_path / "r.json", output_dir=tmp_path, caching_path=tmp_path / "c",
                        base_url="http://127.0.0.1:9/v1")


def test_preference_scores_follow_alpaca_evals_rule():
    # 2: model better, 1: reference better, 1.5 or the legacy 0: a draw, in between: soft; NaN dropped
    assert preference_scores([2, 1, 1.5, 0, 1.75, float("nan"), 3]) == [1.0, 0.0, 0.5, 0.5, 0.75]
