"""The one precision rule: `training.dtype`, `training.fp32_master_weights` and a device give the weight
dtype and the autocast dtype.

Training, the reference cache and generation all resolve their precision here, so reference log-probs
and samples are computed in the numerics the policy trains in (the cache records it, rpo.refcache).

    dtype     fp32_master_weights  CUDA device with bf16         CUDA without bf16         CPU
    auto      (not read)           fp32 weights + bf16 autocast  fp32 weights, no autocast fp32 weights, no autocast
    bfloat16  false (default)      bf16 weights, no autocast     fp32 weights, no autocast bf16 weights, no autocast
    bfloat16  true                 fp32 weights + bf16 autocast  fp32 weights, no autocast fp32 weights + bf16 autocast
    float32   (not read)           fp32 weights, no autocast     (the same)                (the same)
    float64   (not read)           fp64 weights, no autocast     (the same)                (the same)  (exactness tests)

Pure bf16 (bfloat16, fp32_master_weights false) is the public code's numerics (config/model/
base_model.yaml: policy_dtype and reference_dtype bfloat16, no FSDP mixed precision): weights, gradients
and optimizer state in bf16, no fp32 master copy, and log-probs computed and summed in bf16
(rpo.scoring). At lr 5e-7 most RMSprop updates are below bf16's resolution for the weight they update
(benchmarks/bf16_update_share.py). fp32_master_weights true is our improvement: fp32 weights and
optimizer state, bf16 only in the matmuls through autocast, so small updates accumulate. On CPU both
run (the tests train tiny models in pure bf16); the CPU rehearsal keeps fp32 master weights, the path its
time was measured on (workflow/rehearsal.yaml).

    precision = resolve_precision(cfg["dtype"], device, cfg["fp32_master_weights"])
    model, tokenizer = load_model(path, dtype=cfg["dtype"], device=device,
                                  fp32_master_weights=cfg["fp32_master_weights"])   # precision.weights
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
        """Context manager: autocast to autocast_dtype on `device`, or nothing at all when there is none.

        Without autocast's weight cache (cache_enabled=False): with it, the first bf16 cast of every fp32
        weight is kept until the region ends, i.e. a bf16 copy of the whole model (under FSDP2 of every
        unsharded block) held from forward to backward, past FSDP's reshard and past activation
        checkpointing's frees. Without it each use casts again: the same bits (tests/test_checkpointing.py),
        at the cost of a cast per use (benchmarks/bench_autocast_cache.py). Chosen over FSDP2's
        MixedPrecisionPolicy(param_dtype=bf16), which would change the numbers of FSDP runs only (bf16
        parameters, not autocast's per-op dtypes) and not those of one-GPU runs, the reference cache and
        generation, which share this rule."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=self.autocast_dtype, cache_enabled=False)


def for_inference(model: torch.nn.Module, precision: Precision) -> torch.nn.Module:
    """`model` (weights in precision.weights) made ready for inference only (reference cache, generation):
    no parameter requires a gradient, and under autocast every nn.Linear weight not shared with the input
    embedding is stored in the autocast dtype.

    Exact: autocast runs linear in its lower dtype by casting the fp32 weight on each call, and a weight
    cast once beforehand has the same bits (round to nearest either way), while embeddings and norms, which
    autocast leaves in fp32, keep fp32 weights. For fp32 master weights this halves the model's inference
    memory (13B: 52 GB of weights to 26 GB plus the fp32 embeddings and norms); pure bf16 and fp32 are
    unchanged. A tied head (input embedding = lm_head) stays fp32: the embedding lookup reads it in fp32."""
    model.requires_grad_(False)
    if precision.autocast_dtype is None:
        return model
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    shared = embedding.weight if embedding is not None else None
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight is not shared:
            module.to(precision.autocast_dtype)
    return model


def resolve_precision(dtype: str | None, device, fp32_master_weights: bool = False) -> Precision:
    """The table above; dtype None means auto. `device`: a torch.device or its name ("cuda:0", "cpu")."""
    dtype = "auto" if dtype is None else dtype
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ConfigError(f"dtype: must be one of {', '.join(DTYPES)} (training.dtype, --dtype), got {dtype!r}")
    if not isinstance(fp32_master_weights, bool):
        raise ConfigError(f"fp32_master_weights: must be true or false (training.fp32_master_weights, "
                          f"--fp32-master-weights), got {fp32_master_weights!r}")
    if dtype == "float64":
        return Precision(torch.float64)
    kind = torch.device(device).type
    bf16 = kind == "cpu" or (kind == "cuda" and torch.cuda.is_bf16_supported())
    if dtype == "bfloat16" and bf16:
        return Precision(torch.float32, torch.bfloat16) if fp32_master_weights else Precision(torch.bfloat16)
    if dtype == "auto" and kind == "cuda" and bf16:
        return Precision(torch.float32, torch.bfloat16)
    return Precision(torch.float32)
