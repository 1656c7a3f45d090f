"""Live metrics of a training run: TensorBoard and/or Weights & Biases (trainer key `report_to`).

metrics.jsonl (rpo.train) stays the record of a run and the report's source; the trackers only
mirror its rows so a long run can be watched. Names are TRL's as the transformers Trainer's
callbacks write them ("train/" + the logged key; our `lr` is TRL's `learning_rate`), so these
curves sit beside TRL runs' in one dashboard. Only rank 0 writes. The files live in `logging_dir`
(default `{out}.logs`), outside the checkpoint and the atomically replaced output folder, so they
survive resumption and the end of the run.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

from rpo.errors import ConfigError

REPORTERS = ("tensorboard", "wandb")
_TRL_NAMES = {"lr": "learning_rate"}  # every other metrics.jsonl key already has TRL's name


def trl_name(key: str) -> str:
    return "train/" + _TRL_NAMES.get(key, key)


def scalars(row: dict) -> dict[str, float]:
    """A metrics.jsonl row as the trackers log it: TRL's names, the step left out (it is the x axis), and
    the end-of-training loss-logit histogram too (32 bin counts: a record for rpo.report.regime, not a
    curve to watch)."""
    return {trl_name(k): float(v) for k, v in row.items() if k != "step" and not k.startswith("logits/hist")}


def check_report_to(value) -> list[str]:
    """The trainer key `report_to` checked: a list of REPORTERS, each once."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"training config key 'report_to' must be a list of {', '.join(REPORTERS)} "
                          f"(empty: none), got {value!r}")
    unknown = sorted(set(value) - set(REPORTERS))
    if unknown:
        raise ConfigError(f"training config key 'report_to': {', '.join(map(repr, unknown))} not known; "
                          f"allowed: {', '.join(REPORTERS)}")
    return list(dict.fromkeys(value))


def _require(module: str, reporter: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"logging.report_to: {reporter} needs `pip install {reporter}`") from None


class _TensorBoard:
    def __init__(self, cfg: dict, next_step: int):
        summary = _require("torch.utils.tensorboard", "tensorboard")
        # purge_step: TensorBoard drops this folder's earlier events from next_step on, so the steps a
        # killed run logged after its last checkpoint appear once (the rerun's), as in metrics.jsonl.
        self.writer = summary.SummaryWriter(str(Path(cfg["logging_dir"]) / "tensorboard"), purge_step=next_step)

    def log(self, values: dict, step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a live view: each row as soon as it exists, like metrics.jsonl

    def close(self) -> None:
        self.writer.close()


def _check_wandb_env() -> None:
    # A batch job must not stop at wandb's interactive login; the key is read from the environment
    # only, so it never lands in a config, run.json or a log.
    if os.environ.get("WANDB_MODE", "online") not in ("offline", "disabled") and not os.environ.get("WANDB_API_KEY"):
        raise ConfigError("logging.report_to: wandb needs WANDB_API_KEY in the environment, or WANDB_MODE=offline")


class _Wandb:
    def __init__(self, cfg: dict, next_step: int):
        wandb = _require("wandb", "wandb")
        folder = Path(cfg["logging_dir"])
        folder.mkdir(parents=True, exist_ok=True)
        # One wandb run per training run: its id is kept beside the logs and reused on resumption.
        id_file = folder / "wandb_run_id"
        if next_step > 1 and id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run_id = wandb.util.generate_id()
            id_file.write_text(run_id + "\n")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "rpo"), name=Path(cfg["out"]).name,
                              id=run_id, resume="allow", config=cfg,
                              dir=os.environ.get("WANDB_DIR") or str(folder))

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


_OPENERS = {"tensorboard": _TensorBoard, "wandb": _Wandb}


class Trackers:
    """The run's live loggers (none off rank 0 or without report_to); a context manager that closes them."""

    def __init__(self, cfg: dict, step: int, is_main: bool):
        self.writers = []
        for name in cfg["report_to"]:
            # Checked on every rank, so all fail alike rather than some waiting in a collective.
            _require("torch.utils.tensorboard" if name == "tensorboard" else name, name)
            if name == "wandb":
                _check_wandb_env()
            if is_main:
                self.writers.append(_OPENERS[name](cfg, step + 1))

    def log(self, row: dict) -> None:
        if self.writers:
            values = scalars(row)
            for writer in self.writers:
                writer.log(values, row["step"])

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for writer in self.writers:
            writer.close()
