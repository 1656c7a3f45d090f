"""The trainer's pieces for offline PPO (loss `ppo`, rpo.losses): the policy's value head, the cached
per-token reference log-probs of a micro-batch, and one micro-batch's forward and loss.

The value head is a Linear(d_model, 1) submodule `v_head` of the policy, fed the last hidden state by
a forward hook: it runs inside the model's forward, so DDP and FSDP (which wrap the whole model after
the head is attached) treat it like any other parameter, the optimizer trains it and checkpoints
carry it. The saved model drops it (`without_value_head`): the output folder has the keys of any run.
"""
from __future__ import annotations

import torch

from rpo.errors import CacheMismatchError

VALUE_HEAD = "v_head"


def _value_hook(module, args, output):
    # Only forwards that ask for hidden states (rpo.scoring.score with_values) get values. A key of
    # the output, not a bare attribute, so FSDP sees the tensor among the outputs it hooks for backward.
    if getattr(output, "hidden_states", None) is not None:
        output["value_estimates"] = module.v_head(output.hidden_states[-1]).squeeze(-1)
    return output


def attach_value_head(model: torch.nn.Module) -> torch.nn.Module:
    """Add the value head (initialised from torch's current RNG, so the seed fixes it) before wrapping."""
    parameter = next(model.parameters())
    model.add_module(VALUE_HEAD, torch.nn.Linear(model.config.hidden_size, 1, dtype=parameter.dtype,
                                                 device=parameter.device))
    model.register_forward_hook(_value_hook)
    return model


def without_value_head(model: torch.nn.Module, state_dict: dict | None) -> dict | None:
    """The state to save_pretrained: `state_dict` (None: the model's own) less the value head, if any."""
    if not hasattr(model, VALUE_HEAD):
        return state_dict
    return {k: v for k, v in (state_dict or model.state_dict()).items() if not k.startswith(VALUE_HEAD + ".")}


def reference_matrix(cache: dict, chosen_idx, rejected_idx, mask: torch.Tensor) -> torch.Tensor:
    """The reference's per-token log-probs laid on the micro-batch's response mask [B, K] (0 off it)."""
    if "tokens" not in cache:
        raise CacheMismatchError("the reference cache has no per-token log-probs (written before ppo existed); "
                                 "recompute it with `python -m rpo.refcache`")
    tokens = cache["tokens"]
    rows = [tokens["chosen"][i] for i in chosen_idx] + [tokens["rejected"][j] for j in rejected_idx]
    if [len(r) for r in rows] != mask.sum(1).tolist():
        raise CacheMismatchError("per-token reference log-probs do not match the response tokens of this run's "
                                 "tokenisation; recompute the cache with `python -m rpo.refcache`")
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    out[mask] = torch.cat(rows).to(mask.device)  # boolean indexing fills row by row, token by token
    return out


def micro_batch_loss(trainer, chosen_idx: list[int], rejected_idx: list[int]):
    """One forward of the policy (log-probs and values per token), the ppo loss on it; the trainer's
    micro_batch_loss contract: (loss output, summed chosen and rejected log-probs, attended tokens)."""
    scores = trainer.score(trainer.examples(chosen_idx, rejected_idx), with_values=True)
    logps, mask = scores.as_matrix()
    values = scores.as_matrix(scores.values)[0]
    m = len(chosen_idx)
    rewards = torch.tensor([1.0] * m + [-1.0] * len(rejected_idx), dtype=logps.dtype, device=logps.device)
    reference = reference_matrix(trainer.ref, chosen_idx, rejected_idx, mask).to(logps.dtype)
    out = trainer.loss(logps, reference_token_logps=reference, response_mask=mask, values=values.to(logps.dtype),
                       episode_rewards=rewards, **{k: trainer.cfg[k] for k in trainer.loss.hyperparameters})
    summed = scores.sums
    return out, summed[:m], summed[m:], scores.n_tokens
