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


def sequence_logps(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Summed log-prob of the labelled tokens of each sequence, and their count.

    labels == -100 marks prompt and padding tokens. cross_entropy avoids materialising a full
    log-softmax copy of the [B, T, V] logits, which matters at vocab 32k+.
    """
    # Shift the labels, not the logits: slicing [B, T, V] logits would copy them.
    labels = F.pad(labels[:, 1:], (0, 1), value=-100)
    if logits.dtype in (torch.float16, torch.bfloat16):  # sum log-probs in fp32, keep fp64 exact
        logits = logits.float()
    token_nll = F.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none"
    ).view(labels.shape)
    mask = labels != -100
    return -(token_nll * mask).sum(-1), mask.sum(-1)


def rpo_weights(chosen_embeddings: Tensor, rejected_embeddings: Tensor, tau: float) -> Tensor:
    """w_ij = softmax_j(-(1 - cos(e_i, e'_j)) / tau): a constant, no gradient flows through it."""
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


def sft(pc, pr=None, *, chosen_lengths=None) -> LossOutput:
    """Mean token NLL of the chosen responses: -sum(logps) / sum(response tokens)."""
    if chosen_lengths is None:
        raise ValueError("sft needs chosen_lengths (the number of response tokens of each sequence)")
    loss = -pc.sum() / chosen_lengths.sum().clamp(min=1).to(pc.dtype)
    empty = pc.new_zeros(0)
    return LossOutput(loss, empty, empty)


def dpo(pc, pr, rc, rr, *, beta) -> LossOutput:
    _check(pc, pr, rc, rr, paired=True)
    chosen, rejected, cr, rj = _rewards(pc, pr, rc, rr, beta)
    return LossOutput(-F.logsigmoid(beta * (chosen - rejected)).mean(), cr, rj)


def cdpo(pc, pr, rc, rr, *, beta, epsilon) -> LossOutput:
    """Conservative DPO: labels flipped with probability epsilon,
    (1 - eps) * -log sigmoid(beta * S_ii) + eps * -log sigmoid(-beta * S_ii), mean over pairs."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    _check(pc, pr, rc, rr, paired=True)
    chosen, rejected, cr, rj = _rewards(pc, pr, rc, rr, beta)
    logits = beta * (chosen - rejected)
    return LossOutput((-(1.0 - epsilon) * F.logsigmoid(logits) - epsilon * F.logsigmoid(-logits)).mean(), cr, rj)


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
    return LossOutput(((chosen - rejected - 1.0 / (2.0 * beta)) ** 2).mean(), cr, rj)


def kto(pc, pr, rc, rr, *, beta, policy_kl_logps=None, reference_kl_logps=None) -> LossOutput:
    """KTO with lambda_D = lambda_U = 1; z0 from mismatched (x, y) pairs, clamped at 0 and detached."""
    _check(pc, pr, rc, rr, paired=False)
    if policy_kl_logps is None or reference_kl_logps is None:
        raise ValueError("kto needs policy_kl_logps and reference_kl_logps (log-probs of mismatched (x, y) pairs)")
    chosen, rejected, cr, rj = _rewards(pc, pr, rc, rr, beta)
    z0 = (policy_kl_logps - reference_kl_logps).mean().clamp(min=0).detach()
    losses = torch.cat([1 - torch.sigmoid(beta * (chosen - z0)), 1 - torch.sigmoid(beta * (z0 - rejected))])
    loss = losses.mean() if losses.numel() else _no_loss(pc, pr)
    return LossOutput(loss, cr, rj)


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
    loss = -F.logsigmoid(beta * weights * contrast).mean()
    return LossOutput(loss, cr, rj, weights)


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
    return LossOutput(-F.logsigmoid(beta * contrast).mean(), cr, rj)


def rpo_diagonal(pc, pr, rc, rr, *, beta, diagonal_weight) -> LossOutput:
    """Row i: alpha * DPO term + (1 - alpha) * mean of the off-diagonal terms; mean over rows.

    With one pair there is no off-diagonal entry and the row is the DPO term alone.
    """
    if not 0.0 <= diagonal_weight <= 1.0:
        raise ValueError(f"diagonal_weight must be in [0, 1], got {diagonal_weight}")
    contrast, cr, rj = _contrast(pc, pr, rc, rr, beta, paired=True)
    losses = -F.logsigmoid(beta * contrast)
    m = losses.shape[0]
    diagonal = losses.diagonal()
    if m == 1:
        return LossOutput(diagonal.mean(), cr, rj)
    off_diagonal = (losses.sum(1) - diagonal) / (m - 1)
    loss = (diagonal_weight * diagonal + (1.0 - diagonal_weight) * off_diagonal).mean()
    return LossOutput(loss, cr, rj)


# -- the registry ----------------------------------------------------------------------------------
# What each loss is and needs, in one place: the trainer (batching, inputs, hyperparameters), the
# pipeline (which runs take an embedder), the report (labels, method order) and the config schema
# (the method enum) all read it. Adding a loss = one function above + one entry below.
BATCHINGS = ("paired", "unpaired", "sft")
# Inputs a loss may need besides the four log-prob vectors; the trainer supplies exactly these.
INPUTS = {
    "reference": ("reference_chosen_logps", "reference_rejected_logps"),
    "embeddings": ("chosen_prompt_embeddings", "rejected_prompt_embeddings"),
    "kl": ("policy_kl_logps", "reference_kl_logps"),
    "lengths": ("chosen_lengths",),
}


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: Callable[..., LossOutput]
    label: str  # how tables and figures name it
    batching: str  # paired: row i of both sides is prompt i; unpaired: independent chosen/rejected items
    needs: frozenset = frozenset()  # keys of INPUTS
    hyperparameters: Mapping[str, float] = field(default_factory=dict)  # name -> default

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
        return {k: default if values.get(k) is None else values[k] for k, default in self.hyperparameters.items()}


PAIRED_REFERENCE = frozenset({"reference"})
WEIGHTED = frozenset({"reference", "embeddings"})
REGISTRY: dict[str, LossSpec] = {spec.name: spec for spec in (
    LossSpec("sft", sft, "SFT", "sft", frozenset({"lengths"})),
    LossSpec("dpo", dpo, "DPO", "paired", PAIRED_REFERENCE, {"beta": 0.1}),
    LossSpec("ipo", ipo, "IPO", "paired", PAIRED_REFERENCE, {"beta": 0.1}),
    LossSpec("cdpo", cdpo, "cDPO", "paired", PAIRED_REFERENCE, {"beta": 0.1, "epsilon": 0.2}),
    LossSpec("slic", slic, "SLiC", "paired", frozenset(), {"beta": 1.0, "lambda_coef": 0.1}),
    # KTO takes paired batches here, read as desirable + undesirable items, as HALOs does with paired data.
    LossSpec("kto", kto, "KTO", "paired", frozenset({"reference", "kl"}), {"beta": 0.1}),
    LossSpec("rpo-paired", rpo_paired, "RPO-Paired", "paired", WEIGHTED, {"beta": 0.1, "tau": 0.5}),
    LossSpec("rpo-unpaired", rpo_unpaired, "RPO-Unpaired", "unpaired", WEIGHTED, {"beta": 0.1, "tau": 0.5}),
    LossSpec("rpo-diagonal", rpo_diagonal, "RPO-Diagonal", "paired", PAIRED_REFERENCE,
             {"beta": 0.1, "diagonal_weight": 0.8}),
    LossSpec("rpo-uniform", rpo_uniform, "RPO-Uniform", "paired", PAIRED_REFERENCE, {"beta": 0.1}),
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


def hyperparameter_names() -> tuple[str, ...]:
    """Every hyperparameter some loss takes (the trainer's config keys for them)."""
    return tuple(dict.fromkeys(k for spec in REGISTRY.values() for k in spec.hyperparameters))
