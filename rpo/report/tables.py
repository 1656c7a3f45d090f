"""The paper's tables from collected runs: each a formatted frame (what is printed) plus the numbers
behind it in long form (what the figures plot), written as CSV, Markdown and LaTeX.

Which runs a table shows, at which defaults, is rpo.pipeline's (TABLE_RUNS, Defaults); method labels
and order are the loss registry's. Cells read "78.5 [72.1, 84.0]": win rate in percent with its 95%
interval (rpo.stats.bootstrap_interval, as every interval here). Several seeds of one configuration
are pooled: their per-prompt judgments resampled together; runs that differ in any other setting
are never pooled: that raises instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rpo.errors import DataError
from rpo.io import atomic_write_text
from rpo.losses import REGISTRY
from rpo.pipeline import TABLE1_METHODS, WEIGHTING_METHODS, Defaults, embedder_short, in_table
from rpo.report import paper_numbers as paper
from rpo.report.paired import PAIRED_NOTE, compare, format_difference, pool_runs

METHOD_LABELS = {name: spec.label for name, spec in REGISTRY.items()}
MATCHED = "dpo-matched"  # the weighting table's key of the matched-beta DPO control (rpo.pipeline.Run.matched_beta)
NOT_RUN = "not run"
TASK_NOTE = ("Our task 'dialogue' stands in for the paper's Anthropic HH column and 'summarization' for "
             "its TL;DR column; our base models are not the paper's.")
CI_NOTE = ("Cells: GPT-judge win rate vs the chosen response in %, with its 95% interval in brackets (percentile "
           "bootstrap over prompts; a cell of several training seeds: their mean, a hierarchical bootstrap over "
           "seeds then prompts, and the seeds' own lowest-highest win rate).")
PAPER_NOTE = "'(reported)': known only from a secondary summary of the paper; 'n/a': not known here."


@dataclass
class Table:
    name: str  # one of rpo.pipeline.TABLES
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


def format_pooled(pooled: dict) -> str:
    """A cell; pooled seeds add their number and the range of their own win rates."""
    text = format_cell(pooled["win_rate"], pooled["ci_low"], pooled["ci_high"])
    if pooled.get("n_runs", 1) > 1:
        text += f" ({pooled['n_runs']} seeds: {percent(pooled['seed_low'])}-{percent(pooled['seed_high'])})"
    return text


def _value(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def select(runs: pd.DataFrame, table: str, defaults: Defaults) -> pd.DataFrame:
    """The rows `table` shows (rpo.pipeline.in_table of the run each run.json records), embedders by their
    short name."""
    keep = [in_table(table, run, defaults) for run in runs["identity"]]
    selected = runs[keep].copy()
    selected["embedder"] = selected["embedder"].map(lambda e: None if _value(e) is None else embedder_short(e))
    return selected


def _method_order(method: str) -> int:
    return list(REGISTRY).index(method)


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


def _protocol_note(runs: pd.DataFrame) -> list[str]:
    """The judging protocol(s) of the runs shown (none for frames that do not carry the column)."""
    if "protocol" not in runs:
        return []
    protocols = sorted(runs["protocol"].dropna().unique().tolist())
    if not protocols:
        return []
    many = " (MIXED: cells judged under different protocols are not comparable)" if len(protocols) > 1 else ""
    hashes = []
    if "template_sha256" in runs:  # the exact template per protocol and task, as each summary records it
        for (protocol, task), block in runs.dropna(subset=["template_sha256"]).groupby(["protocol", "task"]):
            hashes.append(f"{protocol}/{task} {', '.join(sorted(h[:12] for h in block['template_sha256'].unique()))}")
    sha = f" Template sha256: {'; '.join(hashes)}." if hashes else ""
    return [f"Judging protocol{'s' if len(protocols) > 1 else ''}: {', '.join(protocols)}{many}; rpo-paper is "
            f"the public code's compare.py (rpo/judge/protocols.py).{sha}"]


def _by_variant(runs: pd.DataFrame, variants: list[tuple[str, str, callable]], name: str, title: str, notes: list[str],
                against: tuple[tuple[str, str], ...] = ()) -> Table:
    """Rows (model, variant), columns per task: ours, the paper's value, and for each (label, method) of
    `against` the paired difference from that variant's cell (rpo.report.paired)."""
    tasks = list(dict.fromkeys(runs["task"]))
    selector = {method: select for _, method, select in variants}
    data, lines = [], []
    for model, block in runs.groupby("model", sort=True, dropna=False):
        for label, method, select in variants:
            line, found = {"model": model, "method": label}, False
            for task in tasks:
                cell = block[(block["task"] == task) & select(block)]
                paper_text, paper_value = _paper_for(task, model, method)
                line[task] = NOT_RUN
                comparisons = {}
                if not cell.empty:
                    pooled = pool_runs(cell)
                    line[task], found = format_pooled(pooled), True
                    for base_label, base_method in against:
                        base = block[(block["task"] == task) & selector[base_method](block)]
                        if not base.empty and base_method != method:
                            base_paper = _paper_for(task, model, base_method)[1]
                            comparisons[base_label] = {**compare(cell, base), "paper_diff": None if paper_value is None
                                                       or base_paper is None else paper_value - base_paper}
                    data.append({"task": task, "model": model, "method": method, "label": label, **pooled,
                                 "paper": paper_value, **{f"vs {b}: {k}": v for b, r in comparisons.items()
                                                          for k, v in r.items()}})
                line[_our_paper_column(task)] = paper_text
                for base_label, _ in against:
                    result = comparisons.get(base_label)
                    line[f"{task}: vs {base_label}"] = (NOT_RUN if cell.empty else "" if result is None else
                                                         format_difference(result, result["paper_diff"]))
            if found:
                lines.append(line)
    if not lines:
        raise DataError(f"{name}: no runs for any of {', '.join(v[0] for v in variants)}")
    extra = [PAIRED_NOTE.format(" / ".join(f"'vs {label}'" for label, _ in against))] if against else []
    return Table(name, title, pd.DataFrame(lines), pd.DataFrame(data), notes + [CI_NOTE] + extra
                 + [TASK_NOTE, _paper_model_note(runs)] + _protocol_note(runs))


def _defaults_note(defaults: Defaults) -> str:
    parts = [f"each method at batch size {defaults.batch_size}" if defaults.batch_size is not None else ""]
    if defaults.tau is not None or defaults.embedder is not None:
        tau = f" at tau={defaults.tau:g}" if defaults.tau is not None else ""
        parts.append(f"RPO{tau}" + (f" with embedder {defaults.embedder}" if defaults.embedder else ""))
    text = "; ".join(p for p in parts if p)
    return text[:1].upper() + text[1:] + "." if text else "Every run found (no defaults given)."


def table1(runs: pd.DataFrame, defaults: Defaults = Defaults()) -> Table:
    """Win rate by method x task (x model), each method at its defaults."""
    variants = [(METHOD_LABELS[m], m, lambda b, m=m: b["method"] == m) for m in TABLE1_METHODS]
    return _by_variant(select(runs, "table1", defaults), variants, "table1",
                       "Table 1: GPT-judge win rate against the chosen response, by method", [_defaults_note(defaults)],
                       against=(("DPO", "dpo"), ("SFT", "sft")))


# label, key (data and paper lookup), method, role: None, "default" or "control" (the embedder), "matched"
WEIGHTING_ROWS = (
    ("DPO", "dpo", "dpo", None),
    ("Uniform weights (w=1)", "rpo-uniform", "rpo-uniform", None),
    ("Diagonal-heavy (alpha=0.8)", "rpo-diagonal", "rpo-diagonal", None),
    ("Embedding-weighted (RPO-Paired)", "rpo-paired", "rpo-paired", "default"),
    ("DPO at RPO-Paired's beta_eff (matched-beta control)", MATCHED, "dpo", "matched"),
    ("Random-embedding control", "rpo-paired-random", "rpo-paired", "control"),
    ("RPO-Unpaired", "rpo-unpaired", "rpo-unpaired", "default"),
    ("Random-embedding control (RPO-Unpaired)", "rpo-unpaired-random", "rpo-unpaired", "control"),
)
assert {row[2] for row in WEIGHTING_ROWS} == set(WEIGHTING_METHODS)


def weighting(runs: pd.DataFrame, defaults: Defaults = Defaults()) -> Table:
    """Uniform / diagonal / embedding-weighted / matched-beta DPO / random-embedding control vs DPO (and
    RPO-Unpaired); every row also against the matched-beta control where it ran."""
    selected = select(runs, "weighting", defaults)
    control = embedder_short(defaults.control_embedder) if defaults.control_embedder else None
    matched = selected["beta_of"].notna() if "beta_of" in selected else pd.Series(False, index=selected.index)

    def chooser(method, role):
        if role in (None, "matched"):
            return lambda b: (b["method"] == method) & (matched[b.index] == (role == "matched"))
        return lambda b: (b["method"] == method) & ((b["embedder"] == control) == (role == "control"))

    variants = [(label, key, chooser(method, role)) for label, key, method, role in WEIGHTING_ROWS]
    against = (("DPO", "dpo"),) + ((("matched-beta DPO", MATCHED),) if matched.any() else ())
    return _by_variant(selected, variants, "weighting", "Weighting ablation: how the contrast matrix is weighted",
                       [_defaults_note(defaults) + f" The control uses {defaults.control_embedder or 'no'} prompt "
                        "embeddings.", *_matched_note(selected[matched])], against=against)


def _matched_note(controls: pd.DataFrame) -> list[str]:
    """The matched-beta control's beta per task (each seed's: beta x the mean w_ii of its source run)."""
    if controls.empty:
        return []
    betas = "; ".join(f"{task} {', '.join(f'{b:.4g}' for b in block.sort_values('seed')['beta'])}"
                      for task, block in controls.groupby("task", sort=False))
    return [f"Matched-beta control: DPO at beta_eff = beta x the mean diagonal weight w_ii over the RPO-Paired run's "
            f"own batches (same data, embeddings, tau, seed and batch plan), one control per RPO-Paired seed. "
            f"beta_eff by task and seed: {betas}."]


def _grid(runs: pd.DataFrame, name: str, title: str, column: str, column_label, row_key: str, notes: list[str], paper_col,
          dpo: pd.DataFrame | None = None) -> Table:
    """Rows (task, model, row_key), one column per value of `column`; with `dpo` (DPO's runs at the
    defaults), each followed by its paired difference from DPO's cell of the same task and model."""
    values = sorted(runs[column].dropna().unique())
    data, lines = [], []
    for (task, model, key), block in runs.groupby(["task", "model", row_key], sort=True, dropna=False):
        line = {"task": task, "model": model, row_key: key}
        base = None if dpo is None else dpo[(dpo["task"] == task) & (dpo["model"].astype(str) == str(model))]
        for value in values:
            cell = block[block[column] == value]
            line[column_label(value)] = NOT_RUN
            versus = None
            if not cell.empty:
                pooled = pool_runs(cell)
                line[column_label(value)] = format_pooled(pooled)
                versus = compare(cell, base) if base is not None and not base.empty else None
                data.append({"task": task, "model": model, row_key: key, column: value, **pooled,
                             **{f"vs DPO: {k}": v for k, v in (versus or {}).items()}})
            if dpo is not None:
                line[f"{column_label(value)}: vs DPO"] = NOT_RUN if cell.empty else (
                    format_difference(versus) if versus else "no DPO run")
        if paper_col is not None:
            line["paper"] = paper_col(task, model, key)
        lines.append(line)
    extra = [PAIRED_NOTE.format("'vs DPO'")] if dpo is not None else []
    return Table(name, title, pd.DataFrame(lines), pd.DataFrame(data),
                 notes + [CI_NOTE] + extra + [TASK_NOTE] + _protocol_note(runs))


def table3(runs: pd.DataFrame, defaults: Defaults = Defaults()) -> Table:
    """RPO-Paired: tau x embedder, per task."""
    selected = select(runs, "table3", defaults)
    if selected.empty:
        raise DataError("table3: no rpo-paired runs")
    if selected["tau"].isna().any():
        raise DataError(f"table3: rpo-paired run(s) {', '.join(selected[selected['tau'].isna()]['run'])} have no 'tau' in run.json")
    paper_tau, paper_embedder = paper.RPO_DEFAULTS

    def paper_col(task, model, embedder):
        if embedder != embedder_short(paper_embedder):
            return paper.NOT_AVAILABLE
        text, _ = _paper_for(task, model, "rpo-paired")
        return text if text == paper.NOT_AVAILABLE else f"{text} at tau={paper_tau:g}"

    return _grid(selected, "table3", "Table 3: RPO-Paired win rate by temperature tau and prompt embedder",
                 "tau", lambda t: f"tau={t:g}", "embedder",
                 ["The paper's per-cell sweep values are not known here; 'paper' gives its default setting only. "
                  + PAPER_NOTE],
                 paper_col, dpo=_dpo_runs(runs, defaults))


def _dpo_runs(runs: pd.DataFrame, defaults: Defaults) -> pd.DataFrame:
    """DPO's runs as Table 1 shows them (its defaults): the baseline of the 'vs DPO' columns."""
    table1_runs = select(runs, "table1", defaults)
    return table1_runs[table1_runs["method"] == "dpo"]


def table4(runs: pd.DataFrame, defaults: Defaults = Defaults()) -> Table:
    """Win rate by batch size for DPO and RPO, per task (RPO at the default tau and embedder)."""
    selected = select(runs, "table4", defaults)
    if selected.empty or selected["batch_size"].isna().all():
        raise DataError("table4: no dpo / rpo-paired / rpo-unpaired runs with a batch_size")
    is_global = selected["contrast_scope"].fillna("micro") == "global"
    selected["method"] = selected["method"].map(METHOD_LABELS) + is_global.map({True: " (global scope)", False: ""})
    return _grid(selected, "table4", "Table 4: win rate by batch size (the contrast matrix is one micro-batch)",
                 "batch_size", lambda b: f"bs={int(b)}", "method",
                 ["The paper's batch-size numbers are not known here (it reports that larger per-GPU batches help "
                  "RPO and that batch 2 is about DPO)."], None)


ANNOTATOR_NOTE = ("Annotator: alpaca_eval_gpt4_turbo_fn is the paper's (GPT-4 Turbo ranks the two outputs by a "
                  "function call); weighted_alpaca_eval_gpt4_turbo is the AlpacaEval 2.0 leaderboard's (a soft "
                  "preference from the judge's 'm'/'M' log-probs). Their scores are not comparable, and the paper "
                  "column only with the paper's annotator.")
INSTRUCTIONS_NOTE = ("n: instructions annotated. The paper's public code generated for 800 of the 805 instructions "
                     "(its data loader drops a final partial batch of 32); the paper profile generates for all 805.")


def _lc_cell(row) -> tuple[str, str | None]:
    """The LC cell, and the note that explains an n/a (the full reason rpo.alpacaeval recorded)."""
    lc = row.get("lc_win_rate")
    if lc is not None and not pd.isna(lc):
        return percent(lc), None
    short, reason = _value(row.get("lc_unavailable")), _value(row.get("lc_unavailable_reason"))
    if short is None:
        return f"{paper.NOT_AVAILABLE} (not recorded)", ("LC n/a (not recorded): the result predates "
                                                         "rpo.alpacaeval recording why; rerun its evaluate")
    return f"{paper.NOT_AVAILABLE} ({short})", f"LC n/a ({short}): {reason or short}"


def _reference_name(row) -> str:
    return _value(row.get("reference_generator")) or "not recorded"


def table2(alpacaeval: pd.DataFrame) -> Table:
    """AlpacaEval 2.0 win rate per run and annotator, beside the paper's values."""
    lines, data, lc_notes = [], [], {}
    ordered = alpacaeval.assign(order=alpacaeval["method"].map(_method_order)).sort_values(
        ["model", "order", "run", "annotator"])
    for _, row in ordered.iterrows():
        lc_text, lc_note = _lc_cell(row)
        if lc_note is not None:
            lc_notes.setdefault(lc_note, []).append(row["run"])
        lines.append({"model": row["model"], "method": METHOD_LABELS[row["method"]], "run": row["run"],
                      "annotator": row["annotator"], "reference": _reference_name(row), "n": int(row["n"]),
                      "win rate": format_cell(row["win_rate"], row["ci_low"], row["ci_high"]),
                      "SE": percent(row["standard_error"]), "LC win rate": lc_text,
                      "paper": paper.paper_cell("alpacaeval", row["method"])})
        data.append({"task": "instructions", "model": row["model"], "method": row["method"],
                     "label": METHOD_LABELS[row["method"]], "run": row["run"], "annotator": row["annotator"],
                     "reference": _reference_name(row),
                     "n": int(row["n"]), "win_rate": row["win_rate"], "ci_low": row["ci_low"],
                     "ci_high": row["ci_high"], "paper": paper.paper_win_rate("alpacaeval", row["method"])})
    references = ", ".join(sorted({line["reference"] for line in lines}))
    notes = [f"AlpacaEval win rate vs the reference outputs of {references} (as the reference rows name their "
             "generator; the paper's: gpt4_turbo, AlpacaEval 2.0) in %, 95% interval in brackets (percentile "
             "bootstrap over alpaca_eval's per-instruction preferences, soft ones included); SE: alpaca_eval's "
             "standard error; LC: length-controlled (the paper reports the plain rate).",
             ANNOTATOR_NOTE, INSTRUCTIONS_NOTE,
             *(f"{note} (runs: {', '.join(runs)})" for note, runs in lc_notes.items()),
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
