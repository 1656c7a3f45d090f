"""Command line: build every table or figure, or one of them (for one Snakemake rule each).

  python -m rpo.report tables  --results results/small --out results/tables/small --config config.yaml
  python -m rpo.report figures --results results/small --out results/figures/small --config config.yaml
  python -m rpo.report table table1 --results results/small --out results/tables/small/table1  (table1.{csv,md,tex})
  python -m rpo.report figure tau   --results results/small --out results/figures/small/tau   (tau.{png,pdf})
  python -m rpo.report curves  --results results/small --out results/figures/small/curves
  python -m rpo.report curve   --results results/small --task dialogue --run dpo_bs8_seed1 --out STEM
  python -m rpo.report weights-example --records train.jsonl --embeddings minilm.pt \
      --embedder all-MiniLM-L6-v2 --model results/small/base --max-length 512 --max-prompt-length 256 \
      --tau 0.5 --batch-size 8 --out example.json
  python -m rpo.report heatmap --weights example.json --out results/figures/weights_heatmap_dialogue
  python -m rpo.report sweep --results results/small --out results/tables/small/sweep \
      --figure results/figures/small/sweep --expected-runs ...   (the beta sweep's table and figure, rpo.sweep)

Table and figure names are rpo.pipeline's (TABLES, FIGURES), as are the runs each table shows: the
main runs are those at the defaults, taken from --config (a pipeline profile) and/or the flags
--main-batch-size, --default-tau, --default-embedder, --control-embedder (Snakemake passes these).
--expected-runs takes "task/run" (or a bare run name, required in every task); AlpacaEval runs are
"instructions/run"; given, exactly those runs are read. Every command exits non-zero with a message
naming what is missing.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import yaml

from rpo.config import validate_config
from rpo.errors import USER_ERRORS, ConfigError, DataError
from rpo.pipeline import ALPACAEVAL_TABLE, CURVES, FIGURES, HEATMAP, TABLES, Defaults
from rpo.report import figures, regime, sweep, tables
from rpo.report.collect import TASKS, collect_alpacaeval, collect_runs, list_trained_runs, load_metrics

BUILDERS = {"table1": tables.table1, "table3": tables.table3, "table4": tables.table4, "weighting": tables.weighting,
            "regime": regime.regime}
PLOTS = {"table1": figures.plot_winrate_bars, "table2": figures.plot_winrate_bars, "tau": figures.plot_tau,
         "table4": figures.plot_batch_size, "weighting": figures.plot_winrate_bars, "vs_dpo": figures.plot_vs_dpo,
         "regime": figures.plot_regime}
assert set(BUILDERS) | {ALPACAEVAL_TABLE} == set(TABLES) and set(PLOTS) == set(FIGURES)


def defaults(args) -> Defaults:
    """--config's defaults, each overridden by its flag where given."""
    base = Defaults()
    if args.config is not None:
        try:
            base = Defaults.from_config(validate_config(yaml.safe_load(args.config.read_text())))
        except OSError as exc:
            raise ConfigError(f"--config: cannot read {args.config}: {exc}") from exc
    given = {"batch_size": args.main_batch_size, "tau": args.default_tau, "embedder": args.default_embedder,
             "control_embedder": args.control_embedder}
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def build_table(name: str, args) -> tables.Table:
    if name == ALPACAEVAL_TABLE:
        return tables.table2(collect_alpacaeval(args.results, args.expected_runs))
    return BUILDERS[name](collect_runs(args.results, args.tasks, args.expected_runs), defaults(args))


def build_figure(name: str, args, stem) -> list[Path]:
    return PLOTS[name](build_table(FIGURES[name], args), stem)


def write_curves(results, tasks, out_dir: Path) -> list[Path]:
    paths = []
    for _, row in list_trained_runs(results, tasks).iterrows():
        metrics = load_metrics(results, row["task"], row["run"])
        paths += figures.plot_training_curves(metrics, figures.training_curve_title(row),
                                              out_dir / row["task"] / row["run"])
    return paths


def write_weight_example(args) -> Path:
    """The first micro-batch the paired RPO trainer sees with this seed, and its weights w_ij."""
    from rpo.data.records import read_records
    from rpo.embed import load_embeddings, text_settings
    from rpo.io import write_json
    from rpo.data.batching import micro_batch_plan

    records = read_records(args.records)
    embeddings = load_embeddings(args.embeddings, args.records, args.embedder,
                                 text_settings(args.model, args.max_length, args.max_prompt_length, None))
    plan = micro_batch_plan({"method": "rpo-paired", "batch_size": args.batch_size, "epochs": 1,
                             "seed": args.seed}, records)
    if not plan:
        raise DataError(f"{args.records}: fewer records than one batch of {args.batch_size}")
    chosen = plan[0][0]
    example = figures.weight_example([records[i].prompt for i in chosen], embeddings[chosen].numpy(), args.tau,
                                     args.embedder)
    write_json(args.out, example)
    return args.out


def _add_common(parser, out_help: str) -> None:
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results)")
    parser.add_argument("--out", type=Path, required=True, help=out_help)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="judged tasks (default: both)")
    parser.add_argument("--expected-runs", nargs="*", default=None,
                        help="read exactly these runs, each required: task/run or run")
    parser.add_argument("--config", type=Path, default=None, help="pipeline profile whose defaults pick the main runs")
    parser.add_argument("--main-batch-size", type=int, default=None, help="batch size of the main runs")
    parser.add_argument("--default-tau", type=float, default=None, help="tau of the main RPO runs")
    parser.add_argument("--default-embedder", default=None, help="embedder of the main RPO runs")
    parser.add_argument("--control-embedder", default=None, help="embedder of the RPO control runs")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rpo.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("tables", help="every table into a folder")
    _add_common(p, "output folder")
    p.add_argument("--targets", nargs="+", choices=TABLES, default=list(TABLES))
    p = sub.add_parser("figures", help="every figure into a folder")
    _add_common(p, "output folder")
    p.add_argument("--targets", nargs="+", choices=[*FIGURES, CURVES], default=[*FIGURES, CURVES])
    p.add_argument("--weights", type=Path, default=None, help=f"weight-example JSON for the heat map ({HEATMAP}.png)")
    p = sub.add_parser("table", help="one table")
    p.add_argument("name", choices=TABLES)
    _add_common(p, "output stem: writes STEM.csv/.md/.tex/.data.csv")
    p = sub.add_parser("figure", help="one figure")
    p.add_argument("name", choices=list(FIGURES))
    _add_common(p, "output stem: writes STEM.png and STEM.pdf")
    _add_common(sub.add_parser(CURVES, help="training curves of every trained run"), "output folder")
    p = sub.add_parser("curve", help="training curves of one run")
    _add_common(p, "output stem")
    p.add_argument("--task", required=True)
    p.add_argument("--run", required=True)
    p = sub.add_parser("weights-example", help="the RPO weights of one training micro-batch, as JSON")
    p.add_argument("--records", type=Path, required=True)
    p.add_argument("--embeddings", type=Path, required=True)
    p.add_argument("--embedder", required=True)
    p.add_argument("--model", type=Path, required=True, help="model folder whose tokenizer the embeddings used")
    p.add_argument("--max-length", type=int, required=True)
    p.add_argument("--max-prompt-length", type=int, required=True)
    p.add_argument("--tau", type=float, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, required=True, help="output JSON")
    p = sub.add_parser("sweep", help="the beta sweep's table and figure (rpo.sweep)")
    _add_common(p, "table stem: writes STEM.csv/.md/.tex/.data.csv")
    p.add_argument("--figure", type=Path, required=True, help="figure stem: writes STEM.png and STEM.pdf")
    p = sub.add_parser("heatmap", help="heat map of one batch's RPO weights")
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="output stem")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    written: list[Path] = []
    try:
        if args.command == "tables":
            for name in args.targets:
                written += tables.write_table(build_table(name, args), args.out / name)
        elif args.command == "table":
            written += tables.write_table(build_table(args.name, args), args.out)
        elif args.command == "figures":
            for name in args.targets:
                if name == CURVES:
                    written += write_curves(args.results, args.tasks, args.out / CURVES)
                else:
                    written += build_figure(name, args, args.out / name)
            if args.weights is not None:
                written += figures.plot_weight_heatmap(figures.read_weight_example(args.weights), args.out / HEATMAP)
        elif args.command == "figure":
            written += build_figure(args.name, args, args.out)
        elif args.command == CURVES:
            written += write_curves(args.results, args.tasks, args.out)
        elif args.command == "curve":
            row = list_trained_runs(args.results, [args.task]).set_index("run")
            if args.run not in row.index:
                raise DataError(f"no run config {args.results / args.task / 'models' / args.run / 'run.json'}")
            config = {"task": args.task, "run": args.run, **row.loc[args.run].to_dict()}
            written += figures.plot_training_curves(load_metrics(args.results, args.task, args.run),
                                                    figures.training_curve_title(config), args.out)
        elif args.command == "weights-example":
            written.append(write_weight_example(args))
        elif args.command == "sweep":
            table = sweep.sweep_table(collect_runs(args.results, args.tasks, args.expected_runs))
            written += tables.write_table(table, args.out) + sweep.plot_sweep(table, args.figure)
        elif args.command == "heatmap":
            written += figures.plot_weight_heatmap(figures.read_weight_example(args.weights), args.out)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
