"""Which regime did a preference run train in? What the trainer records for the question, cheaply.

Near the start of training -log sigmoid(x) is close to linear in x, and there RPO-Paired's gradient is
DPO's with the rejected items reweighted and its contrasts scaled by about w_ii (each row of w sums to
1); Adam then removes the scale. So two things are recorded per run:

- the loss logits, the argument of each contrast's link function (beta * S_ii for DPO, beta * w_ij *
  S_ij for RPO; rpo.losses.LossOutput.logits): per step the count past |x| = 1, and over the last
  `FINAL_FRACTION` of the steps a histogram on fixed bins. They go into metrics.jsonl (trimmed on
  resume with everything else), so a resumed run's record is whole.
- the mean diagonal weight w_ii over the run's own contrast matrices (its data, embeddings, tau and
  batch plan), which gives a matched-beta DPO control its beta: beta_eff = beta * mean w_ii.

How far the policy moved (log-ratio on test chosen responses, samples identical to DPO's and SFT's) is
measured at generation and in the report (rpo.generate, rpo.report.regime).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from rpo.errors import ConfigError
from rpo.io import read_json_object
from rpo.losses import rpo_weights

FINAL_FRACTION = 0.1  # "the end of training": the last 10% of optimizer steps (at least one)
HIST_EDGES = tuple(round(-4.0 + 0.25 * i, 2) for i in range(33))  # -4 .. 4; outside counts in the end bins
SATURATION = 1.0  # |x| past which -log sigmoid(x) is no longer close to linear


def final_steps(total_steps: int) -> int:
    """The first (1-based) step that counts as the end of training."""
    return total_steps - max(1, math.ceil(FINAL_FRACTION * total_steps)) + 1


def logit_metrics(logits: torch.Tensor | None, with_histogram: bool) -> dict[str, float]:
    """Counts of one contrast matrix's loss logits: n, n past |x| = 1 and (at the end) the histogram
    over HIST_EDGES (values outside the edges fall in the first and last bins). Counts, so they add
    over micro-batches and ranks."""
    if logits is None or logits.numel() == 0:
        return {}
    x = logits.detach().double().flatten().cpu()
    row = {"logits/n": float(x.numel()), "logits/n_saturated": float((x.abs() > SATURATION).sum())}
    if with_histogram:
        edges = torch.tensor(HIST_EDGES, dtype=torch.float64)
        bins = (torch.bucketize(x, edges, right=True) - 1).clamp(0, len(HIST_EDGES) - 2)
        counts = torch.bincount(bins, minlength=len(HIST_EDGES) - 1)
        row.update({f"logits/hist{i}": float(c) for i, c in enumerate(counts.tolist())})
    return row


def logit_keys() -> tuple[str, ...]:
    return ("logits/n", "logits/n_saturated", *(f"logits/hist{i}" for i in range(len(HIST_EDGES) - 1)))


def mean_diagonal_weight(matrices: list[list[int]], embeddings: torch.Tensor, tau: float) -> float:
    """Mean of w_ii over every pair of every contrast matrix (`matrices`: each one's record indices; a
    paired matrix's rows and columns are the same prompts in the same order)."""
    total, n = 0.0, 0
    for indices in matrices:
        e = embeddings[torch.tensor(indices, dtype=torch.long)]
        total += float(rpo_weights(e, e, tau).diagonal().sum())
        n += len(indices)
    return total / n


def matched_beta(source_dir) -> dict:
    """The matched-beta control's settings from its source run's run.json: beta = beta * mean w_ii."""
    path = Path(source_dir) / "run.json"
    if not path.is_file():
        raise ConfigError(f"training config key 'beta_matched_to': {path} does not exist; train the source run "
                          "first (its run.json records its mean diagonal weight)")
    source = read_json_object(path)
    weight = (source.get("contrast_weights") or {}).get("mean_diagonal")
    if not isinstance(weight, (int, float)) or not isinstance(source.get("beta"), (int, float)):
        raise ConfigError(f"training config key 'beta_matched_to': {path} records no beta and "
                          "contrast_weights.mean_diagonal; its method must be a paired embedding-weighted loss "
                          "(rpo-paired), trained by this version of rpo.train")
    return {"beta": source["beta"] * weight, "source": str(source_dir), "source_method": source.get("method"),
            "source_beta": source["beta"], "mean_diagonal_weight": weight}
