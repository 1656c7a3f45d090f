"""Figures (PNG and PDF each): win rates with 95% intervals per table, win rate vs tau, win rate vs batch
size, training curves per run, and the heat map of one batch's RPO weight matrix."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from rpo.errors import DataError  # noqa: E402
from rpo.io import atomic_path  # noqa: E402
from rpo.report.tables import Table  # noqa: E402

_MARKER_RE = re.compile(r"\n?<\|(user|assistant)\|>\n?")
PAPER_STYLE = {"marker": "D", "color": "crimson", "s": 36, "zorder": 5, "label": "paper (see the table's notes)"}


def save_figure(fig, stem) -> list[Path]:
    """Write stem.png and stem.pdf atomically, then close the figure."""
    stem = Path(stem)
    paths = []
    try:
        for fmt in ("png", "pdf"):
            path = stem.parent / f"{stem.name}.{fmt}"
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
            paths.append(path)
    finally:
        plt.close(fig)
    return paths


def _panels(data: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One panel per task (and per model when there are several)."""
    several_models = data["model"].nunique(dropna=False) > 1
    panels = []
    for (task, model), block in data.groupby(["task", "model"], sort=False, dropna=False):
        name = "AlpacaEval 2.0" if task == "instructions" else str(task)
        panels.append((f"{name} ({model})" if several_models else name, block))
    return panels


def _errors(block: pd.DataFrame) -> np.ndarray:
    """Asymmetric error bars in percent; a missing interval draws none."""
    low = (block["win_rate"] - block["ci_low"].astype(float)).fillna(0.0)
    high = (block["ci_high"].astype(float) - block["win_rate"]).fillna(0.0)
    return 100.0 * np.vstack([low.to_numpy(float), high.to_numpy(float)])


def plot_winrate_bars(table: Table, stem) -> list[Path]:
    """Horizontal bars (the labels are long) with 95% intervals; the paper's value as a red diamond.
    Panels share one row per label, so a label missing in one panel leaves a gap there."""
    data = table.data.copy()
    if data.empty:
        raise DataError(f"{table.name}: nothing to plot")
    if "run" in data and data.groupby(["task", "model", "label"], dropna=False).size().max() > 1:
        data["label"] = data["label"] + " (" + data["run"] + ")"
    labels = list(dict.fromkeys(data["label"]))
    position = {label: len(labels) - 1 - k for k, label in enumerate(labels)}  # first label on top
    panels = _panels(data)
    fig, axes = plt.subplots(1, len(panels), figsize=(1.5 + 4.2 * len(panels), 1.2 + 0.42 * len(labels)),
                             sharey=True, squeeze=False)
    for ax, (title, block) in zip(axes[0], panels):
        y = block["label"].map(position).to_numpy()
        ax.barh(y, 100 * block["win_rate"], xerr=_errors(block), color="tab:blue", alpha=0.8,
                error_kw={"ecolor": "black", "capsize": 3, "lw": 1}, label="ours, 95% CI")
        paper = block["paper"].astype(float) if "paper" in block else pd.Series(np.nan, index=block.index)
        has_paper = paper.notna().to_numpy()
        if has_paper.any():
            ax.scatter(100 * paper.to_numpy()[has_paper], y[has_paper], **PAPER_STYLE)
        ax.axvline(50, color="grey", lw=0.8, ls=":", label="50%")
        ax.set_xlim(0, 100)
        ax.set_xlabel("win rate vs chosen (%)" if block["task"].iloc[0] != "instructions" else "AlpacaEval 2.0 win rate (%)")
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(list(position.values()), list(position.keys()))
    axes[0][0].set_ylim(-0.6, len(labels) - 0.4)
    # One legend for the figure, below the panels, so it never covers a bar.
    handles, names = [], []
    for ax in axes[0]:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            if name not in names:
                handles.append(handle)
                names.append(name)
    fig.suptitle(table.title, fontsize=11)
    fig.tight_layout(rect=(0, 0.4 / fig.get_figheight(), 1, 1))  # ~0.4 inch for the legend row
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    return save_figure(fig, stem)


def plot_vs_dpo(table: Table, stem) -> list[Path]:
    """Each method's paired win-rate difference from DPO (points, 95% interval; rpo.report.paired), one
    panel per task, with the paper's difference as a diamond where it publishes both numbers."""
    if "vs DPO: diff" not in table.data:
        raise DataError(f"{table.name}: no paired differences from DPO to plot (no DPO run?)")
    data = table.data[table.data["vs DPO: diff"].notna()]
    labels = list(dict.fromkeys(data["label"]))
    position = {label: len(labels) - 1 - k for k, label in enumerate(labels)}
    panels = _panels(data)
    fig, axes = plt.subplots(1, len(panels), figsize=(1.5 + 4.2 * len(panels), 1.4 + 0.42 * len(labels)),
                             sharey=True, squeeze=False)
    for ax, (title, block) in zip(axes[0], panels):
        y = block["label"].map(position).to_numpy()
        diff = 100 * block["vs DPO: diff"].to_numpy(float)
        err = 100 * np.vstack([block["vs DPO: diff"] - block["vs DPO: diff_low"],
                               block["vs DPO: diff_high"] - block["vs DPO: diff"]]).astype(float)
        ax.errorbar(diff, y, xerr=err, fmt="o", color="tab:blue", capsize=3, lw=1, label="ours - DPO, 95% CI")
        paper = block["vs DPO: paper_diff"].astype(float)  # the table's: set where the paper has both numbers
        if paper.notna().any():
            ax.scatter(100 * paper[paper.notna()], y[paper.notna().to_numpy()], **PAPER_STYLE)
        ax.axvline(0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("win-rate difference from DPO (points)")
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(list(position.values()), list(position.keys()))
    axes[0][0].set_ylim(-0.6, len(labels) - 0.4)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.suptitle("Paired difference from DPO on the same prompts", fontsize=11)
    fig.tight_layout(rect=(0, 0.4 / fig.get_figheight(), 1, 1))
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    return save_figure(fig, stem)


def plot_regime(table: Table, stem) -> list[Path]:
    """rpo.report.regime side by side, one row of panels per task: the loss logits at the end of training
    (box: 25-75%, whiskers: 5-95%, |x| = 1 dotted), the share past |x| = 1, the mean log-ratio to SFT on the
    test chosen responses (bars: seeds' range) and the share of samples identical to DPO's and SFT's."""
    data = table.data
    if data.empty:
        raise DataError(f"{table.name}: nothing to plot")
    panels = _panels(data)
    labels = list(dict.fromkeys(data["label"]))
    y_of = {label: len(labels) - 1 - k for k, label in enumerate(labels)}
    fig, axes = plt.subplots(len(panels), 4, figsize=(16, 0.9 + len(panels) * (0.9 + 0.32 * len(labels))),
                             squeeze=False, sharey=True)
    for row, (title, block) in zip(axes, panels):
        y = block["label"].map(y_of).to_numpy()
        has = block["logit_q50"].notna().to_numpy()
        stats = [{"med": r.logit_q50, "q1": r.logit_q25, "q3": r.logit_q75, "whislo": r.logit_q05,
                  "whishi": r.logit_q95, "fliers": []} for r in block[has].itertuples()]
        if stats:
            row[0].bxp(stats, positions=y[has], orientation="horizontal", widths=0.6, showfliers=False)
        for x in (-1, 1):
            row[0].axvline(x, color="grey", lw=0.8, ls=":")
        row[0].set_xlabel("loss logit, last 10% of steps")
        row[1].barh(y[has], 100 * block["saturated"].to_numpy(float)[has], color="tab:orange")
        row[1].set_xlabel("|logit| > 1 (%)")
        ratio = block["log_ratio"].to_numpy(float)
        spread = np.vstack([ratio - block["log_ratio_low"].to_numpy(float), block["log_ratio_high"].to_numpy(float) - ratio])
        row[2].barh(y, ratio, xerr=spread, color="tab:green", capsize=2)
        row[2].axvline(0, color="grey", lw=0.8)
        row[2].set_xlabel("log-ratio to SFT, test chosen (nats)")
        row[3].barh(y + 0.2, 100 * block["identical_dpo"].to_numpy(float), height=0.4, label="= DPO's")
        row[3].barh(y - 0.2, 100 * block["identical_sft"].to_numpy(float), height=0.4, label="= SFT's")
        row[3].set_xlim(0, 100)
        row[3].set_xlabel("identical samples (%)")
        row[0].set_ylabel(title)
        for ax in row:
            ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(list(y_of.values()), list(y_of.keys()))
    axes[0][0].set_ylim(-0.6, len(labels) - 0.4)
    axes[0][3].legend(loc="lower right", fontsize=8)
    fig.suptitle("Regime diagnostics: loss logits at the end of training, and how far each policy moved", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, stem)


def _lines(table: Table, stem, x: str, series: str, xlabel: str, log2: bool = False) -> list[Path]:
    data = table.data
    if data.empty:
        raise DataError(f"{table.name}: nothing to plot")
    panels = _panels(data)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.8), squeeze=False, sharey=True)
    xs_all = np.sort(data[x].astype(float).unique())
    # Nudge each series sideways a little so error bars at the same x do not hide each other.
    spread = float(np.ptp(np.log2(xs_all)) if log2 else np.ptp(xs_all)) or 1.0
    names = sorted(data[series].astype(str).unique())
    for ax, (title, block) in zip(axes[0], panels):
        for k, name in enumerate(names):
            rows = block[block[series].astype(str) == name].sort_values(x)
            if rows.empty:
                continue
            offset = (k - (len(names) - 1) / 2) * 0.025 * spread
            xs = rows[x].astype(float).to_numpy()
            xs = xs * 2 ** offset if log2 else xs + offset
            ax.errorbar(xs, 100 * rows["win_rate"], yerr=_errors(rows), marker="o", capsize=3, label=name)
        if log2:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs_all, [f"{v:g}" for v in xs_all])
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title=series)
    axes[0][0].set_ylabel("win rate vs chosen (%)")
    fig.suptitle(table.title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, stem)


def plot_tau(table3: Table, stem) -> list[Path]:
    """Win rate vs tau, one line per embedder, one panel per task."""
    return _lines(table3, stem, "tau", "embedder", "temperature tau")


def plot_batch_size(table4: Table, stem) -> list[Path]:
    """Win rate vs batch size, one line per method, one panel per task."""
    return _lines(table4, stem, "batch_size", "method", "batch size (log scale)", log2=True)


SMOOTH_FROM_STEPS = 50  # shorter logs are drawn as they are; smoothing a few points only hides them


def _smooth(values: pd.Series) -> pd.Series:
    return values.ewm(span=max(5, len(values) // 25), adjust=False).mean()


def plot_training_curves(metrics: pd.DataFrame, title: str, stem) -> list[Path]:
    """Loss, reward margin and reward accuracy vs step (SFT logs only the loss): raw faint, smoothed solid."""
    panels = [("loss", "loss")]
    for key, label in (("rewards/margins", "reward margin"), ("rewards/accuracies", "reward accuracy")):
        if key in metrics and metrics[key].notna().any():
            panels.append((key, label))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        rows = metrics[["step", key]].dropna()
        if len(rows) >= SMOOTH_FROM_STEPS:
            ax.plot(rows["step"], rows[key], color="tab:blue", alpha=0.3, lw=0.8, label="per step")
            ax.plot(rows["step"], _smooth(rows[key]), color="tab:blue", lw=1.8, label="smoothed (EMA)")
        else:
            ax.plot(rows["step"], rows[key], color="tab:blue", lw=1.5, marker=".", label="per step")
        if key == "rewards/accuracies":
            ax.set_ylim(-0.02, 1.02)
        if key == "rewards/margins":
            ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if len(metrics) >= SMOOTH_FROM_STEPS:
        axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, stem)


# --- the weight matrix of one batch --------------------------------------------------------------

def shorten_prompt(prompt: str, width: int = 40) -> str:
    """The last user turn of a formatted prompt, on one line, cut to `width` characters."""
    turns = [t for t in _MARKER_RE.split(prompt) if t and t not in ("user", "assistant")]
    text = " ".join((turns[-1] if turns else prompt).split())
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def weight_example(prompts: Sequence[str], embeddings, tau: float, embedder_name: str,
                   rejected_prompts: Sequence[str] | None = None, rejected_embeddings=None) -> dict:
    """The RPO weights w_ij of one batch as a JSON-ready dict (paired batch: the rejected side is the
    chosen side unless given). Uses rpo.losses.rpo_weights, the loss's own weighting."""
    import torch

    from rpo.losses import rpo_weights

    chosen = torch.as_tensor(np.asarray(embeddings, dtype=np.float64))
    rejected = chosen if rejected_embeddings is None else torch.as_tensor(np.asarray(rejected_embeddings, dtype=np.float64))
    rejected_prompts = list(prompts if rejected_prompts is None else rejected_prompts)
    if chosen.dim() != 2 or chosen.shape[0] != len(prompts) or rejected.shape[0] != len(rejected_prompts):
        raise DataError(f"weight_example: {len(prompts)} chosen / {len(rejected_prompts)} rejected prompts but "
                        f"embeddings of shape {tuple(chosen.shape)} / {tuple(rejected.shape)}")
    weights = rpo_weights(chosen, rejected, tau)
    return {"tau": float(tau), "embedder": embedder_name, "chosen_prompts": list(prompts),
            "rejected_prompts": rejected_prompts, "weights": weights.tolist()}


def read_weight_example(path) -> dict:
    """A weight-example JSON, checked: M x N weights matching the prompt lists, finite, rows sum to 1."""
    path = Path(path)
    try:
        example = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read weight example: {exc}") from exc
    missing = [k for k in ("tau", "embedder", "chosen_prompts", "rejected_prompts", "weights") if k not in example]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}")
    weights = np.asarray(example["weights"], dtype=float)
    shape = (len(example["chosen_prompts"]), len(example["rejected_prompts"]))
    if weights.shape != shape:
        raise DataError(f"{path}: key 'weights' has shape {weights.shape}, expected {shape} (chosen x rejected prompts)")
    if not np.isfinite(weights).all() or not np.allclose(weights.sum(axis=1), 1.0, atol=1e-4):
        raise DataError(f"{path}: key 'weights' must be finite with every row summing to 1 (softmax over j)")
    return example


def plot_weight_heatmap(example: dict, stem, width: int = 40) -> list[Path]:
    """Heat map of w_ij with shortened prompts as tick labels and a colorbar; values printed when small."""
    weights = np.asarray(example["weights"], dtype=float)
    m, n = weights.shape
    size = max(4.0, 0.55 * max(m, n) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=max(float(weights.max()), 1e-9))
    if example["rejected_prompts"] == example["chosen_prompts"]:  # paired batch: the y labels say it all
        ax.set_xticks(range(n), [str(j) for j in range(n)], fontsize=7)
    else:
        ax.set_xticks(range(n), [f"{j}: {shorten_prompt(p, width)}" for j, p in enumerate(example["rejected_prompts"])],
                      rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(m), [f"{i}: {shorten_prompt(p, width)}" for i, p in enumerate(example["chosen_prompts"])],
                  fontsize=7)
    ax.set_xlabel("prompt j of the rejected response")
    ax.set_ylabel("prompt i of the chosen response")
    if m * n <= 256:  # numbers stay readable up to 16 x 16
        threshold = 0.6 * weights.max()
        for i in range(m):
            for j in range(n):
                ax.text(j, i, f"{weights[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if weights[i, j] > threshold else "white")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=r"weight $w_{ij}$ (each row sums to 1)")
    ax.set_title(f"RPO weights of one batch: tau={example['tau']:g}, embedder {example['embedder']}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, stem)


def training_curve_title(row) -> str:
    parts = [f"{row['task']}/{row['run']}", f"method {row['method']}"]
    if row.get("batch_size") is not None and not (isinstance(row["batch_size"], float) and math.isnan(row["batch_size"])):
        parts.append(f"batch {int(row['batch_size'])}")
    return ", ".join(parts)
