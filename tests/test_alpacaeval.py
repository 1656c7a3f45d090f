"""AlpacaEval end to end: our exports, the real alpaca_eval package and both annotators the pipeline
offers (the paper's alpaca_eval_gpt4_turbo_fn, function calling; the leaderboard's
weighted_alpaca_eval_gpt4_turbo, one token read through its top log-probs), answered by the local
oracle (rpo.judge.local.oracle_reply) over rpo/judge/server.py on 127.0.0.1."""
import json
import math
import secrets

import pytest

from rpo.alpacaeval import (
    ANNOTATORS, DEFAULT_ANNOTATOR, LEADERBOARD_ANNOTATOR, PAPER_ANNOTATOR, export_model_outputs,
    export_reference_outputs, length_controlled, main, preference_scores, resolve_annotator, run_alpaca_eval,
)
from rpo.data.records import format_turns
from rpo.errors import ConfigError, DataError
from rpo.io import write_jsonl
from rpo.judge.local import ALPACA_WEIGHTED_CONFIDENCE, oracle_reply
from rpo.judge.server import ChatServer, Reply
from rpo.stats import bootstrap_interval

# Model outputs: 3 clearly better than the reference, 2 clearly worse => win rate 3/5.
QUALITY = {"GOOD": 2, "fine": 1, "bad": 0}


def quality(text):
    return max(score for word, score in QUALITY.items() if word in text)


class StubWorld:
    """The one thing oracle_reply asks of a world: a reward for (formatted prompt, response)."""

    def __init__(self):
        self.prompts = []

    def reward_by_prompt(self, prompt, response):
        self.prompts.append(prompt)
        return float(quality(response))


def write_samples(path, n=5):
    rows = [{
        "id": f"alpaca_eval-eval-{i}",
        "prompt": f"\n<|user|>\nInstruction {i}: list {i} fruits.\n<|assistant|>\n",
        "response": f"GOOD answer {i}" if i < 3 else f"bad answer {i}",
        "chosen": f"fine reference answer {i}",
        "metadata": {"instruction": f"Instruction {i}: list {i} fruits.", "dataset": "helpful_base",
                     "generator": "text_davinci_003"},  # the data's generator column, carried by generation
    } for i in range(n)]
    write_jsonl(path, rows)
    return rows


def test_exports(tmp_path):
    write_samples(tmp_path / "s.jsonl")
    assert export_model_outputs(tmp_path / "s.jsonl", tmp_path / "m.json", "rpo-paired") == 5
    model = json.loads((tmp_path / "m.json").read_text())
    assert model[1] == {"instruction": "Instruction 1: list 1 fruits.", "output": "GOOD answer 1",
                        "generator": "rpo-paired", "dataset": "helpful_base", "alpaca_eval_index": 1}
    export_reference_outputs(tmp_path / "s.jsonl", tmp_path / "r.json")
    reference = json.loads((tmp_path / "r.json").read_text())
    assert [r["output"] for r in reference] == [f"fine reference answer {i}" for i in range(5)]
    assert {r["generator"] for r in reference} == {"text_davinci_003"}  # as the data names it, not a constant
    evals = [{"id": "e0", "prompt": "p", "reference": "the reference", "metadata": {"instruction": "raw"}}]
    write_jsonl(tmp_path / "eval.jsonl", evals)
    export_reference_outputs(tmp_path / "eval.jsonl", tmp_path / "r1.json")
    assert json.loads((tmp_path / "r1.json").read_text())[0]["generator"] == "unnamed reference"
    export_reference_outputs(tmp_path / "eval.jsonl", tmp_path / "r2.json", "gpt4_1106_preview")
    assert json.loads((tmp_path / "r2.json").read_text())[0] == {  # not AlpacaEval's: no row of its 805
        "instruction": "raw", "output": "the reference", "generator": "gpt4_1106_preview", "dataset": None}


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


# annotator -> (win rate, the per-instruction scores of 3 wins and 2 losses, what the request carried)
EXPECTED = {
    PAPER_ANNOTATOR: (0.6, [1, 1, 1, 0, 0], lambda body: bool(body.get("tools")) and not body.get("logprobs")),
    LEADERBOARD_ANNOTATOR: ((3 * 0.99 + 2 * 0.01) / 5, [0.99, 0.99, 0.99, 0.01, 0.01],
                            lambda body: body.get("logprobs") is True and body.get("top_logprobs") == 5
                            and body.get("max_tokens") == 1 and not body.get("tools")),
}


@pytest.mark.parametrize("annotator", ANNOTATORS)
def test_alpaca_eval_end_to_end_with_cache_and_no_key_leak(tmp_path, monkeypatch, annotator):
    assert ALPACA_WEIGHTED_CONFIDENCE == 0.99  # EXPECTED's soft scores
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read once, at import
    monkeypatch.setattr("rpo.alpacaeval._hub_file_cached", lambda: False)  # whatever this machine's cache holds
    win_rate, scores, request_ok = EXPECTED[annotator]
    api_key = "sk-alpaca-" + secrets.token_hex(16)
    monkeypatch.setenv("OPENAI_API_KEY", api_key)
    monkeypatch.delenv("OPENAI_CLIENT_CONFIG_PATH", raising=False)
    write_samples(tmp_path / "s.jsonl")
    assert main(["export", "--samples", str(tmp_path / "s.jsonl"), "--out", str(tmp_path / "model.json"),
                 "--generator", "rpo-paired", "--reference-out", str(tmp_path / "reference.json")]) == 0
    world = StubWorld()
    with ChatServer(oracle_reply(world)) as server:
        args = ["evaluate", "--model-outputs", str(tmp_path / "model.json"), "--reference-outputs",
                str(tmp_path / "reference.json"), "--output-dir", str(tmp_path / "out"), "--caching-path",
                str(tmp_path / "cache" / "annotations.json"), "--base-url", server.base_url,
                "--annotators-config", annotator, "--summary", str(tmp_path / "result.json")]
        assert main(args) == 0
        assert server.requests == 5
        assert all(request_ok(body) for body in server.bodies), server.bodies[0]  # this annotator's request
        # the oracle scored the instruction as the world's prompts are written
        assert format_turns([("user", "Instruction 2: list 2 fruits.")]) in world.prompts
        result = json.loads((tmp_path / "result.json").read_text())
        assert result["annotator"] == annotator
        assert result["reference_generator"] == "text_davinci_003"  # read from the reference rows, for Table 2
        assert result["win_rate"] == pytest.approx(win_rate, abs=1e-9) and result["n"] == 5
        assert (result["n_wins"], result["n_losses"]) == (3, 2)
        assert result["standard_error"] == pytest.approx(0.2449 * (scores[0] - scores[-1]), abs=1e-3)
        # the interval: the project's bootstrap over the per-instruction (soft) scores
        expected = bootstrap_interval(scores, seed=1)
        assert result["ci_low"] == pytest.approx(expected[1]) and result["ci_high"] == pytest.approx(expected[2])
        assert result["ci_low"] < result["win_rate"] < result["ci_high"]
        assert result["lc_win_rate"] is None  # df_gamed.csv is not in the (stubbed) cache and the hub is off
        assert result["lc_unavailable"] == "offline, no df_gamed.csv"
        assert result["lc_unavailable_reason"] == ("alpaca_eval needs tatsu-lab/alpaca_eval df_gamed.csv from the "
                                                   "hub; not in the HF cache and HF_HUB_OFFLINE=1")

        again = run_alpaca_eval(tmp_path / "model.json", tmp_path / "reference.json", annotator,
                                output_dir=tmp_path / "out2", caching_path=tmp_path / "cache" / "annotations.json",
                                base_url=server.base_url)
        assert server.requests == 5  # every pair came from the annotation cache
        assert again["win_rate"] == result["win_rate"]
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


def test_oracle_answers_the_weighted_annotator_with_logprobs_that_carry_its_verdict():
    template = ('{\n    "instruction": """Say hi.""",\n}\n\n{\n    {\n        "model_identifier": "m",\n'
                '        "output": """%s"""\n    },\n    {\n        "model_identifier": "M",\n'
                '        "output": """%s"""\n    }\n}')
    reply = oracle_reply(StubWorld())
    win = reply([{"role": "user", "content": template % ("GOOD hi", "bad hi")}])
    assert win == Reply("m", {"m": math.log(0.99), "M": math.log(0.01)})
    loss = reply([{"role": "user", "content": template % ("bad hi", "fine hi")}])
    assert loss == Reply("M", {"m": math.log(0.01), "M": math.log(0.99)})
    tie = reply([{"role": "user", "content": template % ("fine hi", "fine too")}])
    assert tie.top_logprobs["m"] == tie.top_logprobs["M"] == math.log(0.5)  # alpaca_eval reads 1.5: a draw


def test_server_returns_openai_logprobs_when_asked():
    import openai

    answers = iter([Reply("M", {"m": -3.0, "M": -0.05, "x": -9.0}), "plain text"])
    with ChatServer(lambda messages: next(answers)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="k")
        first = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "q"}],
                                               logprobs=True, top_logprobs=2, max_tokens=1)
        second = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "q"}])
    token = first.choices[0].logprobs.content[0]
    assert first.choices[0].message.content == "M" and (token.token, token.logprob) == ("M", -0.05)
    assert [(t.token, t.logprob) for t in token.top_logprobs] == [("M", -0.05), ("m", -3.0)]  # top 2, likeliest first
    assert second.choices[0].logprobs is None and second.choices[0].message.content == "plain text"


def test_length_controlled_reason_when_the_hub_cannot_be_reached(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("rpo.alpacaeval._hub_file_cached", lambda: False)

    def unreachable(*args, **kwargs):
        raise OSError("no route to huggingface.co")

    monkeypatch.setattr("alpaca_eval.metrics.glm_winrate.hf_hub_download", unreachable)
    (tmp_path / "a.json").write_text(json.dumps([{"preference": 2.0, "output_1": "a", "output_2": "bb",
                                                 "alpaca_eval_index": 0, "generator_1": "ref", "generator_2": "m",
                                                 "annotator": "x"}]))
    lc = length_controlled(tmp_path / "a.json")
    assert lc["lc_win_rate"] is None and lc["lc_unavailable"] == "hub unreachable, no df_gamed.csv"
    assert "no route to huggingface.co" in lc["lc_unavailable_reason"]


def test_config_offers_exactly_the_two_annotators():
    from pathlib import Path

    import yaml

    from rpo.config import load_schema, validate_config

    assert load_schema()["properties"]["alpacaeval"]["properties"]["annotators_config"]["enum"] == list(ANNOTATORS)
    config = yaml.safe_load((Path(__file__).parents[1] / "config.yaml").read_text())
    config["alpacaeval"]["annotators_config"] = LEADERBOARD_ANNOTATOR
    validate_config(config)
    config["alpacaeval"]["annotators_config"] = "alpaca_eval_gpt4"
    with pytest.raises(ConfigError, match=r"config key 'alpacaeval\.annotators_config': 'alpaca_eval_gpt4' is not one of"):
        validate_config(config)


def _annotations(rows, n_rows):
    """Soft annotations of AlpacaEval rows `rows`, in that order: the model wins more on easier rows (of
    n_rows, difficulty rising with the row as in _fake_hub_cache), and its outputs' lengths vary."""
    return [{"instruction": f"instruction {row}", "output_1": "r" * 30, "output_2": "m" * (10 + row % 40),
             "preference": 1 + 1 / (1 + math.exp(-4 * (2 * row / (n_rows - 1) - 1))), "generator_1": "gpt4_turbo",
             "generator_2": "rpo", "annotator": LEADERBOARD_ANNOTATOR, "alpaca_eval_index": row} for row in rows]


def _fake_hub_cache(root, n_rows):
    """df_gamed.csv where alpaca_eval's hf_hub_download finds it offline: a dataset snapshot plus refs/main."""
    import numpy as np
    import pandas as pd

    repo = root / "datasets--tatsu-lab--alpaca_eval"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    rng = np.random.default_rng(0)
    frames = [pd.DataFrame({"model": model, "index": range(n_rows), "preference": rng.uniform(0, 1, n_rows),
                            "std_delta_len": rng.normal(size=n_rows), "instruction_difficulty": np.linspace(-1, 1, n_rows),
                            "not_gamed_baseline": False}) for model in ("gamed_concise", "gamed_verbose")]
    pd.concat(frames).to_csv(repo / "snapshots" / ("0" * 40) / "df_gamed.csv", index=False)


def test_length_controlled_is_computed_when_the_hub_file_is_cached(tmp_path, monkeypatch):
    import numpy as np
    import pandas as pd
    from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate

    _fake_hub_cache(tmp_path / "hub", 200)
    monkeypatch.setattr("alpaca_eval.constants.DEFAULT_CACHE_DIR", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    rows = [int(r) for r in np.random.default_rng(1).permutation(200)[:60]]  # a subset, shuffled as generation does
    annotations = _annotations(rows, 200)
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    lc = length_controlled(tmp_path / "a.json")
    assert lc["lc_unavailable"] is None and lc["lc_unavailable_reason"] is None
    # alpaca_eval's own GLM on the same annotations laid out at their AlpacaEval rows
    by_row = pd.DataFrame(annotations).drop(columns="alpaca_eval_index")
    by_row.index = rows
    expected = get_length_controlled_winrate(by_row, save_weights_dir=None)["length_controlled_winrate"] / 100
    assert 0 < lc["lc_win_rate"] < 1 and lc["lc_win_rate"] == pytest.approx(expected, abs=1e-12)
    # read by position instead (what a shuffled export without the rows would give): another number
    by_position = pd.DataFrame(annotations).drop(columns="alpaca_eval_index")
    wrong = get_length_controlled_winrate(by_position, save_weights_dir=None)["length_controlled_winrate"] / 100
    assert abs(wrong - lc["lc_win_rate"]) > 1e-4
    # not AlpacaEval's instructions (the generated world's): no number, and why
    (tmp_path / "w.json").write_text(json.dumps([{k: v for k, v in a.items() if k != "alpaca_eval_index"}
                                                 for a in annotations]))
    assert length_controlled(tmp_path / "w.json")["lc_unavailable"] == "not AlpacaEval's instructions"
