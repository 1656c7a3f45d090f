"""KTO's KL term in the trainer: the mismatched (x, y') sequences of every micro-batch, their
reference log-probs, and the z0 of a step.

A micro-batch's KL sequences pair each item's prompt with the NEXT item's response in its global
batch (rpo.data.batching.item_micro_batches). They depend on the run's plan, so the shared reference
cache (one per data and model) cannot hold their reference log-probs. The trainer's initial weights
ARE the reference model (load_reference_cache refuses a cache of another model than cfg["model"]), so
before the first step the trainer scores every micro-batch's KL sequences itself, micro-batch by
micro-batch as training will score them: at step 0 policy and reference agree bit for bit (z0 = 0).
Those log-probs travel in the checkpoint, so a resumed run uses the ones of the initial weights.

z0 as the public KTOTrainer.loss (trainers.py) has it: each rank's estimate mean(policy - reference)
over its micro-batch, detached and clamped at 0, then averaged over ranks (all_reduce / world_size)
and clamped again. With gradient accumulation each micro-batch stands in for a rank (its slice of the
step's global batch), so every micro-batch of the step is scored first and all share one z0.
"""
from __future__ import annotations

import torch

from rpo.data.batching import item_micro_batches
from rpo.data.tokenize import tokenize_element
from rpo.distributed import all_reduce_sum, gather_in_order, unwrap
from rpo.errors import ConfigError
from rpo.losses import kto_z0


def kl_examples(tokenizer, items, partners, *, max_length: int, max_prompt_length: int, truncation: str) -> list[dict]:
    """One tokenised KL sequence per item, as the public UnpairedPreferenceDataLoader builds it: the
    item's `prompt_text` (as cut and decoded for its own response) with its partner's `target_text` (its
    response as cut and decoded, with " " + EOS text already appended), tokenised once more."""
    def element(prompt, response):
        return tokenize_element(tokenizer, prompt, response, max_length=max_length,
                                max_prompt_length=max_prompt_length, truncation=truncation)

    return [element(element(item.prompt, item.response).prompt_text,
                    element(partner.prompt, partner.response).response_text).example
            for item, partner in zip(items, partners)]


def kl_sequences(trainer, n_micro_batches: int) -> list[list[dict]]:
    """The KL sequences of the plan's first `n_micro_batches` micro-batches (same order as trainer.plan)."""
    cfg = trainer.cfg
    per_step = cfg["gradient_accumulation_steps"] * trainer.env.world_size
    batches = item_micro_batches(trainer.records, cfg["batch_size"], per_step, cfg["epochs"], cfg["seed"])
    return [kl_examples(trainer.tokenizer, items, partners, max_length=cfg["max_length"],
                        max_prompt_length=cfg["max_prompt_length"], truncation=trainer.truncation)
            for items, partners in batches[:n_micro_batches]]


def local_plan_indices(step: int, accum: int, env) -> range:
    """Plan indices of this rank's micro-batches of `step` (rpo.distributed.local_micro_batches' layout)."""
    start = (step * env.world_size + env.rank) * accum
    return range(start, start + accum)


@torch.no_grad()
def policy_kl_logps(trainer, index: int) -> torch.Tensor:
    """Summed log-probs of plan micro-batch `index`'s KL sequences under the current weights (no graph:
    z0 is detached)."""
    return trainer.forward_logps(trainer.kl_sequences[index], unwrap(trainer.state.model))[0]


def prepare_reference(trainer, resumed: bool) -> None:
    """trainer.state.reference_kl: per plan micro-batch, its KL sequences' log-probs under the initial weights.

    A fresh run computes them (each rank the micro-batches it trains on, then every rank gets all, so
    rank 0 can checkpoint them); a resumed run has them from its checkpoint (rpo.checkpoint)."""
    if resumed:
        if trainer.state.reference_kl is None:
            raise ConfigError(f"{trainer.cfg['checkpoint_dir']}: the checkpoint holds no reference KL log-probs "
                              "(written before KTO kept them); delete it to start this run over")
        return
    env, accum = trainer.env, trainer.cfg["gradient_accumulation_steps"]
    mine = {m: policy_kl_logps(trainer, m).cpu() for step in range(trainer.total_steps)
            for m in local_plan_indices(step, accum, env)}
    trainer.state.reference_kl = gather_in_order(mine, trainer.total_steps * accum * env.world_size, env)


def mean_over_ranks(estimates: list[torch.Tensor], env, device) -> float:
    """The mean of every rank's estimates (each already clamped), clamped at 0 as the public code does."""
    total, count = all_reduce_sum([float(sum(float(e) for e in estimates)), float(len(estimates))], env, device)
    return max(total / count, 0.0)


def step_z0(trainer) -> float:
    """z0 of the current step: every local micro-batch's estimate, averaged over all of the step's."""
    state = trainer.state
    if state.reference_kl is None:  # a step taken outside fit() (tests): only the first may prepare them
        if state.step != 0:
            raise RuntimeError("KTO's reference KL log-probs must come from the initial weights: call "
                               "rpo.kto.prepare_reference before the first step")
        prepare_reference(trainer, resumed=False)
    estimates = []
    for m in local_plan_indices(state.step, trainer.cfg["gradient_accumulation_steps"], trainer.env):
        policy = policy_kl_logps(trainer, m)
        estimates.append(kto_z0(policy, state.reference_kl[m].to(policy)))
    return mean_over_ranks(estimates, trainer.env, trainer.device)
