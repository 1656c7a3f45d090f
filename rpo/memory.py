"""Activation checkpointing (training key `activation_checkpointing`): each decoder block keeps only its input
in forward and recomputes the rest in backward, the public code's `activation_checkpointing: true`.

transformers' own per-block checkpointing (`activation_checkpointing_enable`, torch.utils.checkpoint with
use_reentrant=False) rather than torch's checkpoint_wrapper:
- it wraps each block's `forward`, not the module, so parameter names, state dicts, checkpoints
  (rpo.checkpoint) and the saved model keep the plain HF names (checkpoint_wrapper would insert
  `_checkpoint_wrapped_module.` into every block's keys);
- it checkpoints `forward` inside the module call, so FSDP2's unshard/reshard hooks (fully_shard per block,
  rpo.distributed.wrap_model) stay outside the checkpoint and do not run again in the recompute;
- it runs only in training mode with gradients on, so the reference cache and generation are untouched.
"""
from __future__ import annotations

import contextlib
from functools import partial

import torch

from rpo.errors import ConfigError


@contextlib.contextmanager
def _attention_as(config, implementation: str):
    current = config._attn_implementation
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = current


def _recompute_with_forwards_attention(config):
    """checkpoint's context_fn: the recompute (in backward, outside the forward's context) runs the attention
    implementation the forward ran. rpo.scoring switches it only for the duration of a packed forward
    (segment_sdpa); recomputed with plain sdpa, a block would attend across the packed sequences."""
    return contextlib.nullcontext(), _attention_as(config, config._attn_implementation)


def enable_activation_checkpointing(model: torch.nn.Module) -> torch.nn.Module:
    """Checkpoint every decoder block of the transformers `model` (before any FSDP/DDP wrapping)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"training config key 'activation_checkpointing': {type(model).__name__} does not "
                          "support per-block checkpointing in transformers; set it to false")
    kwargs = {"use_reentrant": False, "context_fn": partial(_recompute_with_forwards_attention, model.config)}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the older name is deprecated
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def checkpointed_blocks(model: torch.nn.Module) -> int:
    """How many decoder blocks of `model` checkpoint their forward (0 when activation checkpointing is off)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return sum(isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing for m in model.modules())
