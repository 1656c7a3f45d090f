"""Read run outputs (docs/design.md "Run outputs") into DataFrames, refusing anything incomplete.

Every judged run must have its run.json and every trained run its judgment; an `expected_runs`
list ("task/run" or a bare run name: in every task) reads exactly those runs, each of which must be
present. Errors name every missing file or run at once.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from rpo.data.records import INSTRUCTIONS as ALPACAEVAL_TASK, PREFERENCE_TASKS as TASKS
from rpo.errors import ConfigError, DataError
from rpo.io import read_json_object, read_jsonl, read_jsonl_once
from rpo.losses import REGISTRY
from rpo.pipeline import Run

METHODS = tuple(REGISTRY)
# beta_of: a matched-beta control's source run, by name; identity: the rpo.pipeline.Run that run.json records
# (key `run`), which decides the tables a run is in (rpo.pipeline.in_table)
CONFIG_COLUMNS = ("method", "beta", "tau", "embedder", "batch_size", "seed", "model", "contrast_scope", "beta_of",
                  "identity")
WINRATE_KEYS = ("n", "wins", "ties", "losses", "unparseable", "win_rate", "ci_low", "ci_high")
ALPACAEVAL_KEYS = ("win_rate", "standard_error", "n", "ci_low", "ci_high")  # lc_win_rate optional


def _require(obj: dict, keys: Iterable[str], path: Path) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}")


def _check_fraction(obj: dict, keys: Iterable[str], path: Path) -> None:
    for key in keys:
        value = obj[key]
        if value is None and key != "win_rate":
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise DataError(f"{path}: key {key!r} must be a fraction in [0, 1], got {value!r}")
    if obj.get("ci_low") is not None and obj.get("ci_high") is not None:
        if not obj["ci_low"] <= obj["win_rate"] <= obj["ci_high"]:
            raise DataError(f"{path}: win_rate {obj['win_rate']} lies outside [ci_low, ci_high] = "
                            f"[{obj['ci_low']}, {obj['ci_high']}]")


def _model_label(name: str) -> str:
    """A hub id ("org/name") stays as it is; a local folder path is shortened to its last part."""
    name = name.rstrip("/")
    is_path = name.startswith((".", "/")) or name.count("/") > 1
    if not is_path:
        return name
    # The pipeline builds base models at results/{model}/base: the model's name is the folder above.
    return Path(name).parent.name if Path(name).name == "base" else Path(name).name


def base_model(config: dict, path: Path) -> str:
    """The base model a run descends from. The trainer records the model it started from, which for a
    preference run is its SFT run's folder: follow such links through the sibling run folders."""
    seen = {path.parent.name}
    model, where = config.get("model"), path
    while True:
        if not isinstance(model, str) or not model:
            raise DataError(f"{where}: key 'model' must name the model the run started from, got {model!r}")
        name = Path(model.rstrip("/")).name
        parent = path.parent.parent / name / "run.json"
        if name in seen or not parent.is_file():
            if Path(model.rstrip("/")).parent.name == "models":  # a run folder ({task}/models/{run})
                raise DataError(f"{where}: key 'model' points to run {name!r}, whose run config {parent} is missing")
            return _model_label(model)
        seen.add(parent.parent.name)
        where, model = parent, read_json_object(parent).get("model")


def run_identity(config: dict, path: Path) -> Run:
    """The run a run.json records (key `run`, rpo.pipeline.Run.record, written by rpo.train as its rule
    passes it). Nothing is derived from folder names: a run.json without it is refused."""
    if config.get("run") is None:
        raise DataError(f"{path}: records no run identity (key 'run', which rpo.train writes as its Snakemake rule "
                        "passes it); it was trained before the key existed or by hand: retrain it")
    try:
        return Run.from_record(config["run"])
    except ConfigError as exc:
        raise DataError(f"{path}: key 'run': {exc}; retrain it") from None


def read_run_config(path: Path, run: str, task: str | None = None) -> dict:
    """A run.json, checked: a known method, its recorded run named `run` (the folder it lies in, which
    is where rule inputs look it up) and `task` (when recorded) matching where the file lies; `model`
    resolved to the base model; missing optional keys become None."""
    config = read_json_object(path)
    _require(config, ("method", "model"), path)
    identity = run_identity(config, path)
    if identity.name != run:
        raise DataError(f"{path}: records run {identity.name!r} but lies in folder {run!r}")
    if task is not None and config.get("task", task) != task:
        raise DataError(f"{path}: key 'task' is {config['task']!r} but the file lies under task {task!r}")
    if config["method"] not in METHODS:
        raise DataError(f"{path}: key 'method' is {config['method']!r}, expected one of {', '.join(METHODS)}")
    row = {**{key: config.get(key) for key in CONFIG_COLUMNS}, "model": base_model(config, path)}
    row["contrast_scope"] = row["contrast_scope"] or "micro"
    row.update(beta_of=identity.beta_of, identity=identity)
    if row["contrast_scope"] == "global":  # one contrast matrix spans the global batch: that is its size
        row["batch_size"] = config.get("global_batch_size", row["batch_size"])
    return row


def _split_expected(expected_runs: Sequence[str] | None, tasks: Sequence[str]) -> set[tuple[str, str]]:
    """'task/run' names one task's run; a bare 'run' must exist in every task of `tasks`."""
    wanted = set()
    for item in expected_runs or ():
        if "/" in item:
            task, run = item.split("/", 1)
            if task in tasks:
                wanted.add((task, run))
        else:
            wanted.update((task, item) for task in tasks)
    return wanted


def collect_runs(results_dir, tasks: Sequence[str] = TASKS, expected_runs: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per judged run: its winrate.json joined with its run.json; with `expected_runs`,
    exactly those runs.

    Columns: task, run, method, beta, tau, embedder, batch_size, seed, model, contrast_scope, beta_of
    (a matched-beta control's source run), identity (the rpo.pipeline.Run its run.json records), n,
    wins, ties, losses, unparseable, win_rate, ci_low, ci_high, judge_seed (the bootstrap's seed),
    protocol (the judging protocol, rpo.judge.protocols) and judgments (the per-prompt verdicts beside
    the winrate.json). Raises DataError naming every judgment without a run.json, every run.json
    without a judgment and every expected run missing.
    """
    results_dir = Path(results_dir)
    wanted = None if expected_runs is None else _split_expected(expected_runs, tasks)
    rows, problems = [], []
    for task in tasks:
        judgments_dir = results_dir / task / "judgments"
        models_dir = results_dir / task / "models"
        if not judgments_dir.is_dir():
            problems.append(f"missing folder {judgments_dir}")
            continue
        judged = {p.name[: -len(".winrate.json")]: p for p in sorted(judgments_dir.glob("*.winrate.json"))}
        trained = {p.parent.name: p for p in sorted(models_dir.glob("*/run.json"))}
        if wanted is not None:
            judged = {run: p for run, p in judged.items() if (task, run) in wanted}
            trained = {run: p for run, p in trained.items() if (task, run) in wanted}
        for run in sorted(set(trained) - set(judged)):
            problems.append(f"run {task}/{run} has {trained[run]} but no judgment {judgments_dir / (run + '.winrate.json')}")
        for run, path in judged.items():
            if run not in trained:
                problems.append(f"judgment {path} has no run config {models_dir / run / 'run.json'}")
                continue
            result = read_json_object(path)
            _require(result, WINRATE_KEYS, path)
            if result.get("run", run) != run or result.get("task", task) != task:
                raise DataError(f"{path}: names run {result.get('run')!r} of task {result.get('task')!r}, "
                                f"expected {run!r} of {task!r}")
            _check_fraction(result, ("win_rate", "ci_low", "ci_high"), path)
            _check_judged_samples(judgments_dir / f"{run}.jsonl", results_dir / task / "samples" / f"{run}.jsonl")
            config = read_run_config(trained[run], run, task)
            rows.append({"task": task, "run": run, **config, **{k: result[k] for k in WINRATE_KEYS},
                         "judge_seed": result.get("seed"),
                         # summaries written before the key existed were all judged with the rationale template
                         "protocol": result.get("protocol", "rationale"),
                         "template_sha256": result.get("template_sha256"),
                         "judgments": str(judgments_dir / f"{run}.jsonl"),
                         "samples": str(results_dir / task / "samples" / f"{run}.jsonl")})
    present = {(row["task"], row["run"]) for row in rows}
    for task, run in sorted((wanted or set()) - present):
        problems.append(f"expected run {task}/{run} is missing (no {results_dir / task / 'judgments' / (run + '.winrate.json')})")
    if problems:
        raise DataError(f"{results_dir}: incomplete run outputs:\n  " + "\n  ".join(problems))
    if not rows:
        raise DataError(f"{results_dir}: no judged runs under tasks {', '.join(tasks)}")
    return pd.DataFrame(rows, columns=["task", "run", *CONFIG_COLUMNS, *WINRATE_KEYS, "judge_seed", "protocol",
                                       "template_sha256", "judgments", "samples"])


def _check_judged_samples(judgments: Path, samples: Path) -> None:
    """Where both exist, the judgments must be of exactly the samples beside them: samples regenerated after
    judging (another prompt set, other responses) would pair a win rate with responses it never judged.
    rpo.judge records the prompt and response of every verdict; judgments without them cannot be checked."""
    if not (judgments.is_file() and samples.is_file()):
        return
    judged = {str(row.get("id")): row for row in read_jsonl_once(judgments, "rejudge the run")}
    if not all("prompt" in row and "response" in row for row in judged.values()):
        return
    sampled = {str(row.get("id")): row for row in read_jsonl_once(samples, "regenerate the samples")}
    only = sorted(set(judged) ^ set(sampled))
    changed = [i for i in sorted(set(judged) & set(sampled)) if any(
        judged[i][key] != sampled[i].get(key) for key in ("prompt", "response"))]
    if not only and not changed:
        return
    example = (f"id {only[0]!r} is only in {judgments if only[0] in judged else samples}" if only else
               f"id {changed[0]!r} has another prompt or response")
    raise DataError(f"{judgments}: judged {len(judged)} samples, but {samples} holds {len(sampled)} that differ "
                    f"({example}); the samples changed after judging: delete {judgments} and its .winrate.json "
                    "and rerun the judge")


def _find_run_config(results_dir: Path, run: str) -> tuple[str, Path] | None:
    """AlpacaEval runs may be models trained for the instructions task or for one of our tasks."""
    for task in (ALPACAEVAL_TASK, *TASKS):
        path = results_dir / task / "models" / run / "run.json"
        if path.is_file():
            return task, path
    return None


def collect_alpacaeval(results_dir, expected_runs: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per results/instructions/alpacaeval/{run}.json (with `expected_runs`: the
    "instructions/run" entries, exactly), joined with the run's run.json (looked up under
    instructions/, then dialogue/, then summarization/). Column `trained_on` says where."""
    results_dir = Path(results_dir)
    folder = results_dir / ALPACAEVAL_TASK / "alpacaeval"
    if not folder.is_dir():
        raise DataError(f"missing folder {folder} (AlpacaEval results)")
    # Only "instructions/run" entries name AlpacaEval runs; bare names belong to the judged tasks.
    wanted = None if expected_runs is None else {
        item.split("/", 1)[1] for item in expected_runs if item.startswith(ALPACAEVAL_TASK + "/")}
    rows, problems = [], []
    for path in sorted(folder.glob("*.json")):
        run = path.stem
        if wanted is not None and run not in wanted:
            continue
        result = read_json_object(path)
        if result.get("ci_low") is None or result.get("ci_high") is None:
            raise DataError(f"{path}: no interval (ci_low, ci_high); rerun `python -m rpo.alpacaeval evaluate`, "
                            "which bootstraps it from alpaca_eval's per-instruction preferences")
        _require(result, ALPACAEVAL_KEYS, path)
        if result.get("run", run) != run:
            raise DataError(f"{path}: key 'run' is {result['run']!r} but the file is named for {run!r}")
        if not result.get("annotator"):
            raise DataError(f"{path}: missing key 'annotator' (which alpaca_eval annotator scored it); rerun "
                            "`python -m rpo.alpacaeval evaluate`, which records it")
        result.setdefault("lc_win_rate", None)
        _check_fraction(result, ("win_rate", "standard_error", "ci_low", "ci_high", "lc_win_rate"), path)
        # why there is no length-controlled rate (rpo.alpacaeval.length_controlled); absent in old results
        lc_why = {key: result.get(key) for key in ("lc_unavailable", "lc_unavailable_reason")}
        found = _find_run_config(results_dir, run)
        if found is None:
            problems.append(f"AlpacaEval result {path} has no run config models/{run}/run.json under "
                            f"{', '.join(str(results_dir / t) for t in (ALPACAEVAL_TASK, *TASKS))}")
            continue
        config = read_run_config(found[1], run)
        rows.append({"task": ALPACAEVAL_TASK, "run": run, "trained_on": found[0], **config,
                     **{k: result[k] for k in (*ALPACAEVAL_KEYS, "annotator", "lc_win_rate")}, **lc_why,
                     # the references' generator as their rows name it (absent in results before it was recorded)
                     "reference_generator": result.get("reference_generator")})
    present = {row["run"] for row in rows}
    for run in sorted((wanted or set()) - present):
        problems.append(f"expected AlpacaEval run {run} is missing (no {folder / (run + '.json')})")
    if problems:
        raise DataError(f"{results_dir}: incomplete AlpacaEval outputs:\n  " + "\n  ".join(problems))
    if not rows:
        raise DataError(f"{folder}: no AlpacaEval results")
    return pd.DataFrame(rows)


def list_trained_runs(results_dir, tasks: Sequence[str] = TASKS) -> pd.DataFrame:
    """Every models/{run}/run.json under the tasks (judged or not): task, run and the config columns."""
    results_dir = Path(results_dir)
    rows = []
    for task in tasks:
        for path in sorted((results_dir / task / "models").glob("*/run.json")):
            config = read_run_config(path, path.parent.name, task)
            rows.append({"task": task, "run": config["identity"].name, **config})
    if not rows:
        raise DataError(f"{results_dir}: no trained runs (models/*/run.json) under tasks {', '.join(tasks)}")
    return pd.DataFrame(rows, columns=["task", "run", *CONFIG_COLUMNS])


PREFERENCE_METRICS = ("rewards/margins", "rewards/accuracies")


def load_metrics(results_dir, task: str, run: str) -> pd.DataFrame:
    """metrics.jsonl of one run as a DataFrame sorted by step; every row needs a numeric step and loss."""
    path = Path(results_dir) / task / "models" / run / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"missing training log {path} of run {task}/{run}")
    rows = read_jsonl(path)
    if not rows:
        raise DataError(f"{path}: no rows")
    for row_no, row in enumerate(rows, start=1):
        for key in ("step", "loss"):
            value = row.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or (key == "loss" and not math.isfinite(value)):
                raise DataError(f"{path}, row {row_no}: key {key!r} must be a finite number, got {value!r}")
    return pd.DataFrame(rows).sort_values("step", kind="stable").reset_index(drop=True)
