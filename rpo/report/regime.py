"""The regime table: where on -log sigmoid each method trained, and how far its policy moved.

Per method and task, seeds pooled (rpo.diagnostics says what the trainer records and why):
- the loss logits over the last 10% of training steps: 5th/50th/95th percentile and the share past
  |x| = 1, where -log sigmoid stops being close to linear, and the mean training loss there (log 2 =
  0.693 is where every method starts);
- the mean log-ratio log pi(y_w|x) - log pi_SFT(y_w|x) on the test prompts' chosen responses (the
  samples files' chosen_logp, rpo.generate --score-chosen), in nats;
- the share of test prompts whose sample is identical to DPO's of the same seed, and to SFT's (all
  runs sample with one seed, so identical models give identical samples).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rpo.diagnostics import HIST_EDGES
from rpo.errors import DataError
from rpo.io import read_jsonl_once
from rpo.pipeline import Defaults
from rpo.report.collect import load_metrics
from rpo.report.tables import METHOD_LABELS, TASK_NOTE, Table, _method_order, percent, select

MATCHED_LABEL = "DPO at RPO-Paired's beta_eff"
N_BINS = len(HIST_EDGES) - 1


def read_samples(path) -> dict[str, dict]:
    """id -> sample row of one samples file (read once per process and file version: rpo.io)."""
    rows = read_jsonl_once(path, "regenerate the samples")
    missing = [i for i, row in enumerate(rows, 1) if "id" not in row or "response" not in row]
    if missing:
        raise DataError(f"{path}: row {missing[0]} has no 'id' or 'response'; regenerate the samples")
    return {row["id"]: row for row in rows}


def identical_share(a: dict, b: dict) -> float:
    common = set(a) & set(b)
    if not common:
        raise DataError("identical_share: the two samples files share no prompt id")
    return sum(a[i]["response"] == b[i]["response"] for i in common) / len(common)


def mean_log_ratio(run: dict, sft: dict, path) -> float:
    """Mean over shared prompts of the run's chosen_logp minus SFT's."""
    common = sorted(set(run) & set(sft))
    missing = [i for i in common if "chosen_logp" not in run[i] or "chosen_logp" not in sft[i]]
    if missing or not common:
        raise DataError(f"{path}: no chosen_logp for prompt {missing[0] if missing else '(none shared with SFT)'}; "
                        "regenerate the samples with `python -m rpo.generate --score-chosen`")
    return float(np.mean([run[i]["chosen_logp"] - sft[i]["chosen_logp"] for i in common]))


def logit_summary(metrics: pd.DataFrame, path) -> dict:
    """The end-of-training histogram rows of one run's metrics: pooled counts, share past |x| = 1, loss."""
    hist_keys = [f"logits/hist{i}" for i in range(N_BINS)]
    if "logits/n" not in metrics:
        return {"counts": None, "n": 0, "n_saturated": 0, "loss": float("nan")}
    if not set(hist_keys) <= set(metrics):
        raise DataError(f"{path}: loss-logit counts but no end-of-training histogram (logits/hist*); retrain the run")
    end = metrics.dropna(subset=hist_keys)
    return {"counts": end[hist_keys].sum().to_numpy(float), "n": float(end["logits/n"].sum()),
            "n_saturated": float(end["logits/n_saturated"].sum()), "loss": float(end["loss"].mean())}


def histogram_quantiles(counts: np.ndarray, qs=(0.05, 0.25, 0.5, 0.75, 0.95)) -> list[float]:
    """Quantiles of binned values (linear within a bin; the end bins hold everything beyond the edges)."""
    edges, counts = np.asarray(HIST_EDGES, dtype=float), np.asarray(counts, dtype=float)
    cdf = np.cumsum(counts) / counts.sum()
    values = []
    for q in qs:
        i = int(np.flatnonzero((cdf >= q - 1e-12) & (counts > 0))[0])  # the first non-empty bin reaching q
        below = cdf[i - 1] if i else 0.0
        values.append(float(edges[i] + (q - below) / (cdf[i] - below) * (edges[i + 1] - edges[i])))
    return values


def _run_diagnostics(row, sft: dict, dpo: dict | None) -> dict:
    results = Path(row["judgments"]).parents[2]
    samples = read_samples(row["samples"])
    is_sft = row["method"] == "sft"  # the reference row: no loss logits, log-ratio 0 by definition
    return {**logit_summary(load_metrics(results, row["task"], row["run"]), results / row["task"] / "models" / row["run"]),
            "log_ratio": 0.0 if is_sft else mean_log_ratio(samples, sft, row["samples"]),
            "identical_dpo": None if dpo is None else identical_share(samples, dpo),
            "identical_sft": None if is_sft else identical_share(samples, sft)}


def regime(runs: pd.DataFrame, defaults: Defaults = Defaults()) -> Table:
    """One row per (model, task, method) of Table 1 and the weighting ablations, plus the matched-beta
    control; SFT's row is the reference (log-ratio 0, its samples' share identical to DPO's)."""
    selected = select(runs, "regime", defaults)
    matched = selected["beta_of"].notna()
    selected = selected.assign(label=np.where(matched, MATCHED_LABEL, selected["method"].map(METHOD_LABELS)),
                               order=selected["method"].map(_method_order) + 0.5 * matched)
    lines, data = [], []
    for (model, task), block in selected.groupby(["model", "task"], sort=True, dropna=False):
        sft_rows = block[block["method"] == "sft"]
        if len(sft_rows) != 1:
            raise DataError(f"regime: task {task} needs exactly one SFT run to measure from, found {len(sft_rows)}")
        sft = read_samples(sft_rows.iloc[0]["samples"])
        dpo_by_seed = {int(r["seed"]): read_samples(r["samples"]) for _, r in block[
            (block["method"] == "dpo") & block["beta_of"].isna()].iterrows()}
        for label, cell in block.sort_values(["order", "seed"]).groupby("label", sort=False):
            is_dpo = label == METHOD_LABELS["dpo"]
            per_seed = [_run_diagnostics(r, sft, None if is_dpo else dpo_by_seed.get(int(r["seed"])))
                        for _, r in cell.iterrows()]
            n = sum(d["n"] for d in per_seed)
            counts = sum(d["counts"] for d in per_seed) if n else None
            q = histogram_quantiles(counts) if n else [float("nan")] * 5
            ratios = [d["log_ratio"] for d in per_seed]
            same_dpo = [d["identical_dpo"] for d in per_seed if d["identical_dpo"] is not None]
            same_sft = [d["identical_sft"] for d in per_seed if d["identical_sft"] is not None]
            item = {"task": task, "model": model, "method": cell["method"].iloc[0], "label": label,
                    "runs": ", ".join(cell["run"]), "n_seeds": len(cell), "loss_end": float(np.mean([d["loss"] for d in per_seed])),
                    "logit_q05": q[0], "logit_q25": q[1], "logit_q50": q[2], "logit_q75": q[3], "logit_q95": q[4],
                    "saturated": sum(d["n_saturated"] for d in per_seed) / n if n else float("nan"),
                    "log_ratio": float(np.mean(ratios)), "log_ratio_low": min(ratios), "log_ratio_high": max(ratios),
                    "identical_dpo": float(np.mean(same_dpo)) if same_dpo else float("nan"),
                    "identical_sft": float(np.mean(same_sft)) if same_sft else float("nan")}
            data.append(item)
            lines.append({"task": task, "model": model, "method": label, "seeds": len(cell),
                          "loss (end)": "n/a" if not n else f"{item['loss_end']:.3f}",
                          "logit p5 / p50 / p95": "n/a" if not n else " / ".join(f"{x:+.2f}" for x in (q[0], q[2], q[4])),
                          "|x| > 1 (%)": "n/a" if not n else percent(item["saturated"]),
                          "log-ratio, test chosen (nats)": _spread(ratios, "{:+.2f}"),
                          "identical to DPO (%)": "-" if not same_dpo else _spread(same_dpo, "{:.1f}", 100),
                          "identical to SFT (%)": "-" if not same_sft else _spread(same_sft, "{:.1f}", 100)})
    if len(lines) == selected.groupby(["model", "task"], dropna=False).ngroups:
        raise DataError("regime: no preference runs beside SFT")
    notes = ["Loss logits: the argument of each contrast's -log sigmoid (beta*S_ii for DPO and cDPO, beta*w_ij*S_ij "
             "over the whole matrix for RPO, beta*S_ij for the uniform and diagonal variants, KTO's two sigmoid "
             "arguments; IPO: beta*S_ii, its loss being squared), over the last 10% of training steps, seeds "
             "pooled; percentiles from 0.25-wide bins. |x| > 1: the share where -log sigmoid is no longer close to "
             "linear. loss (end): the mean training loss there (log 2 = 0.693 at the start). PPO has no such logits.",
             "log-ratio: mean over the test prompts of log pi(chosen) - log pi_SFT(chosen), summed over the chosen "
             "response's tokens. identical: the share of test prompts whose sample equals DPO's of the same seed "
             "(SFT's), all runs sampling with one seed. Several seeds: their mean, with their range in brackets.",
             TASK_NOTE]
    return Table("regime", "Regime diagnostics: how far each method moved from SFT, and in which regime of the loss",
                 pd.DataFrame(lines), pd.DataFrame(data), notes)


def _spread(values: list[float], fmt: str, scale: float = 1.0) -> str:
    text = fmt.format(scale * float(np.mean(values)))
    if len(values) > 1:
        text += f" [{fmt.format(scale * min(values))}, {fmt.format(scale * max(values))}]"
    return text
