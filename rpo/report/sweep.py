"""The beta sweep's table and figure (rpo.sweep): at each beta, per task, RPO-Paired against its
matched-beta control and against DPO, and where on -log sigmoid each trained.

A run's place in the sweep comes from its run.json: DPO and RPO-Paired sit at their own beta; a
matched-beta control at its source run's (its own beta is that run's beta_eff = beta x mean w_ii).
Cells pool seeds and compare by rpo.report.paired (hierarchical intervals over seeds, then prompts);
the loss-logit share past |x| = 1 and the end loss are rpo.report.regime's, seeds pooled.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rpo.errors import DataError
from rpo.losses import MATCHED_BETA_SOURCES
from rpo.report.collect import load_metrics
from rpo.report.figures import plt, save_figure
from rpo.report.paired import PAIRED_NOTE, compare, format_difference, pool_runs
from rpo.report.regime import logit_summary
from rpo.report.tables import CI_NOTE, METHOD_LABELS, TASK_NOTE, Table, format_pooled, percent

SOURCE = MATCHED_BETA_SOURCES[0]  # rpo-paired: the method whose contrasts the sweep asks about
CONTROL = "control"  # role of the matched-beta control (a DPO run at SOURCE's beta_eff)
ROLES = (SOURCE, CONTROL, "dpo")
ROLE_LABELS = {SOURCE: METHOD_LABELS[SOURCE], CONTROL: "matched-beta control", "dpo": METHOD_LABELS["dpo"]}
AGAINST = ((CONTROL, "control"), ("dpo", "DPO"))  # the differences SOURCE - these, and their column names


def place_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The sweep's runs (collect_runs rows) with their role and sweep beta: DPO and RPO-Paired at their
    own beta, a matched-beta control at its source run's. Raises on a run of another method, or a
    control whose source run is not among `runs`."""
    matched = runs["beta_of"].notna()
    other = runs[~matched & ~runs["method"].isin([SOURCE, "dpo"])]
    if not other.empty:
        raise DataError(f"sweep: runs {', '.join(other['run'])} are neither {SOURCE}, DPO nor a matched-beta control")
    beta_of_run = {(row["task"], row["run"]): row["beta"] for _, row in runs[~matched].iterrows()}
    missing = [f"{r['task']}/{r['run']} (source {r['beta_of']})" for _, r in runs[matched].iterrows()
               if (r["task"], r["beta_of"]) not in beta_of_run]
    if missing:
        raise DataError(f"sweep: matched-beta controls without their source run: {', '.join(missing)}; "
                        "pass the source runs too (--expected-runs)")
    placed = runs.assign(role=np.where(matched, CONTROL, runs["method"]),
                         sweep_beta=[beta_of_run[(r["task"], r["beta_of"])] if m else r["beta"]
                                     for m, (_, r) in zip(matched, runs.iterrows())])
    placed["sweep_beta"] = placed["sweep_beta"].astype(float).round(12)  # one key per beta, whatever JSON wrote
    return placed


def _logits(cell: pd.DataFrame) -> dict:
    """Seeds pooled: the share of end-of-training loss logits past |x| = 1 and the mean end loss."""
    summaries = []
    for _, row in cell.iterrows():
        results = Path(row["judgments"]).parents[2]
        summaries.append(logit_summary(load_metrics(results, row["task"], row["run"]),
                                       results / row["task"] / "models" / row["run"]))
    n = sum(s["n"] for s in summaries)
    if not n:
        raise DataError(f"sweep: runs {', '.join(cell['run'])} logged no loss logits (logits/n); retrain them")
    return {"saturated": sum(s["n_saturated"] for s in summaries) / n,
            "loss_end": float(np.mean([s["loss"] for s in summaries]))}


def sweep_table(runs: pd.DataFrame) -> Table:
    """One row per (model, task, beta): each role's win rate, RPO-Paired - control and RPO-Paired - DPO
    (paired, hierarchical over seeds), each role's share of loss logits past |x| = 1 and end loss."""
    placed = place_runs(runs)
    lines, data = [], []
    for (model, task, beta), block in placed.groupby(["model", "task", "sweep_beta"], sort=True, dropna=False):
        cells = {role: block[block["role"] == role] for role in ROLES}
        absent = [ROLE_LABELS[r] for r, c in cells.items() if c.empty]
        if absent:
            raise DataError(f"sweep: {task} at beta {beta:g} has no {', '.join(absent)} run")
        line = {"task": task, "model": model, "beta": f"{beta:g}"}
        items = {}
        for role, cell in cells.items():
            pooled = pool_runs(cell)
            items[role] = {"task": task, "model": model, "beta": beta, "method": role, "label": ROLE_LABELS[role],
                           **pooled, "beta_trained": float(cell["beta"].astype(float).mean()), **_logits(cell)}
            line[ROLE_LABELS[role]] = format_pooled(pooled)
        line["control's beta_eff"] = f"{items[CONTROL]['beta_trained']:.4g}"
        for role, name in AGAINST:
            result = compare(cells[SOURCE], cells[role])
            items[SOURCE].update({f"vs {name}: {k}": v for k, v in result.items()})
            line[f"{ROLE_LABELS[SOURCE]} - {name}"] = format_difference(result)
        order = " / ".join(ROLE_LABELS[r] for r in ROLES)
        line[f"|x| > 1 (%): {order}"] = " / ".join(percent(items[r]["saturated"]) for r in ROLES)
        line[f"loss (end): {order}"] = " / ".join(f"{items[r]['loss_end']:.3f}" for r in ROLES)
        lines.append(line)
        data += [items[r] for r in ROLES]
    if not lines:
        raise DataError("sweep: no runs")
    notes = [f"The beta sweep (rpo.sweep): {ROLE_LABELS[SOURCE]} and DPO at each beta, and the matched-beta "
             f"control: DPO at {ROLE_LABELS[SOURCE]}'s beta_eff = beta x the mean diagonal weight w_ii over that "
             "run's own batches, one control per seed (its mean over seeds in the column beta_eff). Every other "
             "setting is the config's; the configured beta's row holds the main runs.",
             "|x| > 1: the share of the loss logits (beta*w_ij*S_ij over the whole matrix for RPO-Paired, beta*S_ii "
             "for DPO and the control) past |x| = 1, where -log sigmoid is no longer close to linear, over the last "
             "10% of training steps, seeds pooled; loss (end): the mean training loss there (log 2 = 0.693 at the "
             "start), mean over seeds.",
             CI_NOTE, PAIRED_NOTE.format(f"'{ROLE_LABELS[SOURCE]} - control' and '- DPO'"), TASK_NOTE]
    return Table("sweep", f"The beta sweep: does {ROLE_LABELS[SOURCE]} help once its contrasts saturate?",
                 pd.DataFrame(lines), pd.DataFrame(data), notes)


def plot_sweep(table: Table, stem) -> list[Path]:
    """One column per task (and model), against beta: each role's win rate and RPO-Paired - control and
    - DPO (points, 95% intervals), each role's share of loss logits past |x| = 1 and its end loss."""
    data = table.data
    if data.empty:
        raise DataError(f"{table.name}: nothing to plot")
    panels = list(data.groupby(["task", "model"], sort=True, dropna=False))
    several_models = data["model"].nunique(dropna=False) > 1
    fig, axes = plt.subplots(4, len(panels), figsize=(1.0 + 4.6 * len(panels), 11.5), squeeze=False, sharex=True)
    betas = np.sort(data["beta"].astype(float).unique())
    for column, ((task, model), block) in zip(axes.T, panels):
        for k, role in enumerate(ROLES):
            rows = block[block["method"] == role].sort_values("beta")
            err = np.vstack([rows["win_rate"] - rows["ci_low"], rows["ci_high"] - rows["win_rate"]]).astype(float)
            column[0].errorbar(rows["beta"].to_numpy(float) * 1.04 ** (k - 1), 100 * rows["win_rate"].to_numpy(float),
                               yerr=100 * err, marker="o", capsize=3, label=ROLE_LABELS[role])
        column[0].set_title(f"{task} ({model})" if several_models else str(task))
        source = block[block["method"] == SOURCE].sort_values("beta")
        for k, (_, name) in enumerate(AGAINST):
            diff = source[f"vs {name}: diff"].to_numpy(float)
            err = np.vstack([diff - source[f"vs {name}: diff_low"].to_numpy(float),
                             source[f"vs {name}: diff_high"].to_numpy(float) - diff])
            xs = source["beta"].to_numpy(float) * 1.04 ** (k - 0.5)  # side by side at one beta
            column[1].errorbar(xs, 100 * diff, yerr=100 * err, marker="o", capsize=3,
                               label=f"{ROLE_LABELS[SOURCE]} - {name}")
        column[1].axhline(0, color="grey", lw=0.8, ls=":")
        for role in ROLES:
            rows = block[block["method"] == role].sort_values("beta")
            column[2].plot(rows["beta"], 100 * rows["saturated"], marker="o", label=ROLE_LABELS[role])
            column[3].plot(rows["beta"], rows["loss_end"], marker="o", label=ROLE_LABELS[role])
        column[3].axhline(np.log(2), color="grey", lw=0.8, ls=":", label="log 2 (start)")
        column[3].set_xscale("log")
        column[3].set_xticks(betas, [f"{b:g}" for b in betas])
        column[3].minorticks_off()
        column[3].set_xlabel("beta (the control: its source's)")
        for ax in column:
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("win rate vs chosen (%)")
    axes[1][0].set_ylabel("win-rate difference (points)")
    axes[2][0].set_ylabel("loss logits past |x| = 1 (%)")
    axes[3][0].set_ylabel("training loss, last 10% of steps")
    for row in axes:
        row[-1].legend(fontsize=8)
    fig.suptitle(table.title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, stem)
