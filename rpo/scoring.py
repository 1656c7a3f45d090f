"""How a model scores a batch of tokenised examples: the log-prob of every response token, one home for
the trainer (SFT, every preference loss, both contrast scopes, ppo) and the reference cache.

    scores = score(model, examples, pad_token_id, packing=True)
    scores.sums        # [B] summed response log-probs, the losses' input
    scores.token_logps # [n] every response token's log-prob, sequence by sequence

Two layouts of the same numbers (`training.packing`):
  packed (default)  the examples concatenated into one row, position ids restarting at 0 for each, and
                    attention kept inside each sequence (block-diagonal causal). No position is padding.
  padded            right-padded to the longest example, as before; kept for comparison.
Either way only the positions that predict a response token go through the LM head, in chunks of at most
HEAD_CHUNK_ELEMENTS logits, so the [positions, vocab] fp32 logits of a micro-batch never exist at once.

Packed attention: with a flash-attention implementation transformers runs its own varlen kernel from the
`cu_seq_lens_*` arguments passed here. Otherwise (sdpa, eager) transformers would build one dense
[N, N] block-diagonal mask for the N packed tokens, O(N^2) in memory and compute where the sequences
need sum(L_i^2); for a 16-sequence micro-batch that is ~16x the attention work. So here the attention
of a packed forward is `segment_sdpa`: transformers' own sdpa function called once per sequence.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from rpo.data.tokenize import IGNORE_INDEX, collate
from rpo.distributed import unwrap

# Logits computed at once (positions x vocab): 2^24 fp32 is 64 MiB, e.g. 341 positions at a 49k vocabulary.
HEAD_CHUNK_ELEMENTS = 2 ** 24
SEGMENT_ATTENTION = "rpo_segment_sdpa"


@dataclass
class Scores:
    token_logps: Tensor  # [n] log-prob of every scored (response) token, sequence by sequence
    counts: Tensor  # [B] scored tokens of each sequence
    n_tokens: int  # real (non-pad) tokens the forward attended
    values: Tensor | None = None  # [n] value-head estimates at the same positions (ppo), else None

    @property
    def sums(self) -> Tensor:
        """Summed response log-probs of each sequence [B], accumulated in at least fp32 and returned in the
        token log-probs' dtype (bf16 under pure bf16: torch's sum of a bf16 tensor, as the public code's)."""
        owner = torch.repeat_interleave(torch.arange(len(self.counts), device=self.counts.device), self.counts)
        flat = self.token_logps
        wide = torch.promote_types(flat.dtype, torch.float32)
        sums = torch.zeros(len(self.counts), dtype=wide, device=flat.device).index_add(
            0, owner.to(flat.device), flat.to(wide))
        return sums.to(flat.dtype)

    def as_matrix(self, flat: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`flat` (default: token_logps) laid out [B, K] (0 off the mask) and the mask of scored tokens."""
        flat = self.token_logps if flat is None else flat
        width = max(int(self.counts.max()), 1) if len(self.counts) else 1
        mask = torch.arange(width, device=flat.device)[None, :] < self.counts.to(flat.device)[:, None]
        out = torch.zeros(mask.shape, dtype=flat.dtype, device=flat.device)
        return out.masked_scatter(mask, flat), mask


def pack(examples: Sequence[dict]) -> dict:
    """One row of every example's tokens: input_ids and position_ids [1, N], cu_seq_lens [B + 1] (int32,
    transformers' varlen convention), max_length; and `positions`/`targets`: the flat positions whose logits
    predict a response token and that token, with `counts` per sequence."""
    ids, pos, positions, targets, counts, bounds = [], [], [], [], [], [0]
    for example in examples:
        tokens, labels, start = example["input_ids"], example["labels"], bounds[-1]
        ids.extend(tokens)
        pos.extend(range(len(tokens)))
        scored = [t for t in range(1, len(tokens)) if labels[t] != IGNORE_INDEX]
        positions.extend(start + t - 1 for t in scored)
        targets.extend(labels[t] for t in scored)
        counts.append(len(scored))
        bounds.append(start + len(tokens))
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    cu = torch.tensor(bounds, dtype=torch.int32)
    return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([pos]),
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths), "max_length_k": max(lengths),
            "positions": torch.tensor(positions, dtype=torch.long), "targets": torch.tensor(targets),
            "counts": torch.tensor(counts), "n_tokens": bounds[-1]}


def pad(examples: Sequence[dict], pad_token_id: int) -> dict:
    """The padded layout (rpo.data.tokenize.collate) with the same positions/targets/counts as `pack`,
    positions indexing the flattened [B, T] grid."""
    batch = collate(examples, pad_token_id)
    labels = batch["labels"]
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # column t: the token position t predicts
    scored = shifted != IGNORE_INDEX
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "positions": scored.flatten().nonzero().squeeze(1), "targets": shifted[scored],
            "counts": scored.sum(1), "n_tokens": int(batch["attention_mask"].sum())}


MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k",
                "max_length_q", "max_length_k")


def score(model, examples: Sequence[dict], pad_token_id: int, *, packing: bool = True,
          with_values: bool = False) -> Scores:
    """Every response token's log-prob under `model` (DDP/FSDP-wrapped or not), in the caller's autocast
    and grad mode. with_values: also the value head's estimates (rpo.ppo), which needs hidden states."""
    device = next(model.parameters()).device
    layout = pack(examples) if packing else pad(examples, pad_token_id)
    inputs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in layout.items() if k in MODEL_INPUTS}
    positions, targets = layout["positions"].to(device), layout["targets"].to(device)
    extra = {"output_hidden_states": True} if with_values else {}
    inner = unwrap(model)
    with _response_head(inner, positions, targets) as result, _segment_attention(inner, packing):
        output = model(**inputs, use_cache=False, **extra)  # no KV cache: one forward, nothing to decode after
    if output.logits is not result[0]:
        raise RuntimeError(f"{type(inner).__name__} changes its LM head's output in forward (softcapping, "
                           "scaling); rpo.scoring supports heads whose logits it returns as they are")
    values = output.value_estimates.flatten()[positions] if with_values else None
    return Scores(output.logits, layout["counts"].to(device), layout["n_tokens"], values)


@contextmanager
def _response_head(model, positions: Tensor, targets: Tensor):
    """Within: the model's LM head returns the target log-probs at `positions` of its input, chunked.

    The head is still called by the model's own forward, so DDP's and FSDP's hooks (which unshard the
    root's parameters, the head and its tied embedding among them) see it as before."""
    head, result = model.get_output_embeddings(), []
    previous = head.__dict__.get("forward")  # an instance-level forward someone else installed, if any
    linear = head.forward
    vocab = head.weight.shape[0]
    # Pure half-precision weights (rpo.precision, pure bf16): log-probs in the weights' dtype, as the public
    # code's bf16 log_softmax gives them; fp32 weights (autocast or not) keep them in fp32. Read off the input
    # embedding: for inference under autocast the head alone may be bf16 (rpo.precision.for_inference).
    weights = model.get_input_embeddings().weight.dtype
    half = weights if weights in (torch.float16, torch.bfloat16) else None

    def forward(hidden):
        hidden = hidden.flatten(0, 1).index_select(0, positions)
        logps = _chunked_target_logps(linear, vocab, hidden, targets)
        result.append(logps if half is None else logps.to(half))
        return result[0]

    head.forward = forward  # an instance attribute: the module, its parameters and state dict are untouched
    try:
        yield result
    finally:
        if previous is None:
            del head.forward
        else:
            head.forward = previous


def _target_logps(linear, hidden: Tensor, targets: Tensor) -> Tensor:
    logits = linear(hidden)
    if logits.dtype in (torch.float16, torch.bfloat16):  # log-softmax in fp32 (fp64 stays fp64)
        logits = logits.float()
    return -F.cross_entropy(logits, targets, reduction="none")


def _chunked_target_logps(linear, vocab: int, hidden: Tensor, targets: Tensor) -> Tensor:
    """log softmax(linear(hidden))[targets], at most HEAD_CHUNK_ELEMENTS logits at a time. With gradients and
    more than one chunk, each chunk is checkpointed (its logits recomputed in backward), else autograd
    would keep every chunk's log-softmax for backward and the peak would be the unchunked one."""
    rows = max(1, HEAD_CHUNK_ELEMENTS // vocab)
    if len(targets) <= rows:
        return _target_logps(linear, hidden, targets)
    grad = torch.is_grad_enabled() and hidden.requires_grad
    parts = [checkpoint(_target_logps, linear, hidden[s:s + rows], targets[s:s + rows], use_reentrant=False)
             if grad else _target_logps(linear, hidden[s:s + rows], targets[s:s + rows])
             for s in range(0, len(targets), rows)]
    return torch.cat(parts)


@contextmanager
def _segment_attention(model, packing: bool):
    """Packed forwards run segment_sdpa unless the model uses flash attention (transformers' varlen)."""
    config = model.config
    current = config._attn_implementation
    if not packing or current.startswith("flash_attention") or current == SEGMENT_ATTENTION:
        yield
        return
    config._attn_implementation = SEGMENT_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = current


def segment_sdpa(module, query, key, value, attention_mask, *, cu_seq_lens_q=None, **kwargs):
    """transformers' sdpa attention, once per packed sequence (query/key/value [1, heads, N, dim])."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None or attention_mask is not None:
        raise RuntimeError(f"{SEGMENT_ATTENTION} serves packed forwards only (rpo.scoring.score)")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("cu_seq_lens_k", "max_length_q", "max_length_k")}
    bounds = cu_seq_lens_q.tolist()
    outputs = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None,
                                      is_causal=True, **kwargs)[0] for a, b in zip(bounds, bounds[1:])]
    return torch.cat(outputs, dim=1), None  # sdpa_attention_forward's layout: [1, N, heads, dim]


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(SEGMENT_ATTENTION, segment_sdpa)


_register()
