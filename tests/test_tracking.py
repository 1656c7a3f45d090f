"""Live metrics (rpo.tracking): TensorBoard's scalars are metrics.jsonl's rows under TRL's names, step
by step; a resumed run logs each step once; bad report_to values and missing packages are refused."""
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rpo.config import load_schema, validate_config
from rpo.errors import ConfigError
from rpo.pipeline import Run, train_settings
from rpo.tracking import REPORTERS, Trackers, trl_name
from rpo.train import Trainer
from test_train import config, world  # noqa: F401  (world: the tiny model, data and reference cache)

ROOT = Path(__file__).resolve().parent.parent


def rows_of(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def scalars_of(cfg):
    events = EventAccumulator(str(Path(cfg["logging_dir"]) / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def as_logged(rows, key):
    """What TensorBoard holds for a metrics.jsonl key: (step, the value as float32)."""
    return [(r["step"], float(np.float32(r[key]))) for r in rows]


def test_tensorboard_scalars_are_the_metrics_rows_under_trl_names(world, tmp_path):
    cfg = config(world, tmp_path, "dpo", max_steps=3, report_to=["tensorboard"])
    out = Trainer(cfg).fit()
    rows = rows_of(out)
    assert Path(cfg["logging_dir"]) == out.parent / "dpo.logs" and Path(cfg["logging_dir"]).is_dir()
    logged = scalars_of(cfg)
    keys = {k for row in rows for k in row if k != "step" and not k.startswith("logits/hist")}
    assert "logits/hist0" in rows[-1]  # the last step's histogram stays in metrics.jsonl only
    assert set(logged) == {trl_name(k) for k in keys}
    assert {"train/learning_rate", "train/rewards/margins", "train/logps/rejected", "train/grad_norm"} <= set(logged)
    for key in keys:
        assert logged[trl_name(key)] == as_logged(rows, key), key


def test_resumed_run_logs_each_step_once(world, tmp_path):
    cfg = config(world, tmp_path, "dpo", max_steps=5, save_every=2, report_to=["tensorboard"])
    crashing = Trainer(cfg)
    real_step = crashing.train_step

    def train_step():  # dies after logging step 3; the last checkpoint holds step 2
        if crashing.step == 3:
            raise RuntimeError("killed")
        return real_step()

    crashing.train_step = train_step
    with pytest.raises(RuntimeError, match="killed"):
        crashing.fit()
    assert [s for s, _ in scalars_of(cfg)["train/loss"]] == [1, 2, 3]
    out = Trainer(cfg).fit()  # resumes from step 2 and redoes step 3
    rows = rows_of(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    logged = scalars_of(cfg)
    for key in ("loss", "lr", "rewards/accuracies"):
        assert logged[trl_name(key)] == as_logged(rows, key), key


def test_only_rank_zero_writes(world, tmp_path):
    cfg = config(world, tmp_path, "dpo", report_to=["tensorboard"])
    with Trackers(cfg, 0, is_main=False) as trackers:
        trackers.log({"step": 1, "loss": 0.5})
    assert trackers.writers == [] and not Path(cfg["logging_dir"]).exists()


def test_bad_report_to_is_refused(world, tmp_path):
    with pytest.raises(ConfigError, match=r"'report_to': 'mlflow' not known; allowed: tensorboard, wandb"):
        config(world, tmp_path, "dpo", report_to=["tensorboard", "mlflow"])
    with pytest.raises(ConfigError, match=r"'report_to' must be a list of tensorboard, wandb"):
        config(world, tmp_path, "dpo", report_to="tensorboard")
    pipeline = yaml.safe_load((ROOT / "config.yaml").read_text())
    pipeline["logging"] = {"report_to": ["mlflow"]}
    with pytest.raises(ConfigError, match=r"logging\.report_to"):
        validate_config(pipeline)


def test_pipeline_passes_report_to_and_its_enum_is_the_trackers():
    items = load_schema()["properties"]["logging"]["properties"]["report_to"]["items"]
    assert tuple(items["enum"]) == REPORTERS
    pipeline = validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()))
    assert pipeline["logging"]["report_to"] == [] and "report_to" not in train_settings(pipeline, Run("sft", 1))
    pipeline["logging"]["report_to"] = ["tensorboard"]
    assert train_settings(pipeline, Run("dpo", 1))["report_to"] == ["tensorboard"]


def test_a_missing_package_is_a_clear_error(world, tmp_path, monkeypatch):
    # None in sys.modules makes `import` fail as if the package were not installed (wandb is not in
    # envs/requirements.txt; this environment cannot install it offline).
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"logging\.report_to: wandb needs `pip install wandb`"):
        Trackers(config(world, tmp_path, "dpo", report_to=["wandb"]), 0, is_main=True)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"logging\.report_to: tensorboard needs `pip install tensorboard`"):
        Trackers(config(world, tmp_path, "dpo", report_to=["tensorboard"]), 0, is_main=False)  # every rank


def test_wandb_needs_a_key_or_offline_mode_and_keeps_its_run_on_resume(world, tmp_path, monkeypatch):
    # A stand-in for wandb's API (wandb is not installable here): what rpo.tracking asks of it.
    calls = []
    run = types.SimpleNamespace(log=lambda values, step: calls.append(("log", step, values)),
                                finish=lambda: calls.append(("finish",)))
    fake = types.SimpleNamespace(util=types.SimpleNamespace(generate_id=lambda: f"id{len(calls)}"),
                                 init=lambda **kw: calls.append(("init", kw)) or run)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")
    cfg = config(world, tmp_path, "dpo", report_to=["wandb"])
    with pytest.raises(ConfigError, match="WANDB_API_KEY in the environment, or WANDB_MODE=offline"):
        Trackers(cfg, 0, is_main=True)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with Trackers(cfg, 0, is_main=True) as trackers:
        trackers.log({"step": 1, "loss": 0.5, "lr": 1e-3})
    with Trackers(cfg, 2, is_main=True):  # resumed at step 2: the same wandb run
        pass
    inits = [c[1] for c in calls if c[0] == "init"]
    assert inits[0]["id"] == inits[1]["id"] == "id0" and inits[0]["dir"] == cfg["logging_dir"]
    assert inits[0]["resume"] == "allow" and inits[0]["name"] == "dpo"
    assert ("log", 1, {"train/loss": 0.5, "train/learning_rate": 1e-3}) in calls
