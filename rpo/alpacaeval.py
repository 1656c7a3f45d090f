"""AlpacaEval 2.0 through the `alpaca_eval` package (paper: annotator alpaca_eval_gpt4_turbo_fn, GPT-4
Turbo reference outputs, plain win rate). ANNOTATORS are the two the pipeline offers: the paper's
ranking annotator and the AlpacaEval 2.0 leaderboard's weighted_alpaca_eval_gpt4_turbo (soft
preferences from the judge's "m"/"M" log-probs); their scores are not comparable.

    export_model_outputs("samples/rpo.jsonl", "alpaca/rpo.json", "rpo-paired")
    export_reference_outputs("samples/rpo.jsonl", "alpaca/reference.json")
    run_alpaca_eval("alpaca/rpo.json", "alpaca/reference.json", output_dir="alpaca/out",
                    caching_path="alpaca/annotations_cache.json")

alpaca_eval runs in a subprocess: it reads OPENAI_API_BASE / OPENAI_API_KEY / OPENAI_CLIENT_CONFIG_PATH
once, at import, so a fresh process is the only reliable way to point it at a given endpoint. It is
given explicit reference outputs, a caching path and fn_metric get_winrate, so nothing is fetched from
the Hugging Face hub. The length-controlled win rate needs the hub file df_gamed.csv: it is computed
afterwards whenever alpaca_eval can (the file is cached, or the hub is reachable); otherwise it is None
and the result says why (lc_unavailable: short form, lc_unavailable_reason). Rates are fractions in [0, 1]
(alpaca_eval itself prints percentages). The 95% interval is the project's one interval
(rpo.stats.bootstrap_interval) over alpaca_eval's per-instruction scores, read from its annotations.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from rpo.errors import USER_ERRORS, ConfigError, DataError
from rpo.io import read_jsonl, write_json
from rpo.judge.base import scrub_api_key
from rpo.judge.samples import read_samples
from rpo.stats import bootstrap_interval

PAPER_ANNOTATOR = "alpaca_eval_gpt4_turbo_fn"
LEADERBOARD_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
ANNOTATORS = (PAPER_ANNOTATOR, LEADERBOARD_ANNOTATOR)  # the schema's alpacaeval.annotators_config enum
DEFAULT_ANNOTATOR = PAPER_ANNOTATOR
# What the length-controlled GLM downloads (alpaca_eval.metrics.glm_winrate._get_featurized_data).
LC_HUB_REPO, LC_HUB_FILE = "tatsu-lab/alpaca_eval", "df_gamed.csv"
# rpo.data.loaders.load_eval_prompts names AlpacaEval's instructions alpaca_eval-<split>-<row>. The GLM
# looks up each instruction's difficulty by that row, so the exports carry it (generation shuffles).
_ALPACA_ROW = re.compile(r"^alpaca_eval-.+-(\d+)$")
ROW_FIELD = "alpaca_eval_index"
# A reference row whose data names no generator (the generated world's instructions have none).
UNNAMED_REFERENCE = "unnamed reference"


class AlpacaEvalError(RuntimeError):
    """The alpaca_eval run failed; the message carries the end of its (key-scrubbed) log."""


def _export(path, out_path, field: str, generator_name: str | None) -> int:
    """generator_name None: each row's metadata.generator (the data's generator column), else UNNAMED_REFERENCE."""
    rows = read_samples(path, required=("id", field), metadata_fields=("instruction",))
    outputs = []
    for row in rows:
        generator = generator_name or row["metadata"].get("generator") or UNNAMED_REFERENCE
        output = {"instruction": row["metadata"]["instruction"], "output": row[field], "generator": generator,
                  "dataset": row["metadata"].get("dataset")}
        number = _ALPACA_ROW.match(str(row["id"]))
        if number:
            output[ROW_FIELD] = int(number.group(1))
        outputs.append(output)
    # alpaca_eval pairs model and reference outputs by instruction text: a repeat would pair wrongly.
    repeated = [text for text, count in Counter(o["instruction"] for o in outputs).items() if count > 1]
    if repeated:
        raise DataError(f"{path}: instruction repeated across rows, e.g. {repeated[0][:80]!r}")
    write_json(out_path, outputs)
    return len(outputs)


def export_model_outputs(samples_path, out_path, generator_name: str) -> int:
    """Samples JSONL -> alpaca_eval model_outputs JSON; metadata.instruction is the raw instruction."""
    return _export(samples_path, out_path, "response", generator_name)


def export_reference_outputs(path, out_path, generator_name: str | None = None) -> int:
    """Reference outputs from EvalPrompt rows (`reference`) or samples rows (`chosen`), each named by the
    generator its data names (metadata.generator, from AlpacaEval's generator column) unless one is given."""
    rows = read_jsonl(path)
    field = "reference" if rows and "reference" in rows[0] else "chosen"
    return _export(path, out_path, field, generator_name)


def _evaluators_dir() -> Path:
    spec = importlib.util.find_spec("alpaca_eval")  # locate without importing (the import is slow)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("alpaca_eval: the package is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "evaluators_configs"


def resolve_annotator(annotators_config) -> str:
    """A built-in annotator name as is, or an existing config path made absolute (alpaca_eval needs that)."""
    path = Path(annotators_config)
    if path.exists():
        return str(path.resolve())
    name = str(annotators_config)
    if "/" not in name and (_evaluators_dir() / name / "configs.yaml").is_file():
        return name
    raise ConfigError(f"annotators_config: {name!r} is neither an existing config path nor an annotator "
                      f"built into alpaca_eval (see {_evaluators_dir()})")


def _hub_file_cached() -> bool:
    from alpaca_eval import constants
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(LC_HUB_REPO, LC_HUB_FILE, cache_dir=constants.DEFAULT_CACHE_DIR,
                                   repo_type="dataset")
    return isinstance(found, str)


def length_controlled(annotations_path) -> dict:
    """alpaca_eval's length-controlled win rate, or None with why not: lc_win_rate, lc_unavailable (the
    short form a table cell shows), lc_unavailable_reason (the full sentence)."""
    import pandas as pd
    from huggingface_hub import constants as hub

    where = f"{LC_HUB_REPO} {LC_HUB_FILE}"
    cached = _hub_file_cached()
    if not cached and hub.HF_HUB_OFFLINE:
        return {"lc_win_rate": None, "lc_unavailable": f"offline, no {LC_HUB_FILE}",
                "lc_unavailable_reason": f"alpaca_eval needs {where} from the hub; not in the HF cache and "
                                         "HF_HUB_OFFLINE=1"}
    annotations = pd.read_json(annotations_path)
    if ROW_FIELD not in annotations or annotations[ROW_FIELD].isna().any():
        return {"lc_win_rate": None, "lc_unavailable": "not AlpacaEval's instructions",
                "lc_unavailable_reason": "alpaca_eval's length-controlled GLM reads each instruction's difficulty "
                                         "from AlpacaEval's 805 by row; these instructions are not all AlpacaEval's "
                                         "(ids not alpaca_eval-<split>-<row>)"}
    # the GLM takes an annotation's row in AlpacaEval from the frame's (unnamed) index
    annotations.index = pd.Index(annotations.pop(ROW_FIELD).astype(int).to_list())
    try:
        from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate

        metrics = get_length_controlled_winrate(annotations, save_weights_dir=None)
        return {"lc_win_rate": metrics["length_controlled_winrate"] / 100.0, "lc_unavailable": None,
                "lc_unavailable_reason": None}
    except Exception as exc:  # noqa: BLE001 - hub unreachable or a degenerate fit: the plain rate still stands
        error = f"{type(exc).__name__}: {exc}"[:400]
        if not cached and not _hub_file_cached():
            return {"lc_win_rate": None, "lc_unavailable": f"hub unreachable, no {LC_HUB_FILE}",
                    "lc_unavailable_reason": f"alpaca_eval could not fetch {where} from the hub: {error}"}
        return {"lc_win_rate": None, "lc_unavailable": "GLM fit failed",
                "lc_unavailable_reason": f"alpaca_eval's length-controlled GLM failed: {error}"}


def run_alpaca_eval(model_outputs, reference_outputs, annotators_config=DEFAULT_ANNOTATOR, *, output_dir,
                    caching_path, base_url: str | None = None, timeout_s: float | None = None,
                    seed: int = 1) -> dict:
    """Annotate model vs reference outputs with alpaca_eval; return the annotator, win_rate, its bootstrap
    interval (ci_low, ci_high; `seed` seeds it), standard_error, n, lc_win_rate (or why it is None).

    base_url, when given, points alpaca_eval's OpenAI client at that endpoint (OPENAI_API_BASE; a set
    OPENAI_CLIENT_CONFIG_PATH is dropped for the run so it cannot override it). The key comes from
    OPENAI_API_KEY. Annotations are cached in `caching_path`: a rerun pays only for new pairs.
    """
    annotator = resolve_annotator(annotators_config)
    output_dir, caching_path = Path(output_dir).resolve(), Path(caching_path).resolve()
    env = dict(os.environ)
    if base_url is not None:
        env["OPENAI_API_BASE"] = base_url
        env.pop("OPENAI_CLIENT_CONFIG_PATH", None)
    if not env.get("OPENAI_API_KEY") and not env.get("OPENAI_CLIENT_CONFIG_PATH"):
        raise ConfigError("OPENAI_API_KEY: not set (nor OPENAI_CLIENT_CONFIG_PATH); alpaca_eval needs one")
    generator = read_json_list(model_outputs)[0]["generator"]
    # Table 2 names the reference by what its rows say, not by what the config meant to use
    reference_generator = ", ".join(sorted({row["generator"] for row in read_json_list(reference_outputs)}))
    output_dir.mkdir(parents=True, exist_ok=True)
    caching_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "alpaca_eval.main", "evaluate",
        "--model_outputs", str(Path(model_outputs).resolve()),
        "--reference_outputs", str(Path(reference_outputs).resolve()),
        "--annotators_config", annotator,
        "--output_path", str(output_dir),
        "--caching_path", str(caching_path),
        "--fn_metric", "get_winrate", "--sort_by", "win_rate",
        "--precomputed_leaderboard", "None", "--is_cache_leaderboard", "False",
    ]
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise AlpacaEvalError(f"alpaca_eval did not finish within {timeout_s} s (cached answers are kept "
                              f"in {caching_path} only once alpaca_eval saves them)") from None
    log = scrub_api_key(proc.stdout + proc.stderr)
    (output_dir / "alpaca_eval.log").write_text(log, encoding="utf-8")
    if proc.returncode != 0:
        raise AlpacaEvalError(f"alpaca_eval exited with status {proc.returncode}; end of its log "
                              f"({output_dir / 'alpaca_eval.log'}):\n{log[-2000:]}")
    # alpaca_eval puts results in a sub-folder named after a built-in annotator, not after a path.
    results_dir = output_dir if "/" in annotator else output_dir / annotator
    return {**_read_results(results_dir, generator, annotator, seed), "reference_generator": reference_generator}


def read_json_list(path) -> list[dict]:
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read alpaca_eval outputs: {exc}") from exc
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) and "generator" in r for r in rows):
        raise DataError(f"{path}: expected a non-empty JSON list of objects with a 'generator' field")
    return rows


def preference_scores(preferences) -> list[float]:
    """alpaca_eval's per-instruction scores in [0, 1], by its own rule (AbsoluteScoringRule): preference
    1 = reference better, 2 = model better, 1.5 (or the legacy 0) = draw, anything in between a soft
    preference; unparseable (NaN) and out-of-range annotations are dropped. Their mean is its win rate."""
    scores = []
    for value in preferences:
        value = 1.5 if value == 0 else float(value)
        if 1.0 <= value <= 2.0:  # False for NaN
            scores.append(value - 1.0)
    return scores


LEADERBOARD_COLUMNS = ("win_rate", "standard_error", "n_total", "n_wins", "n_wins_base", "n_draws")


def _read_frame(path: Path, read, columns, hint: str):
    """alpaca_eval's output file as a DataFrame with `columns`; DataError naming what is missing."""
    try:
        frame = read(path)
    except (OSError, ValueError) as exc:  # missing, empty, not CSV / JSON
        raise DataError(f"{path}: cannot read alpaca_eval's output ({type(exc).__name__}: {exc}); {hint}") from exc
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise DataError(f"{path}: alpaca_eval's output lacks the column(s) {', '.join(missing)} (found: "
                        f"{', '.join(map(str, frame.columns))}); {hint}")
    return frame


def _read_results(results_dir: Path, generator: str, annotator: str, seed: int) -> dict:
    import pandas as pd

    # Another alpaca_eval version may write other columns: name the file and the columns rather than fail later.
    hint = (f"is the installed alpaca_eval the pinned one (envs/requirements.txt)? Delete {results_dir} and rerun "
            "`python -m rpo.alpacaeval evaluate`")
    leaderboard_path = results_dir / "leaderboard.csv"
    leaderboard = _read_frame(leaderboard_path, lambda p: pd.read_csv(p, index_col=0), LEADERBOARD_COLUMNS, hint)
    if generator not in leaderboard.index:
        raise DataError(f"{leaderboard_path}: no row for generator {generator!r} (rows: "
                        f"{', '.join(map(str, leaderboard.index))}); {hint}")
    row = leaderboard.loc[generator]
    annotations_path = results_dir / "annotations.json"
    preferences = _read_frame(annotations_path, pd.read_json, ("preference",), hint)["preference"]
    scores = preference_scores(preferences)
    if not scores:
        raise DataError(f"{annotations_path}: no parseable preference among {len(preferences)} annotations")
    mean, ci_low, ci_high = bootstrap_interval(scores, seed=seed)
    win_rate = _percent_to_fraction(row["win_rate"])
    if not math.isclose(mean, win_rate, abs_tol=1e-9):
        raise DataError(f"{annotations_path}: per-instruction scores average {mean}, but alpaca_eval's "
                        f"leaderboard says win rate {win_rate}")
    return {
        "annotator": annotator,
        "generator": generator,
        "win_rate": win_rate,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "seed": seed,
        "standard_error": _percent_to_fraction(row["standard_error"]),
        "n": int(row["n_total"]),
        "n_wins": int(row["n_wins"]),
        "n_losses": int(row["n_wins_base"]),
        "n_draws": int(row["n_draws"]),
        "n_unparseable": int(preferences.isna().sum()),
        **length_controlled(annotations_path),
        "annotations": str(annotations_path),
    }


def _percent_to_fraction(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value / 100.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rpo.alpacaeval", description="AlpacaEval 2.0 via alpaca_eval.")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="samples JSONL -> alpaca_eval outputs JSON")
    export.add_argument("--samples", required=True, type=Path)
    export.add_argument("--out", required=True, type=Path, help="model_outputs JSON")
    export.add_argument("--generator", required=True, help="the model's name on the leaderboard")
    export.add_argument("--reference-out", type=Path, default=None, help="also write the reference outputs")
    export.add_argument("--reference-from", type=Path, default=None,
                        help="EvalPrompt JSONL holding the references (default: the samples' chosen)")
    export.add_argument("--reference-generator", default=None,
                        help="name the references so (default: the generator each row's data names)")
    evaluate = commands.add_parser("evaluate", help="annotate with alpaca_eval and summarise")
    evaluate.add_argument("--model-outputs", required=True, type=Path)
    evaluate.add_argument("--reference-outputs", required=True, type=Path)
    evaluate.add_argument("--annotators-config", default=DEFAULT_ANNOTATOR, help="built-in name or config path")
    evaluate.add_argument("--output-dir", required=True, type=Path)
    evaluate.add_argument("--caching-path", required=True, type=Path)
    evaluate.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint for the annotator")
    evaluate.add_argument("--seed", type=int, default=1, help="seeds the bootstrap interval")
    evaluate.add_argument("--summary", required=True, type=Path, help="result JSON")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            n = export_model_outputs(args.samples, args.out, args.generator)
            if args.reference_out is not None:
                export_reference_outputs(args.reference_from or args.samples, args.reference_out,
                                         args.reference_generator)
            print(f"wrote {n} outputs to {args.out}")
            return 0
        result = run_alpaca_eval(args.model_outputs, args.reference_outputs, args.annotators_config,
                                 output_dir=args.output_dir, caching_path=args.caching_path, base_url=args.base_url,
                                 seed=args.seed)
    except (AlpacaEvalError, *USER_ERRORS) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_json(args.summary, result)
    lc = (f"n/a, {result['lc_unavailable_reason']}" if result["lc_win_rate"] is None
          else f"{100 * result['lc_win_rate']:.2f}%")
    print(f"{result['generator']}: AlpacaEval win rate {100 * result['win_rate']:.2f}% over {result['n']} "
          f"instructions (length-controlled: {lc})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
