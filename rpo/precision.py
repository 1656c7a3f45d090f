"""The one precision rule: a `training.dtype` name and a device give the weight dtype and the autocast dtype.

Training, the reference cache and generation all resolve their precision here, so reference log-probs
and samples are computed in the numerics the policy trains in (the cache records it, rpo.refcache).

    dtype       CUDA device with bf16          CUDA without bf16           CPU
    auto        fp32 weights + bf16 autocast   fp32 weights, no autocast   fp32 weights, no autocast
    bfloat16    fp32 weights + bf16 autocast   fp32 weights, no autocast   fp32 weights + bf16 autocast
    float32     fp32 weights, no autocast      (the same)                  (the same)
    float64     fp64 weights, no autocast      (the same)                  (the same)   (exactness tests)

"fp32 master weights": bfloat16 never means bf16 weights, only bf16 matmuls through autocast.
An explicit bfloat16 autocasts on CPU too, so a CPU rehearsal of a bf16 profile runs the paper's
numerics path (workflow/rehearsal.yaml; 1.8x faster than fp32 on an AVX512-BF16 CPU,
benchmarks/bench_cpu_bf16.py); auto keeps CPU runs in fp32 (the embedded default).

    precision = resolve_precision(cfg["dtype"], device)
    model, tokenizer = load_model(path, dtype=cfg["dtype"], device=device)   # precision.weights
    with precision.autocast(device):
        logits = model(...)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from rpo.errors import ConfigError

DTYPES = ("auto", "bfloat16", "float32", "float64")


def _name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def describe(precision: dict | None) -> str:
    """'float32 weights + bfloat16 autocast' for an as_dict() (as a cache's meta stores it)."""
    if not precision:
        return "an unrecorded precision"
    text = f"{precision.get('weights')} weights"
    return text + (f" + {precision['autocast']} autocast" if precision.get("autocast") else ", no autocast")


@dataclass(frozen=True)
class Precision:
    weights: torch.dtype
    autocast_dtype: torch.dtype | None = None

    def as_dict(self) -> dict:
        return {"weights": _name(self.weights), "autocast": _name(self.autocast_dtype)}

    @property
    def name(self) -> str:
        return describe(self.as_dict())

    def autocast(self, device):
        """Context manager: autocast to autocast_dtype on `device`, or nothing at all when there is none."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=self.autocast_dtype)


def resolve_precision(dtype: str | None, device) -> Precision:
    """The table above; dtype None means auto. `device`: a torch.device or its name ("cuda:0", "cpu")."""
    dtype = "auto" if dtype is None else dtype
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ConfigError(f"dtype: must be one of {', '.join(DTYPES)} (training.dtype, --dtype), got {dtype!r}")
    if dtype == "float64":
        return Precision(torch.float64)
    kind = torch.device(device).type
    if dtype in ("auto", "bfloat16") and kind == "cuda" and torch.cuda.is_bf16_supported():
        return Precision(torch.float32, torch.bfloat16)
    if dtype == "bfloat16" and kind == "cpu":
        return Precision(torch.float32, torch.bfloat16)
    return Precision(torch.float32)
