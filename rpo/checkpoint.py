"""The trainer's state (`TrainState`) and its checkpoints (`{run}.ckpt/`): when to save, what is saved,
and resuming.

Two formats, chosen by how the model is held:
- unsharded (one process, DDP, FSDP on one rank): `state.pt`, the full model and optimizer state
  plus the run state below, written by rank 0.
- sharded (FSDP on more than one rank): `step-{N}/`, a torch.distributed.checkpoint folder in which
  each rank writes its own shards, so no rank ever holds the full state (at 13B with RMSprop that
  would be ~150 GB of host memory on rank 0), plus `meta.pt` from rank 0 with the run state. It is
  written as `step-{N}.tmp/` and renamed only once every rank's shards and `meta.pt` are in, and
  older `step-*` folders are deleted only after that rename, so a crash at any point leaves the
  last complete checkpoint usable. A `.tmp` folder is never read.
Run state: the TrainState's step, scheduler and KTO reference KL log-probs, every rank's RNG states, the
config fingerprint and the world size; a checkpoint of another config or world size (a step's
micro-batches depend on it) is refused.
The metrics file beside it is append-only and trimmed to the checkpoint's step on resume.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rpo.distributed import (all_reduce_sum, barrier, full_state_dicts, gather_objects, load_full_state_dicts,
                             load_sharded_state_dicts, sharded_state_dicts)
from rpo.errors import ConfigError, DataError
from rpo.io import atomic_path, atomic_write_text, read_text, sha256_json
from rpo.train_config import RESUME_FREE_KEYS

STATE = "state.pt"  # the unsharded format
META = "meta.pt"  # the run state inside a sharded folder
DCP_METADATA = ".metadata"  # written by torch.distributed.checkpoint after every rank's shards
_STEP = re.compile(r"step-(\d+)$")
_now = time.monotonic  # the clock of save_every_minutes (tests replace it)


@dataclass
class TrainState:
    """What training changes and a checkpoint restores; the rest of the trainer (data, plan, reference
    cache, embeddings) is rebuilt from the config. A checkpoint adds every rank's RNG states, taken when
    it is saved and set on resume."""

    model: torch.nn.Module  # the wrapped policy; under ppo its value head is a submodule (rpo.ppo)
    optimizer: torch.optim.Optimizer  # over all of the model's parameters, the value head's included
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: int = 0  # optimizer steps taken
    reference_kl: list | None = None  # KTO: per plan micro-batch, its KL sequences' initial log-probs (rpo.kto)


def fingerprint(cfg: dict) -> str:
    return sha256_json({k: v for k, v in cfg.items() if k not in RESUME_FREE_KEYS})


def is_sharded(cfg: dict, env) -> bool:
    return bool(cfg["fsdp"]) and env.active  # FSDP on one rank holds full tensors


class Cadence:
    """Checkpoint every `every` steps and, with `minutes`, also once that long has passed since the
    last save (a step count alone can mean hours between saves at 13B). Rank 0's clock decides for
    everyone: saving is collective, so all ranks must agree on the step."""

    def __init__(self, every: int, minutes: float | None, env, device):
        self.every, self.minutes, self.env, self.device = every, minutes, env, device
        self.last = _now()

    def due(self, step: int) -> bool:
        due = step % self.every == 0
        if self.minutes:
            late = self.env.is_main and _now() - self.last >= self.minutes * 60
            due = all_reduce_sum([float(late)], self.env, self.device)[0] > 0 or due
        if due:
            self.last = _now()
        return due


# -- save ------------------------------------------------------------------------------------------
def save(state: TrainState, cfg: dict, env, device) -> None:
    """Write `state` under cfg["checkpoint_dir"] (every rank calls it: saving is collective)."""
    (_save_sharded if is_sharded(cfg, env) else _save_full)(state, cfg, env, device)


def _run_state(state: TrainState, cfg: dict, env, rng: list) -> dict:
    return {"scheduler": state.scheduler.state_dict(), "step": state.step, "rng": rng,
            "config_sha256": fingerprint(cfg), "world_size": env.world_size, "reference_kl": state.reference_kl}


def _save_full(state: TrainState, cfg: dict, env, device) -> None:
    model_state, optimizer_state = full_state_dicts(state.model, state.optimizer)
    rng = gather_objects(rng_state(), env)  # one state per rank
    if env.is_main:
        with atomic_path(Path(cfg["checkpoint_dir"]) / STATE) as tmp:
            torch.save({"model": model_state, "optimizer": optimizer_state, **_run_state(state, cfg, env, rng)}, tmp)
    barrier(env)


def _save_sharded(state: TrainState, cfg: dict, env, device) -> None:
    import torch.distributed.checkpoint as dcp

    root = Path(cfg["checkpoint_dir"])
    final, tmp = root / f"step-{state.step}", root / f"step-{state.step}.tmp"
    rng = gather_objects(rng_state(), env)
    # Saved already at this step (stop_after_steps on a save_every step); rank 0's view decides for all.
    if all_reduce_sum([float(env.is_main and final.is_dir())], env, device)[0] > 0:
        return
    if env.is_main:  # a deterministic name, so every rank writes into the same folder
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(env)
    model_state, optimizer_state = sharded_state_dicts(state.model, state.optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(tmp))
    if env.is_main:
        torch.save(_run_state(state, cfg, env, rng), tmp / META)
        os.replace(tmp, final)
        for old in root.glob("step-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    barrier(env)


# -- resume ----------------------------------------------------------------------------------------
def latest(root: Path) -> Path | None:
    """The checkpoint to resume from: state.pt or the newest complete step-N folder (None: none)."""
    complete = sorted((p for p in root.glob("step-*") if p.is_dir() and _STEP.search(p.name)),
                      key=lambda p: int(_STEP.search(p.name).group(1)))
    for leftover in sorted(root.glob("step-*.tmp")):
        warnings.warn(f"{leftover}: ignored, a checkpoint save that did not finish (the next save deletes it)")
    if complete and (root / STATE).exists():
        raise ConfigError(f"{root} holds both {STATE} and sharded checkpoints; delete {root} to start over")
    if not complete:
        return root / STATE if (root / STATE).exists() else None
    newest = complete[-1]
    missing = [name for name in (META, DCP_METADATA) if not (newest / name).is_file()]
    if missing:  # a finished save always has both: this folder was damaged after the fact
        raise ConfigError(f"{newest}: incomplete sharded checkpoint (no {', '.join(missing)}); delete {newest} "
                          f"to resume from an older one, or {root} to start over")
    return newest


def resume(state: TrainState, cfg: dict, env) -> bool:
    """Restore `state` (and this rank's RNG states) from the latest checkpoint; False when there is none."""
    root = Path(cfg["checkpoint_dir"])
    found = latest(root)
    if found is None:
        if env.is_main:  # rows of an attempt killed before its first checkpoint
            truncate_metrics(root / "metrics.jsonl", 0)
        return False
    saved = _load_state(found if found.name == STATE else found / META, root)
    if saved["config_sha256"] != fingerprint(cfg):
        raise ConfigError(f"{found} belongs to a run with another config; delete {root} to start over")
    if saved.get("world_size", 1) != env.world_size:  # a step's micro-batches depend on it
        raise ConfigError(f"{found} was written by {saved.get('world_size', 1)} process(es), this run has "
                          f"{env.world_size}; resume with as many or delete {root}")
    try:  # a state that does not fit this run's model must stop it, never half-load
        if found.name == STATE:
            load_full_state_dicts(state.model, state.optimizer, saved["model"], saved["optimizer"])
        else:
            import torch.distributed.checkpoint as dcp

            # The live state dicts give DCP each rank's shard layout; it reads into them in place.
            model_state, optimizer_state = sharded_state_dicts(state.model, state.optimizer)
            shards = {"model": model_state, "optimizer": optimizer_state}
            dcp.load(shards, checkpoint_id=str(found))
            load_sharded_state_dicts(state.model, state.optimizer, shards["model"], shards["optimizer"])
        state.scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"][env.rank])
    except Exception as exc:  # shapes, missing entries, unreadable shards: nothing to resume from
        raise DataError(f"{found}: cannot be resumed ({_reason(exc)}); delete {root} to start this run over") from exc
    state.step = saved["step"]
    state.reference_kl = saved.get("reference_kl")
    if env.is_main:
        truncate_metrics(root / "metrics.jsonl", state.step)
    return True


def _reason(exc: Exception) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


def _load_state(path: Path, root: Path) -> dict:
    """The run state of a checkpoint; a file that cannot be read or lacks its keys stops the run (rather
    than starting over, which would silently throw the finished steps away)."""
    try:
        # mmap: ranks share the file's pages instead of each holding a copy of the full state
        state = torch.load(path, weights_only=False, mmap=True, map_location="cpu")
    except Exception as exc:  # truncated zip, not a torch file, ...
        raise DataError(f"{path}: corrupt checkpoint, cannot be read ({_reason(exc)}); delete {root} to start "
                        "this run over") from exc
    keys = ("config_sha256", "step", "scheduler", "rng") + (("model", "optimizer") if path.name == STATE else ())
    missing = [key for key in keys if not isinstance(state, dict) or key not in state]
    if missing:
        raise DataError(f"{path}: not a complete checkpoint (no {', '.join(missing)}); delete {root} to start "
                        "this run over")
    return state


def rng_state() -> dict:
    cuda = {"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(), **cuda}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows written after the checkpoint, so a resumed run logs each step once. A last line
    without its newline is a row cut off by the kill (after the checkpoint's step, so dropped too)."""
    if not path.exists():
        return
    text = read_text(path)
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}, line {number}: not a metrics row; delete {path.parent} to start this run "
                            "over") from None
        if row_step <= step:
            rows.append(line)
    atomic_write_text(path, "".join(r + "\n" for r in rows))
