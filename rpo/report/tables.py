"""The paper's tables from collected runs: each a formatted frame (what is printed) plus the numbers
behind it in long form (what the figures plot), written as CSV, Markdown and LaTeX.

Cells read "78.5 [72.1, 84.0]": win rate in percent with its 95% interval. When several seeds of one
configuration exist they are pooled (summed counts, Wilson interval), and runs that differ in any other
setting are never pooled: that raises instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rpo.errors import DataError
from rpo.io import atomic_write_text
from rpo.report import paper_numbers as paper
from rpo.report.collect import METHODS

# The paper's defaults; a pipeline passes its own (config rpo.default_tau / rpo.default_embedder).
DEFAULT_TAU = 0.5
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
EMBEDDING_METHODS = ("rpo-paired", "rpo-unpaired")
MAIN_METHODS = ("sft", "dpo", "ipo", "kto", "rpo-unpaired", "rpo-paired")
METHOD_LABELS = {"sft": "SFT", "dpo": "DPO", "ipo": "IPO", "kto": "KTO", "rpo-paired": "RPO-Paired",
                 "rpo-unpaired": "RPO-Unpaired", "rpo-diagonal": "RPO-Diagonal", "rpo-uniform": "RPO-Uniform"}
NOT_RUN = "not run"
TASK_NOTE = ("Our task 'dialogue' stands in for the paper's Anthropic HH column and 'summarization' for "
             "its TL;DR column; our base models are not the paper's.")
CI_NOTE = "Cells: GPT-judge win rate vs the chosen response in %, with its 95% interval in brackets."
PAPER_NOTE = "'(reported)': known only from a secondary summary of the paper; 'n/a': not known here."
_Z95 = 1.959963984540054


@dataclass
class Table:
    name: str
    title: str
    frame: pd.DataFrame  # formatted strings, written to .csv/.md/.tex
    data: pd.DataFrame  # long form: one row per cell with win_rate, ci_low, ci_high, paper (fractions)
    notes: list[str] = field(default_factory=list)


def percent(value) -> str:
    return f"{100.0 * value:.1f}"


def format_cell(win_rate, ci_low, ci_high) -> str:
    if ci_low is None or ci_high is None or pd.isna(ci_low) or pd.isna(ci_high):
        return percent(win_rate)
    return f"{percent(win_rate)} [{percent(ci_low)}, {percent(ci_high)}]"


def wilson_interval(wins: int, n: int) -> tuple[float, float]:
    if n <= 0:
        raise DataError("cannot compute an interval over 0 judged prompts")
    p, z2 = wins / n, _Z95 ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _same(values) -> bool:
    return len({None if pd.isna(v) else v for v in values}) <= 1


def pool_runs(group: pd.DataFrame) -> dict:
    """One cell from its runs: the run itself, or seeds pooled; raise if the runs differ beyond the seed."""
    runs = ", ".join(group["run"])
    for column in ("beta", "tau", "embedder", "batch_size", "model"):
        if column in group and not _same(group[column]):
            raise DataError(f"runs {runs} land in one table cell but differ in {column!r} "
                            f"({sorted(map(str, group[column].unique()))}); pass --main-batch-size or fix the configs")
    if len(group) == 1:
        row = group.iloc[0]
        return {"win_rate": row["win_rate"], "ci_low": row["ci_low"], "ci_high": row["ci_high"], "runs": runs, "n_runs": 1}
    if group["seed"].isna().any() or group["seed"].nunique() != len(group):
        raise DataError(f"runs {runs} land in one table cell with the same (or no) seed: "
                        "remove the duplicate or tell them apart in run.json")
    wins, n = int(group["wins"].sum()), int(group["n"].sum())
    low, high = wilson_interval(wins, n)
    return {"win_rate": wins / n, "ci_low": low, "ci_high": high, "runs": runs, "n_runs": len(group)}


def _embedder_key(name) -> str | None:
    return None if name is None or pd.isna(name) else str(name).rstrip("/").split("/")[-1]


def _at_tau(runs: pd.DataFrame, tau: float) -> pd.Series:
    return runs["tau"].apply(lambda t: t is not None and not pd.isna(t) and math.isclose(float(t), tau))


def _defaults_only(runs: pd.DataFrame, tau: float = DEFAULT_TAU, embedder: str = DEFAULT_EMBEDDER) -> pd.DataFrame:
    """Runs at the default tau and embedder (methods without embeddings are kept as they are)."""
    uses_embeddings = runs["method"].isin(EMBEDDING_METHODS)
    default_tau = _at_tau(runs, tau)
    default_embedder = runs["embedder"].apply(_embedder_key) == _embedder_key(embedder)
    return runs[~uses_embeddings | (default_tau & default_embedder)]


def _micro_scope(runs: pd.DataFrame) -> pd.DataFrame:
    """The paper's per-micro-batch contrast: global-scope runs belong to the batch-size table only."""
    if "contrast_scope" not in runs:
        return runs
    return runs[runs["contrast_scope"].fillna("micro") != "global"]


def main_batch_sizes(runs: pd.DataFrame, override: int | None = None) -> dict:
    """The main batch size of each (task, model): `override`, else the most common one over all its runs
    (the batch-size sweep adds a few runs per size, every other experiment uses the main size)."""
    sizes = {}
    for key, block in runs.groupby(["task", "model"], sort=False, dropna=False):
        counts = block["batch_size"].dropna().value_counts()
        if override is not None:
            sizes[key] = override
        elif not counts.empty:
            sizes[key] = int(max(counts[counts == counts.max()].index))  # the larger on a tie
    return sizes


def _at_main_batch(runs: pd.DataFrame, mains: dict) -> pd.DataFrame:
    """Within each (task, model, method), keep the main batch size when that method has several."""
    kept = []
    for (task, model), block in runs.groupby(["task", "model"], sort=False, dropna=False):
        main = mains.get((task, model))
        for method, group in block.groupby("method", sort=False):
            if group["batch_size"].nunique(dropna=True) > 1:
                chosen = group[group["batch_size"] == main]
                if chosen.empty:
                    raise DataError(f"{task}/{method} ({model}): runs at batch sizes "
                                    f"{sorted(group['batch_size'].unique())} but none at the main size {main}")
                group = chosen
            kept.append(group)
    return pd.concat(kept) if kept else runs.iloc[0:0]


def _method_order(method: str) -> int:
    return METHODS.index(method)


def _our_paper_column(task: str) -> str:
    setting = paper.TASK_TO_SETTING.get(task)
    return f"{task}: paper ({paper.SETTING_LABEL[setting]})" if setting else f"{task}: paper"


def _paper_for(task: str, model, method: str) -> tuple[str, float | None]:
    setting = paper.TASK_TO_SETTING.get(task)
    if setting is None:
        return paper.NOT_AVAILABLE, None
    paper_model = paper.paper_model_for(setting, model)
    return paper.paper_cell(setting, method, paper_model), paper.paper_win_rate(setting, method, paper_model)


def _paper_model_note(runs: pd.DataFrame) -> str:
    parts = []
    for model in sorted(runs["model"].dropna().unique().tolist()) or [None]:
        ref = paper.paper_model_for("hh", model)
        parts.append(f"ours {model or '(unnamed)'} beside paper HH {ref}")
    return ("Paper HH values are those of the paper model listed here (Mistral-7B is the only HH model with "
            "absolute published numbers): " + "; ".join(parts) + ". TL;DR values: model not stated in the paper. "
            + PAPER_NOTE)


def _by_variant(runs: pd.DataFrame, variants: list[tuple[str, str, callable]], name: str, title: str, notes: list[str]) -> Table:
    """Rows (model, variant), columns per task: ours and the paper's value."""
    tasks = list(dict.fromkeys(runs["task"]))
    data, lines = [], []
    for model, block in runs.groupby("model", sort=True, dropna=False):
        for label, method, select in variants:
            line, found = {"model": model, "method": label}, False
            for task in tasks:
                cell = block[(block["task"] == task) & select(block)]
                paper_text, paper_value = _paper_for(task, model, method)
                line[task] = NOT_RUN
                if not cell.empty:
                    pooled = pool_runs(cell)
                    line[task], found = format_cell(pooled["win_rate"], pooled["ci_low"], pooled["ci_high"]), True
                    data.append({"task": task, "model": model, "method": method, "label": label, **pooled, "paper": paper_value})
                line[_our_paper_column(task)] = paper_text
            if found:
                lines.append(line)
    if not lines:
        raise DataError(f"{name}: no runs for any of {', '.join(v[0] for v in variants)}")
    return Table(name, title, pd.DataFrame(lines), pd.DataFrame(data), notes + [CI_NOTE, TASK_NOTE, _paper_model_note(runs)])


def table1(runs: pd.DataFrame, main_batch_size: int | None = None, tau: float = DEFAULT_TAU,
           embedder: str = DEFAULT_EMBEDDER) -> Table:
    """Win rate by method x task (x model) at the default tau, embedder and main batch size."""
    runs = _micro_scope(runs)
    mains = main_batch_sizes(runs, main_batch_size)
    selected = _at_main_batch(_defaults_only(runs[runs["method"].isin(MAIN_METHODS)], tau, embedder), mains)
    variants = [(METHOD_LABELS[m], m, lambda b, m=m: b["method"] == m) for m in MAIN_METHODS]
    return _by_variant(selected, variants, "table1", "Table 1: GPT-judge win rate against the chosen response, by method",
                       [f"RPO runs at tau={tau:g}, embedder {embedder}; each method at its main batch size."])


def weighting_ablation(runs: pd.DataFrame, main_batch_size: int | None = None, tau: float = DEFAULT_TAU,
                       embedder: str = DEFAULT_EMBEDDER) -> Table:
    """Uniform / diagonal / embedding-weighted / random-embedding control vs DPO (and RPO-Unpaired)."""
    runs = _micro_scope(runs)
    ablation_methods = ("dpo", "rpo-uniform", "rpo-diagonal", "rpo-paired", "rpo-unpaired")
    candidates = runs[runs["method"].isin(ablation_methods)]
    keep = ~candidates["method"].isin(EMBEDDING_METHODS) | _at_tau(candidates, tau)
    selected = _at_main_batch(candidates[keep], main_batch_sizes(runs, main_batch_size))
    embedders = selected["embedder"].apply(_embedder_key)
    default = _embedder_key(embedder)
    variants = [
        ("DPO", "dpo", lambda b: b["method"] == "dpo"),
        ("Uniform weights (w=1)", "rpo-uniform", lambda b: b["method"] == "rpo-uniform"),
        ("Diagonal-heavy (alpha=0.8)", "rpo-diagonal", lambda b: b["method"] == "rpo-diagonal"),
        ("Embedding-weighted (RPO-Paired)", "rpo-paired",
         lambda b: (b["method"] == "rpo-paired") & (embedders.reindex(b.index) == default)),
        ("Random-embedding control", "rpo-paired-random",
         lambda b: (b["method"] == "rpo-paired") & (embedders.reindex(b.index) == "random")),
        ("RPO-Unpaired", "rpo-unpaired",
         lambda b: (b["method"] == "rpo-unpaired") & (embedders.reindex(b.index) == default)),
        ("Random-embedding control (RPO-Unpaired)", "rpo-unpaired-random",
         lambda b: (b["method"] == "rpo-unpaired") & (embedders.reindex(b.index) == "random")),
    ]
    return _by_variant(selected, variants, "ablation", "Weighting ablation: how the contrast matrix is weighted",
                       [f"Embedding-weighted runs at tau={tau:g} ({embedder}); the control uses random prompt "
                        "embeddings."])


def _grid(runs: pd.DataFrame, name: str, title: str, column: str, column_label, row_key: str, notes: list[str], paper_col) -> Table:
    """Rows (task, model, row_key), one column per value of `column`."""
    values = sorted(runs[column].dropna().unique())
    data, lines = [], []
    for (task, model, key), block in runs.groupby(["task", "model", row_key], sort=True, dropna=False):
        line = {"task": task, "model": model, row_key: key}
        for value in values:
            cell = block[block[column] == value]
            line[column_label(value)] = NOT_RUN
            if not cell.empty:
                pooled = pool_runs(cell)
                line[column_label(value)] = format_cell(pooled["win_rate"], pooled["ci_low"], pooled["ci_high"])
                data.append({"task": task, "model": model, row_key: key, column: value, **pooled})
        if paper_col is not None:
            line["paper"] = paper_col(task, model, key)
        lines.append(line)
    return Table(name, title, pd.DataFrame(lines), pd.DataFrame(data), notes + [CI_NOTE, TASK_NOTE])


def table3(runs: pd.DataFrame, main_batch_size: int | None = None) -> Table:
    """RPO-Paired: tau x embedder, per task."""
    runs = _micro_scope(runs)
    selected = _at_main_batch(runs[runs["method"] == "rpo-paired"], main_batch_sizes(runs, main_batch_size)).copy()
    if selected.empty:
        raise DataError("table3: no rpo-paired runs")
    if selected["tau"].isna().any():
        raise DataError(f"table3: rpo-paired run(s) {', '.join(selected[selected['tau'].isna()]['run'])} have no 'tau' in run.json")
    selected["embedder"] = selected["embedder"].apply(_embedder_key)

    def paper_col(task, model, embedder):
        if embedder != DEFAULT_EMBEDDER:
            return paper.NOT_AVAILABLE
        text, _ = _paper_for(task, model, "rpo-paired")
        return text if text == paper.NOT_AVAILABLE else f"{text} at tau={DEFAULT_TAU}"

    return _grid(selected, "table3", "Table 3: RPO-Paired win rate by temperature tau and prompt embedder",
                 "tau", lambda t: f"tau={t:g}", "embedder",
                 ["The paper's per-cell sweep values are not known here; 'paper' gives its default setting only. "
                  + PAPER_NOTE],
                 paper_col)


def table4(runs: pd.DataFrame, tau: float = DEFAULT_TAU, embedder: str = DEFAULT_EMBEDDER) -> Table:
    """Win rate by batch size for DPO and RPO, per task (RPO at the default tau and embedder)."""
    selected = _defaults_only(runs[runs["method"].isin(("dpo", *EMBEDDING_METHODS))], tau, embedder).copy()
    if selected.empty or selected["batch_size"].isna().all():
        raise DataError("table4: no dpo / rpo-paired / rpo-unpaired runs with a batch_size")
    is_global = selected["contrast_scope"].fillna("micro") == "global" if "contrast_scope" in selected else False
    selected["method"] = selected["method"].map(METHOD_LABELS) + is_global.map({True: " (global scope)",
                                                                                False: ""})
    return _grid(selected, "table4", "Table 4: win rate by batch size (the contrast matrix is one micro-batch)",
                 "batch_size", lambda b: f"bs={int(b)}", "method",
                 ["The paper's batch-size numbers are not known here (it reports that larger per-GPU batches help "
                  "RPO and that batch 2 is about DPO)."], None)


def table2(alpacaeval: pd.DataFrame) -> Table:
    """AlpacaEval 2.0 win rate per run, beside the paper's values."""
    lines, data = [], []
    ordered = alpacaeval.assign(order=alpacaeval["method"].map(_method_order)).sort_values(["model", "order", "run"])
    for _, row in ordered.iterrows():
        paper_text = paper.paper_cell("alpacaeval", row["method"])
        lc = row.get("lc_win_rate")
        lines.append({"model": row["model"], "method": METHOD_LABELS[row["method"]], "run": row["run"],
                      "win rate": format_cell(row["win_rate"], row["ci_low"], row["ci_high"]),
                      "SE": percent(row["standard_error"]),
                      "LC win rate": paper.NOT_AVAILABLE if lc is None or pd.isna(lc) else percent(lc),
                      "paper": paper_text})
        data.append({"task": "instructions", "model": row["model"], "method": row["method"],
                     "label": METHOD_LABELS[row["method"]], "run": row["run"], "win_rate": row["win_rate"],
                     "ci_low": row["ci_low"], "ci_high": row["ci_high"],
                     "paper": paper.paper_win_rate("alpacaeval", row["method"])})
    notes = ["AlpacaEval 2.0 win rate vs GPT-4 Turbo reference outputs in %, 95% interval in brackets (win rate "
             "+/- 1.96 SE where the result file gives none); SE: alpaca_eval's standard error; LC: "
             "length-controlled (the paper reports the plain rate).",
             "Paper values are the paper's AlpacaEval 2.0 numbers; its base model differs from ours. " + PAPER_NOTE]
    return Table("table2", "Table 2: AlpacaEval 2.0 win rate", pd.DataFrame(lines), pd.DataFrame(data), notes)


# --- writing -------------------------------------------------------------------------------------

def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub pipe table (own formatter: pandas.to_markdown needs `tabulate`, not a dependency of rpo)."""
    def clean(value) -> str:
        return ("" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)).replace("|", "\\|")
    header = [clean(c) for c in frame.columns]
    body = [[clean(v) for v in row] for row in frame.itertuples(index=False)]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    tabular = table.frame.to_latex(index=False, escape=True, na_rep="")
    notes = "\n".join(r"\footnotesize " + latex_escape(n) + r"\par" for n in table.notes)
    return (f"\\begin{{table}}[t]\n\\centering\n\\caption{{{latex_escape(table.title)}}}\n"
            f"\\label{{tab:{table.name}}}\n\\resizebox{{\\textwidth}}{{!}}{{%\n{tabular}}}\n{notes}\n\\end{{table}}\n")


def write_table(table: Table, stem) -> list[Path]:
    """Write stem.csv, stem.md, stem.tex (the printed table) and stem.data.csv (the numbers), each atomically."""
    stem = Path(stem)
    outputs = {
        ".csv": table.frame.to_csv(index=False),
        ".md": f"**{table.title}**\n\n{to_markdown(table.frame)}\n\n" + "\n".join(f"- {n}" for n in table.notes) + "\n",
        ".tex": to_latex(table),
        ".data.csv": table.data.to_csv(index=False),
    }
    paths = []
    for suffix, text in outputs.items():
        path = stem.parent / (stem.name + suffix)
        atomic_write_text(path, text)
        paths.append(path)
    return paths
