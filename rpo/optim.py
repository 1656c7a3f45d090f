"""The optimizer and the learning-rate schedule of a run (training keys optimizer, lr, weight_decay,
scheduler, warmup_steps).

    optimizer = make_optimizer(model.parameters(), cfg)
    scheduler = make_scheduler(optimizer, cfg, total_steps)

`scheduler: linear_warmup_constant` is the public code's LambdaLR (trainers.py:351): step k (0-based)
runs at lr x min(1, (k + 1) / (warmup_steps + 1)), so the first step already moves at lr/(warmup+1), and
the rate stays at lr after the warm-up (no decay). Every other name is a transformers schedule
(`get_scheduler`; `linear`, the trainer's default, warms up from 0 and then decays to 0).
The optimizer holds its state in the parameters' dtype: bf16 parameters (pure bf16, rpo.precision) get
bf16 RMSprop/AdamW state, as the public code's.
"""
from __future__ import annotations

import torch
from transformers import get_scheduler

from rpo.errors import ConfigError

PUBLIC_SCHEDULER = "linear_warmup_constant"
# transformers schedules that need nothing beyond warm-up and total steps
SCHEDULERS = (PUBLIC_SCHEDULER, "linear", "cosine", "constant", "constant_with_warmup", "polynomial")
OPTIMIZERS = {"rmsprop": torch.optim.RMSprop, "adamw": torch.optim.AdamW}


def warmup_constant_factor(step: int, warmup_steps: int) -> float:
    """The public code's lr multiplier of (0-based) optimizer step `step`."""
    return min(1.0, (step + 1) / (warmup_steps + 1))


def check_scheduler(name) -> str:
    if name not in SCHEDULERS:
        raise ConfigError(f"training config key 'scheduler' must be one of {', '.join(SCHEDULERS)}, got {name!r}")
    return name


def make_optimizer(parameters, cfg: dict) -> torch.optim.Optimizer:
    """torch defaults besides lr and weight_decay (the public code: RMSprop, lr only)."""
    return OPTIMIZERS[cfg["optimizer"]](parameters, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def make_scheduler(optimizer, cfg: dict, total_steps: int):
    name, warmup = check_scheduler(cfg["scheduler"]), cfg["warmup_steps"]
    if name == PUBLIC_SCHEDULER:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_constant_factor(step, warmup))
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def current_lr(optimizer) -> float:
    """The lr the next optimizer.step() applies (read it before scheduler.step(): get_last_lr() after
    it is the following step's)."""
    return optimizer.param_groups[0]["lr"]
