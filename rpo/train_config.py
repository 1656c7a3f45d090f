"""The training config of `python -m rpo.train`: its keys, their defaults, and the checks on them.

The defaults of the trainer live here and only here; a loss's hyperparameters and their defaults
live in its registry entry (rpo.losses.REGISTRY), and a run carries only its own loss's.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from rpo.diagnostics import matched_beta
from rpo.errors import ConfigError
from rpo.losses import get_loss, hyperparameter_names
from rpo.models import check_attn_implementation
from rpo.optim import OPTIMIZERS, check_scheduler
from rpo.precision import DTYPES
from rpo.tracking import check_report_to

DEFAULTS = {
    "model": None, "data": None, "out": None, "method": None,  # required
    "reference_cache": None, "embeddings": None, "embedder": None, "checkpoint_dir": None,
    "batch_size": 8, "gradient_accumulation_steps": 1, "epochs": 1, "max_steps": None,
    "optimizer": "rmsprop", "lr": 5e-7, "weight_decay": 0.0, "scheduler": "linear", "warmup_steps": 150,
    "max_grad_norm": 10.0, "v_head_max_grad_norm": 0.1, "max_length": 512, "max_prompt_length": 256, "truncation": None,
    "seed": 1, "save_every": 50, "save_every_minutes": None, "dtype": "auto", "device": None, "threads": None,
    # with dtype bfloat16: fp32 weights and optimizer state + bf16 autocast (ours) instead of pure bf16
    # (the public code's); rpo.precision
    "fp32_master_weights": False,
    "contrast_scope": "micro", "fsdp": False,
    "packing": True,  # one row per micro-batch, attention per sequence (rpo.scoring); false: right-padded
    "activation_checkpointing": False,  # recompute each decoder block in backward (rpo.memory)
    "attn_implementation": "sdpa",  # transformers' attention: sdpa, flash_attention_2 or eager (rpo.models)
    "report_to": [], "logging_dir": None,  # live metrics (rpo.tracking); logging_dir None: {out}.logs
    "stop_after_steps": None,  # stop (resumably) after this many steps of this process: tests, preemption drills
    # a matched-beta control: beta = that run's beta x its mean diagonal weight (rpo.diagnostics.matched_beta)
    "beta_matched_to": None,
    # minutes a collective waits for the slowest rank (None: torch's, 10 for NCCL); rpo.distributed.init_distributed
    "dist_timeout_minutes": None,
    # the run's identity as the pipeline names it ({"name": ..., its settings}: rpo.pipeline.Run.record), which
    # the rule passes; recorded in run.json, where the report reads it. The trainer itself never reads it.
    "run": None,
}
REQUIRED = ("model", "data", "out", "method")
# Keys that may change between a run and its resumption without invalidating the checkpoint.
# activation_checkpointing changes memory, not numbers: a run that ran out of memory resumes with it on.
# run: a label, which changes no number.
RESUME_FREE_KEYS = ("activation_checkpointing", "save_every", "save_every_minutes", "threads", "device",
                    "stop_after_steps", "checkpoint_dir", "report_to", "logging_dir", "dist_timeout_minutes", "run")


def resolve_config(config: dict) -> dict:
    """Defaults filled in and every key checked; the loss's hyperparameters only, with its defaults."""
    hyper = set(hyperparameter_names())
    unknown = sorted(set(config) - set(DEFAULTS) - hyper)
    if unknown:
        raise ConfigError(f"unknown training config key(s): {', '.join(unknown)}; known: {', '.join(DEFAULTS)}, "
                          f"and the losses' hyperparameters {', '.join(sorted(hyper))}")
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k not in hyper}}
    for key in REQUIRED:
        if not cfg[key]:
            raise ConfigError(f"training config key '{key}' is required")
    try:
        spec = get_loss(cfg["method"])
    except ConfigError as exc:
        raise ConfigError(f"training config key 'method': {exc}") from None
    foreign = sorted(k for k in config if k in hyper and k not in spec.hyperparameters)
    if foreign:
        takes = ", ".join(spec.hyperparameters) or "no hyperparameters"
        raise ConfigError(f"training config key(s) {', '.join(foreign)}: not hyperparameters of loss "
                          f"{spec.name!r} (it takes {takes})")
    given = {k: _as_number(config.get(k)) for k in spec.hyperparameters}
    if cfg["beta_matched_to"]:
        if "beta" not in spec.hyperparameters or given["beta"] is not None:
            raise ConfigError("training config key 'beta_matched_to' takes beta from another run: it needs a loss "
                              f"with a beta, given no beta of its own (method {spec.name!r}, beta {given.get('beta')!r})")
        cfg["matched_beta"] = matched_beta(cfg["beta_matched_to"])
        given["beta"] = cfg["matched_beta"]["beta"]
    cfg.update(spec.resolve_hyperparameters(given))
    for key in ("lr", "weight_decay", "max_grad_norm", "v_head_max_grad_norm"):
        cfg[key] = _as_number(cfg[key])
    for key in ("batch_size", "gradient_accumulation_steps", "epochs", "save_every"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"training config key '{key}' must be a positive integer, got {cfg[key]!r}")
    for key, null in (("save_every_minutes", "by steps only"), ("dist_timeout_minutes", "torch's default")):
        minutes = cfg[key] = _as_number(cfg[key])
        if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0):
            raise ConfigError(f"training config key '{key}' must be > 0 (or null: {null}), got {minutes!r}")
    for key in ("lr", "v_head_max_grad_norm", *[k for k in ("beta", "tau") if k in spec.hyperparameters]):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], (int, float)) or cfg[key] <= 0:
            raise ConfigError(f"training config key '{key}' must be > 0, got {cfg[key]!r}")
    if cfg["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"training config key 'optimizer' must be one of {', '.join(OPTIMIZERS)}, "
                          f"got {cfg['optimizer']!r}")
    check_scheduler(cfg["scheduler"])
    if isinstance(cfg["warmup_steps"], bool) or not isinstance(cfg["warmup_steps"], int) or cfg["warmup_steps"] < 0:
        raise ConfigError(f"training config key 'warmup_steps' must be an integer >= 0, got {cfg['warmup_steps']!r}")
    if spec.needs & {"reference", "reference_tokens"} and not cfg["reference_cache"]:
        raise ConfigError(f"training config key 'reference_cache' is required for method {cfg['method']}")
    if "embeddings" in spec.needs and not cfg["embeddings"]:
        raise ConfigError(f"training config key 'embeddings' is required for method {cfg['method']}")
    scope = cfg["contrast_scope"]
    if scope not in ("micro", "global"):
        raise ConfigError(f"training config key 'contrast_scope' must be micro or global, got {scope!r}")
    if scope == "global" and spec.batching == "sft":
        raise ConfigError("training config key 'contrast_scope': global has no meaning for sft (no contrast "
                          "matrix; its token mean is per micro-batch); use micro")
    if scope == "global" and "values" in spec.needs:
        raise ConfigError(f"training config key 'contrast_scope': global has no meaning for {spec.name} (no "
                          "contrast matrix; its advantages are whitened per micro-batch); use micro")
    if cfg["dtype"] not in DTYPES:
        raise ConfigError(f"training config key 'dtype' must be one of {', '.join(DTYPES)}, got {cfg['dtype']!r}")
    check_attn_implementation(cfg["attn_implementation"])
    for key in ("fsdp", "packing", "fp32_master_weights", "activation_checkpointing"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"training config key '{key}' must be true or false, got {cfg[key]!r}")
    if cfg["run"] is not None and not (isinstance(cfg["run"], dict) and isinstance(cfg["run"].get("name"), str)):
        raise ConfigError(f"training config key 'run' must be a mapping with the run's name (rpo.pipeline.Run.record), "
                          f"got {cfg['run']!r}")
    cfg["checkpoint_dir"] = cfg["checkpoint_dir"] or str(cfg["out"]).rstrip("/") + ".ckpt"
    cfg["report_to"] = check_report_to(cfg["report_to"])
    # Beside the output folder, not in it or in the checkpoint: both are replaced or removed at the end.
    cfg["logging_dir"] = cfg["logging_dir"] or str(cfg["out"]).rstrip("/") + ".logs"
    return cfg


def load_config(path, overrides: list[str]) -> dict:
    cfg = yaml.safe_load(Path(path).read_text()) if path else {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: a training config must be a mapping")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like key=value")
        cfg[key] = yaml.safe_load(value)
    return cfg


def _as_number(value):
    """YAML 1.1 reads 5e-7 (no dot) as a string; accept it as the number it is meant to be."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value
