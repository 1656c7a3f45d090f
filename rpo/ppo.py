"""The trainer's pieces for offline PPO (loss `ppo`, rpo.losses): the policy's value head, the cached
per-token reference log-probs of a micro-batch, and one micro-batch's forward and loss.

The value head is the public code's (HALOs models.py ValueHead): an fp32 MLP Linear(d, d), ReLU,
Linear(d, d), ReLU, Linear(d, 1) on the last hidden state DETACHED and cast to fp32, so no critic
gradient reaches the language model (its dropouts have p = 0 there: disable_dropout, so none here).
It is a submodule `v_head` of the policy fed by a forward hook: it runs inside the model's forward,
so DDP and FSDP (which wrap the whole model after the head is attached) treat it like any other
parameter, the optimizer trains it and checkpoints carry it; its gradient is clipped on its own
(training key v_head_max_grad_norm, `parameter_groups`). The saved model drops it
(`without_value_head`): the output folder has the keys of any run.
"""
from __future__ import annotations

import torch

from rpo.errors import CacheMismatchError

VALUE_HEAD = "v_head"


class ValueHead(torch.nn.Sequential):
    own_fsdp_unit = True  # fp32 beside a model of another dtype: FSDP shards it as a group of its own

    def __init__(self, hidden_size: int, device=None):
        d = hidden_size
        super().__init__(torch.nn.Linear(d, d, device=device), torch.nn.ReLU(), torch.nn.Linear(d, d, device=device),
                         torch.nn.ReLU(), torch.nn.Linear(d, 1, device=device))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # fp32 even under the policy's autocast: the public head runs in fp32 beside a bf16 model
        with torch.autocast(hidden.device.type, enabled=False):
            return super().forward(hidden.detach().float()).squeeze(-1)


def _value_hook(module, args, output):
    # Only forwards that ask for hidden states (rpo.scoring.score with_values) get values. A key of
    # the output, not a bare attribute, so FSDP sees the tensor among the outputs it hooks for backward.
    if getattr(output, "hidden_states", None) is not None:
        output["value_estimates"] = module.v_head(output.hidden_states[-1])
    return output


def attach_value_head(model: torch.nn.Module) -> torch.nn.Module:
    """Add the value head (fp32, initialised from torch's current RNG, so the seed fixes it) before wrapping."""
    model.add_module(VALUE_HEAD, ValueHead(model.config.hidden_size, device=next(model.parameters()).device))
    model.register_forward_hook(_value_hook)
    return model


def parameter_groups(model: torch.nn.Module) -> tuple[list, list]:
    """(the language model's parameters, the value head's): each group's gradient is clipped on its own,
    as the public PPOTrainer.clip_gradient does (max_grad_norm, v_head_max_grad_norm)."""
    head = getattr(model, VALUE_HEAD, None)
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    return [p for p in model.parameters() if id(p) not in head_ids], [p for p in model.parameters() if id(p) in head_ids]


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


def micro_batch_loss(loss, scores, reference_cache: dict, chosen_idx: list[int], rejected_idx: list[int],
                     hyperparameters: dict):
    """The ppo `loss` of one micro-batch from the policy's `scores` of it (log-probs and values per token:
    rpo.scoring.score with_values); the trainer's micro_batch_loss contract: (loss output, summed chosen
    and rejected log-probs, attended tokens)."""
    logps, mask = scores.as_matrix()
    values = scores.as_matrix(scores.values)[0]
    m = len(chosen_idx)
    rewards = torch.tensor([1.0] * m + [-1.0] * len(rejected_idx), dtype=logps.dtype, device=logps.device)
    reference = reference_matrix(reference_cache, chosen_idx, rejected_idx, mask).to(logps.dtype)
    out = loss(logps, reference_token_logps=reference, response_mask=mask, values=values.to(logps.dtype),
               episode_rewards=rewards, **hyperparameters)
    summed = scores.sums
    return out, summed[:m], summed[m:], scores.n_tokens
