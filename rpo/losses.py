"""Every loss of the paper as a pure function of summed response log-probs (see shared/paper.md).

Inputs are 1-D tensors: M chosen sequences and N rejected sequences. For paired losses M == N and
row i of both sides belongs to prompt i. Nothing here touches a model, so each loss is testable on
hand-made tensors, and the trainer can evaluate any of them on log-probs gathered from anywhere
(one micro-batch, or a whole global batch across ranks).

    from rpo.losses import get_loss
    out = get_loss("rpo-paired")(pc, pr, rc, rr, chosen_prompt_embeddings=E_w,
                                 rejected_prompt_embeddings=E_l, beta=0.1, tau=0.5)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from rpo.errors import ConfigError


@dataclass
class LossOutput:
    loss: Tensor  # scalar, differentiable w.r.t. the policy log-probs
    chosen_rewards: Tensor  # beta * chosen log-ratios, detached
    rejected_rewards: Tensor  # beta * rejected log-ratios, detached
    weights: Tensor | None = None  # the M x N contrast weights w_ij, where the loss uses them
    metrics: dict | None = None  # extra detached scalars the trainer logs (ppo: PPO_METRICS)
    # the argument of each contrast's link function, detached (beta * S_ii for DPO, beta * w_ij * S_ij for
    # RPO; IPO: beta * S_ii, its squared loss has no sigmoid): where on -log sigmoid training sits (rpo.diagnostics)
    logits: Tensor | None = None


def rpo_weights(chosen_embeddings: Tensor, rejected_embeddings: Tensor, tau: float) -> Tensor:
    """w_ij = softmax_j(-(1 - cos(e_i, e'_j)) / tau): a constant, no gradient flows through it.

    Computed in float64 (a named deviation: the public code casts the embeddings to the bf16 policy dtype first)."""
    with torch.no_grad():
        e_w = F.normalize(chosen_embeddings.double(), dim=-1)
        e_l = F.normalize(rejected_embeddings.double(), dim=-1)
        distance = 1.0 - e_w @ e_l.T
        return torch.softmax(-distance / tau, dim=1)


def _check(pc, pr, rc, rr, paired: bool) -> None:
    for name, t in (("policy_chosen_logps", pc), ("policy_rejected_logps", pr)):
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D (one summed log-prob per sequence), got shape {tuple(t.shape)}")
    if rc is None or rr is None:
        raise ValueError("this loss needs reference_chosen_logps and reference_rejected_logps")
    if rc.shape != pc.shape or rr.shape != pr.shape:
        raise ValueError(
            f"reference log-probs {tuple(rc.shape)}/{tuple(rr.shape)} do not match policy "
            f"{tuple(pc.shape)}/{tuple(pr.shape)}"
        )
    if paired and pc.shape != pr.shape:
        raise ValueError(f"a paired loss needs as many chosen as rejected items, got {pc.numel()} and {pr.numel()}")


def _rewards(pc, pr, rc, rr, beta):
    chosen, rejected = pc - rc, pr - rr
    return chosen, rejected, (beta * chosen).detach(), (beta * rejected).detach()


def _no_loss(pc: Tensor, pr: Tensor) -> Tensor:
    # Zero that stays in the graph, so backward() works on a batch that contributes nothing.
    return pc.sum() * 0.0 + pr.sum() * 0.0


SFT_NORMALIZATIONS = ("token", "sequence")


def sft(pc, pr=None, *, chosen_lengths=None, normalization="token") -> LossOutput:
    """NLL of the chosen responses (pc: each sequence's summed token log-prob).

    normalization "token": the mean token NLL, -sum(logps) / sum(response tokens);
    "sequence": each sequence's summed NLL, averaged over sequences (the public code, trainers.py:559)."""
    if normalization not in SFT_NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(SFT_NORMALIZATIONS)}, got {normalization!r}")
    if normalization == "sequence":
        loss = -pc.mean() if pc.numel() else _no_loss(pc, pc)
    else:
        if chosen_lengths is None:
            raise ValueError("sft needs chosen_lengths (the number of response tokens of each sequence)")
        loss = -pc.sum() / chosen_lengths.sum().clamp(min=1).to(pc.dtype)
    empty = pc.new_zeros(0)
    return LossOutput(loss, empty, empty)


def dpo(pc, pr, rc, rr, *, beta) -> LossOutput:
    _check(pc, pr, rc, rr, paired=True)
    chosen, rejected, cr, rj = _rewards(pc, pr, rc, rr, beta)
    logits = beta * (chosen - rejected)
    return LossOutput(-F.logsigmoid(logits).mean(), cr, rj, logits=logits.detach())


def cdpo(pc, pr, rc, rr, *, beta, epsilon) -> LossOutput:
    """Conservative DPO: labels flipped with probability epsilon,
    (1 - eps) * -log sigmoid(beta * S_ii) + eps * -log sigmoid(-beta * S_ii), mean over pairs."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    _check(pc, pr, rc, rr, paired=True)
    chosen, rejected, cr, rj = _rewards(pc, pr, rc, rr, beta)
    logits = beta * (chosen - rejected)
    return LossOutput((-(1.0 - epsilon) * F.logsigmoid(logits) - epsilon * F.logsigmoid(-logits)).mean(), cr, rj,
                      logits=logits.detach())


def slic(pc, pr, rc=None, rr=None, *, beta, lambda_coef) -> LossOutput:
    """SLiC-HF: max(0, beta - logp(y_w|x) + logp(y_l|x)) + lambda * -logp(y_w|x), mean over pairs.

    No reference model; the logged "rewards" are the policy's summed log-probs themselves.
    """
    if pc.dim() != 1 or pc.shape != pr.shape:
        raise ValueError(f"slic needs 1-D chosen and rejected log-probs of one shape, got {tuple(pc.shape)} and "
                         f"{tuple(pr.shape)}")
    loss = (torch.clamp(beta - pc + pr, min=0.0) - lambda_coef * pc).mean()
    return LossOutput(loss, pc.detach(), pr.detach())


def ipo(pc, pr, rc, rr, *, beta) -> LossOutput:
    _check(pc, pr, rc, rr, paired=True)
    chosen, rejected, cr, rj = _rewards(pc, pr, rc, rr, beta)
    return LossOutput(((chosen - rejected - 1.0 / (2.0 * beta)) ** 2).mean(), cr, rj,
                      logits=(beta * (chosen - rejected)).detach())


def kto_z0(policy_kl_logps: Tensor, reference_kl_logps: Tensor) -> Tensor:
    """KTO's z0 from one batch of mismatched (x, y') pairs: mean log-ratio, clamped at 0, detached."""
    return (policy_kl_logps - reference_kl_logps).mean().detach().clamp(min=0)


def kto(pc, pr, rc, rr, *, beta, policy_kl_logps=None, reference_kl_logps=None, z0=None) -> LossOutput:
    """KTO with lambda_D = lambda_U = 1. z0 where given (the trainer's, averaged over ranks as the
    public code does, rpo.kto), else `kto_z0` of the mismatched pairs' log-probs."""
    _check(pc, pr, rc, rr, paired=False)
    if z0 is None and (policy_kl_logps is None or reference_kl_logps is None):
        raise ValueError("kto needs z0, or policy_kl_logps and reference_kl_logps (log-probs of "
                         "mismatched (x, y) pairs)")
    chosen, rejected, cr, rj = _rewards(pc, pr, rc, rr, beta)
    z0 = kto_z0(policy_kl_logps, reference_kl_logps) if z0 is None else \
        torch.as_tensor(z0, dtype=pc.dtype, device=pc.device).detach()
    logits = torch.cat([beta * (chosen - z0), beta * (z0 - rejected)])
    loss = (1 - torch.sigmoid(logits)).mean() if logits.numel() else _no_loss(pc, pr)
    return LossOutput(loss, cr, rj, logits=logits.detach())


def _contrast(pc, pr, rc, rr, beta, paired):
    _check(pc, pr, rc, rr, paired=paired)
    chosen, rejected, cr, rj = _rewards(pc, pr, rc, rr, beta)
    return chosen[:, None] - rejected[None, :], cr, rj  # S_ij = r_w,i - r_l,j


def _embedding_weighted(pc, pr, rc, rr, *, beta, tau, chosen_prompt_embeddings, rejected_prompt_embeddings, paired):
    if chosen_prompt_embeddings is None or rejected_prompt_embeddings is None:
        raise ValueError(
            "rpo-paired/rpo-unpaired weight contrasts by prompt similarity: pass chosen_prompt_embeddings "
            "and rejected_prompt_embeddings"
        )
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if chosen_prompt_embeddings.shape[0] != pc.numel() or rejected_prompt_embeddings.shape[0] != pr.numel():
        raise ValueError(
            f"embeddings have {chosen_prompt_embeddings.shape[0]}/{rejected_prompt_embeddings.shape[0]} rows for "
            f"{pc.numel()} chosen / {pr.numel()} rejected items"
        )
    contrast, cr, rj = _contrast(pc, pr, rc, rr, beta, paired)
    if contrast.numel() == 0:  # an unpaired batch with no chosen or no rejected item
        return LossOutput(_no_loss(pc, pr), cr, rj, contrast.detach())
    weights = rpo_weights(chosen_prompt_embeddings, rejected_prompt_embeddings, tau).to(contrast.dtype)
    logits = beta * weights * contrast
    return LossOutput(-F.logsigmoid(logits).mean(), cr, rj, weights, logits=logits.detach())


def rpo_paired(pc, pr, rc, rr, *, beta, tau, chosen_prompt_embeddings=None,
               rejected_prompt_embeddings=None) -> LossOutput:
    """(1/M^2) sum_ij -log sigmoid(beta * w_ij * S_ij) over a paired batch."""
    return _embedding_weighted(pc, pr, rc, rr, beta=beta, tau=tau, paired=True,
                               chosen_prompt_embeddings=chosen_prompt_embeddings,
                               rejected_prompt_embeddings=rejected_prompt_embeddings)


def rpo_unpaired(pc, pr, rc, rr, *, beta, tau, chosen_prompt_embeddings=None,
                 rejected_prompt_embeddings=None) -> LossOutput:
    """Same formula on an M x N matrix of independent chosen and rejected items."""
    return _embedding_weighted(pc, pr, rc, rr, beta=beta, tau=tau, paired=False,
                               chosen_prompt_embeddings=chosen_prompt_embeddings,
                               rejected_prompt_embeddings=rejected_prompt_embeddings)


def rpo_uniform(pc, pr, rc, rr, *, beta) -> LossOutput:
    """(1/(M*N)) sum_ij -log sigmoid(beta * S_ij): every contrast weighted 1."""
    contrast, cr, rj = _contrast(pc, pr, rc, rr, beta, paired=False)
    if contrast.numel() == 0:
        return LossOutput(_no_loss(pc, pr), cr, rj)
    logits = beta * contrast
    return LossOutput(-F.logsigmoid(logits).mean(), cr, rj, logits=logits.detach())


def rpo_diagonal(pc, pr, rc, rr, *, beta, diagonal_weight) -> LossOutput:
    """Row i: alpha * DPO term + (1 - alpha) * mean of the off-diagonal terms; mean over rows.

    With one pair there is no off-diagonal entry and the row is the DPO term alone.
    """
    if not 0.0 <= diagonal_weight <= 1.0:
        raise ValueError(f"diagonal_weight must be in [0, 1], got {diagonal_weight}")
    contrast, cr, rj = _contrast(pc, pr, rc, rr, beta, paired=True)
    logits = beta * contrast
    losses = -F.logsigmoid(logits)
    m = losses.shape[0]
    diagonal = losses.diagonal()
    if m == 1:
        return LossOutput(diagonal.mean(), cr, rj, logits=logits.detach())
    off_diagonal = (losses.sum(1) - diagonal) / (m - 1)
    loss = (diagonal_weight * diagonal + (1.0 - diagonal_weight) * off_diagonal).mean()
    return LossOutput(loss, cr, rj, logits=logits.detach())


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)  # clamp: an empty mask gives 0, not NaN


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps) over the masked entries (biased variance, as the public code), 0 off it."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def gae_advantages(values: Tensor, rewards: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """A_t = sum_k (gamma*lam)^k delta_{t+k}, delta_t = r_t + gamma*V_{t+1} - V_t over [B, T] tokens.

    Values and rewards are zeroed off the mask first, so V after the last response token is 0 (the
    episode ends there) and right padding contributes nothing.
    """
    values, rewards = values * mask, rewards * mask
    advantages, gae = torch.zeros_like(values), values.new_zeros(values.shape[0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else 0.0
        gae = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * gae
        advantages[:, t] = gae
    return advantages * mask


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """The critic's target G_t = sum_{k>t} gamma^(k-t-1) r_k: rewards strictly after token t, as the
    public code's "discounted future rewards" (so G is 0 at the rewarded last token)."""
    rewards = rewards * mask
    returns, future = torch.zeros_like(rewards), rewards.new_zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        returns[:, t] = future
        future = rewards[:, t] + gamma * future
    return returns * mask


def terminal_rewards(episode_rewards: Tensor, mask: Tensor) -> Tensor:
    """[B, T] rewards: each sequence's reward on its last response token, 0 elsewhere."""
    rewards = torch.zeros(mask.shape, dtype=episode_rewards.dtype, device=mask.device)
    scored = mask.any(1)
    last = mask.shape[1] - 1 - mask.flip(1).float().argmax(1)
    rewards[scored.nonzero(as_tuple=True)[0], last[scored]] = episode_rewards[scored]
    return rewards


PPO_METRICS = ("loss/policy", "loss/critic", "clipfrac/policy", "loss/policykl")


def ppo(pc, pr=None, *, reference_token_logps=None, response_mask=None, values=None, episode_rewards=None,
        gamma, lam, cliprange, critic_coef, kl_coef) -> LossOutput:
    """Offline PPO, one epoch (shared/paper.md): pc [B, T] per-token policy log-probs, the reference's
    as the "old" ones, values [B, T] from the policy's value head, episode_rewards [B] (+1 chosen,
    -1 rejected) on each last response token. Advantages (GAE on detached values) are whitened over
    the batch's response tokens; ratio = exp(pc - ref); loss = masked mean of max(-A*ratio,
    -A*clamp(ratio, cliprange, 1/cliprange)) + critic_coef * 0.5 * masked mean (V - G)^2
    + kl_coef * masked mean (ref - pc). Chosen and rejected episodes are rows of pc; pr stays None."""
    if pr is not None:
        raise ValueError("ppo takes every episode as a row of pc (rewards say chosen or rejected), not pr")
    if reference_token_logps is None or response_mask is None or values is None or episode_rewards is None:
        raise ValueError("ppo needs reference_token_logps, response_mask, values and episode_rewards")
    if not pc.shape == reference_token_logps.shape == values.shape == response_mask.shape:
        raise ValueError(f"ppo: per-token shapes differ: policy {tuple(pc.shape)}, reference "
                         f"{tuple(reference_token_logps.shape)}, values {tuple(values.shape)}, mask {tuple(response_mask.shape)}")
    if not 0.0 < cliprange <= 1.0:
        raise ValueError(f"cliprange must be in (0, 1] (the ratio is clamped to [cliprange, 1/cliprange]), got {cliprange}")
    mask = response_mask.to(pc.dtype)
    rewards = terminal_rewards(episode_rewards.to(pc.dtype), response_mask.bool())
    with torch.no_grad():
        advantages = masked_whiten(gae_advantages(values.detach(), rewards, mask, gamma, lam), mask)
        returns = discounted_returns(rewards, mask, gamma)
    critic = 0.5 * masked_mean((values - returns) ** 2, mask)
    ratio = torch.exp(pc - reference_token_logps)
    surrogate = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, cliprange, 1.0 / cliprange)
    policy = masked_mean(torch.max(surrogate, clipped), mask)
    kl = masked_mean(reference_token_logps - pc, mask)
    metrics = {"loss/policy": policy.detach(), "loss/critic": critic.detach(),
               "clipfrac/policy": masked_mean((clipped > surrogate).to(pc.dtype), mask), "loss/policykl": kl.detach()}
    empty = pc.new_zeros(0)
    return LossOutput(policy + critic_coef * critic + kl_coef * kl, empty, empty, metrics=metrics)


# -- the registry ----------------------------------------------------------------------------------
# What each loss is and needs, in one place: the trainer (batching, inputs, hyperparameters), the
# pipeline (which runs take an embedder), the report (labels, method order) and the config schema
# (the method enum) all read it. Adding a loss = one function above + one entry below.
BATCHINGS = ("paired", "unpaired", "items", "sft")  # rpo.data.batching
# Inputs a loss may need besides the four log-prob vectors; the trainer supplies exactly these.
INPUTS = {
    "reference": ("reference_chosen_logps", "reference_rejected_logps"),
    "embeddings": ("chosen_prompt_embeddings", "rejected_prompt_embeddings"),
    "kl": ("policy_kl_logps", "reference_kl_logps", "z0"),
    "lengths": ("chosen_lengths",),
    # Per-token inputs (ppo): the cache's per-token reference log-probs on the response mask, the
    # value head's estimates and each episode's +1/-1 reward.
    "reference_tokens": ("reference_token_logps", "response_mask"),
    "values": ("values", "episode_rewards"),
}


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: Callable[..., LossOutput]
    label: str  # how tables and figures name it
    batching: str  # paired: row i of both sides is prompt i; unpaired: n/2 + n/2 independent items; items: mixed
    needs: frozenset = frozenset()  # keys of INPUTS
    hyperparameters: Mapping[str, float | str] = field(default_factory=dict)  # name -> default
    choices: Mapping[str, tuple] = field(default_factory=dict)  # a categorical hyperparameter -> its values

    def __call__(self, pc, pr=None, rc=None, rr=None, **kwargs) -> LossOutput:
        """The loss with its declared hyperparameters (defaults filled in) and inputs; anything else
        is an error naming the loss and the key, so a misspelt hyperparameter never goes unnoticed."""
        allowed_inputs = {key for need in self.needs for key in INPUTS[need]} - set(INPUTS["reference"])
        unknown = sorted(set(kwargs) - allowed_inputs - set(self.hyperparameters))
        if unknown:
            takes = ", ".join([*self.hyperparameters, *sorted(allowed_inputs)]) or "nothing"
            raise ConfigError(f"loss {self.name!r}: unknown key(s) {', '.join(unknown)}; it takes {takes}")
        if "reference" not in self.needs and (rc is not None or rr is not None):
            raise ConfigError(f"loss {self.name!r}: takes no reference log-probs")
        params = {**self.hyperparameters, **kwargs}
        return self.fn(pc, pr, rc, rr, **params) if "reference" in self.needs else self.fn(pc, pr, **params)

    def resolve_hyperparameters(self, values: Mapping) -> dict:
        """This loss's hyperparameters from a mapping of configured values (None: the loss's default)."""
        resolved = {k: default if values.get(k) is None else values[k] for k, default in self.hyperparameters.items()}
        for key, allowed in self.choices.items():
            if resolved[key] not in allowed:
                raise ConfigError(f"loss {self.name!r}: '{key}' must be one of {', '.join(allowed)}, "
                                  f"got {resolved[key]!r}")
        return resolved


PAIRED_REFERENCE = frozenset({"reference"})
WEIGHTED = frozenset({"reference", "embeddings"})
REGISTRY: dict[str, LossSpec] = {spec.name: spec for spec in (
    # normalization: "token" (the mean token NLL, ours) or "sequence" (the public code's summed NLL per sequence)
    LossSpec("sft", sft, "SFT", "sft", frozenset({"lengths"}), {"normalization": "token"},
             {"normalization": SFT_NORMALIZATIONS}),
    LossSpec("dpo", dpo, "DPO", "paired", PAIRED_REFERENCE, {"beta": 0.1}),
    LossSpec("ipo", ipo, "IPO", "paired", PAIRED_REFERENCE, {"beta": 0.1}),
    LossSpec("cdpo", cdpo, "cDPO", "paired", PAIRED_REFERENCE, {"beta": 0.1, "epsilon": 0.2}),
    LossSpec("slic", slic, "SLiC", "paired", frozenset(), {"beta": 1.0, "lambda_coef": 0.1}),
    # KTO and PPO: batches of independent items (the public UnpairedPreferenceDataLoader).
    LossSpec("kto", kto, "KTO", "items", frozenset({"reference", "kl"}), {"beta": 0.1}),
    LossSpec("rpo-paired", rpo_paired, "RPO-Paired", "paired", WEIGHTED, {"beta": 0.1, "tau": 0.5}),
    LossSpec("rpo-unpaired", rpo_unpaired, "RPO-Unpaired", "unpaired", WEIGHTED, {"beta": 0.1, "tau": 0.5}),
    LossSpec("rpo-diagonal", rpo_diagonal, "RPO-Diagonal", "paired", PAIRED_REFERENCE,
             {"beta": 0.1, "diagonal_weight": 0.8}),
    LossSpec("rpo-uniform", rpo_uniform, "RPO-Uniform", "paired", PAIRED_REFERENCE, {"beta": 0.1}),
    # Offline PPO of the public code: every item an independent episode.
    LossSpec("ppo", ppo, "PPO", "items", frozenset({"reference_tokens", "values"}),
             {"gamma": 0.99, "lam": 0.95, "cliprange": 0.5, "critic_coef": 0.01, "kl_coef": 0.1}),
)}
for _spec in REGISTRY.values():
    assert _spec.batching in BATCHINGS and _spec.needs <= set(INPUTS), _spec


def get_loss(name: str) -> LossSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown loss {name!r}; known losses: {', '.join(REGISTRY)}") from None


def losses_needing(need: str) -> tuple[str, ...]:
    """Names of the losses that need an input (a key of INPUTS), in registry order."""
    return tuple(name for name, spec in REGISTRY.items() if need in spec.needs)


EMBEDDING_LOSSES = losses_needing("embeddings")  # the runs that take an embedder and tau
# losses with a diagonal weight w_ii per pair, whose effective beta a matched-beta DPO control takes
MATCHED_BETA_SOURCES = tuple(m for m in EMBEDDING_LOSSES if REGISTRY[m].batching == "paired")


def hyperparameter_names() -> tuple[str, ...]:
    """Every hyperparameter some loss takes (the trainer's config keys for them)."""
    return tuple(dict.fromkeys(k for spec in REGISTRY.values() for k in spec.hyperparameters))
