"""The run vocabulary: which runs a config asks for, what each run's name says, which runs each table
shows at which defaults, and the names of the tables and figures. The Snakemake rules and rpo.report
both read it from here; the rules only wire it to files, so the logic is tested.

Run names are output paths, so a name says everything that distinguishes a run:

    sft_seed1
    dpo_bs8_seed1                              dpo, ipo, kto, rpo-diagonal, rpo-uniform
    rpo-paired_tau0.5_minilm_bs8_seed1         rpo-paired, rpo-unpaired (embedder by short name)
    rpo-paired_tau0.5_minilm_bs32_global_seed1 one contrast matrix over the global batch of 32
    dpo_matched-rpo-paired_tau0.5_minilm_bs8_seed1
                                               DPO at that run's effective beta (beta x its mean w_ii)
    rpo-paired_tau0.5_minilm_beta0.3_bs8_seed1 a beta sweep's run at beta 0.3 (rpo.sweep); no _beta: the config's

Seeds: SFT trains once, at the first of `seeds`; every preference run starts from that model. A
preference seed changes the run's batch order and RPO-Unpaired's chosen/rejected draws. Generation and
judging use the first seed for every run (common random numbers: two runs' samples differ only where
their models do), so runs of different seeds differ in training alone.

Names are only ever built from settings, never parsed back: a rule looks its run up by name in the
config's experiment matrix (`runs_by_name`), and passes the run's record (`Run.record`: name and
settings) to rpo.train, which writes it into run.json, where the report reads it. Every name of a config:

    python -m rpo.pipeline --configfile config.yaml [--task dialogue]
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import shlex
import sys
from dataclasses import asdict, dataclass, fields as dataclass_fields

from rpo.errors import ConfigError
from rpo.losses import EMBEDDING_LOSSES, MATCHED_BETA_SOURCES, get_loss, hyperparameter_names
from rpo.train_config import DEFAULTS as TRAIN_DEFAULTS

# -- embedders -------------------------------------------------------------------------------------
# The one short form of an embedder name: run names, embedding files and the report's grouping.
EMBEDDER_SHORT = {"all-MiniLM-L6-v2": "minilm", "sentence-t5-large": "t5large",
                  "all-distilroberta-v1": "distilroberta", "tfidf-svd": "tfidf", "random": "random"}
ST_ORG = "sentence-transformers/"  # bare names resolve there (rpo.embed does the same)


def embedder_short(name: str) -> str:
    bare = name.removeprefix(ST_ORG)
    return EMBEDDER_SHORT.get(bare, bare.replace("/", "--").replace("_", "-"))


# -- runs ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    method: str
    seed: int
    batch_size: int | None = None
    tau: float | None = None
    embedder: str | None = None  # the full embedder name
    scope: str = "micro"  # "global": batch_size is the global batch one contrast matrix spans
    beta_of: str | None = None  # a matched-beta control: the name of the run whose effective beta it takes
    beta: float | None = None  # a beta sweep's own beta (rpo.sweep); None: the config's, as every other run

    def record(self) -> dict:
        """The run's identity as run.json records it (key `run`, which the rule passes to rpo.train): its
        name and the settings that make it (those set), so the report reads a run, never rebuilds it."""
        return {"name": self.name, **{k: v for k, v in asdict(self).items() if v is not None}}

    @classmethod
    def from_record(cls, record) -> "Run":
        """The run a run.json's `run` records; its settings must make its name."""
        fields = {f.name for f in dataclass_fields(cls)}
        if not isinstance(record, dict) or not {"name", "method", "seed"} <= set(record) or set(record) - fields - {"name"}:
            raise ConfigError(f"not a run record (name, method, seed and any of {', '.join(sorted(fields))}): {record!r}")
        try:
            run = cls(**{k: v for k, v in record.items() if k != "name"})
            name = run.name
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"run record {record!r}: {exc}") from None
        if name != record["name"]:
            raise ConfigError(f"run record names {record['name']!r} but its settings make {name!r}")
        return run

    @classmethod
    def matched_beta(cls, source: "Run") -> "Run":
        """DPO at `source`'s effective beta: the same seed, batch size and so batch plan (rpo.train
        beta_matched_to reads the effective beta from the source run's run.json)."""
        if source.method not in MATCHED_BETA_SOURCES:
            raise ConfigError(f"run {source.name}: a matched-beta control needs a paired embedding-weighted run "
                              f"({', '.join(MATCHED_BETA_SOURCES)}): its w_ii weighs each pair's own contrast")
        return cls("dpo", source.seed, source.batch_size, scope=source.scope, beta_of=source.name)

    @property
    def name(self) -> str:
        if self.method == "sft":
            return f"sft_seed{self.seed}"
        if self.beta_of is not None:
            return f"{self.method}_matched-{self.beta_of}"
        middle = f"_tau{self.tau:g}_{embedder_short(self.embedder)}" if self.method in EMBEDDING_LOSSES else ""
        beta = f"_beta{self.beta:g}" if self.beta is not None else ""
        scope = "_global" if self.scope == "global" else ""
        return f"{self.method}{middle}{beta}_bs{self.batch_size}{scope}_seed{self.seed}"

    def trainer_batch(self, micro_batch_size: int, ranks: int = 1) -> dict:
        """batch_size / gradient_accumulation_steps / contrast_scope for rpo.train. A `_global` run's
        batch size is the global batch (the paper's 64 = 8 GPUs x 8), so its accumulation divides by
        the training ranks too: rpo.train's global batch is micro-batch x accumulation x ranks."""
        if self.scope != "global":
            return {"batch_size": self.batch_size, "contrast_scope": "micro"}
        if self.batch_size % (micro_batch_size * ranks):
            raise ConfigError(f"run {self.name}: global batch {self.batch_size} is not a multiple of the "
                              f"micro-batch {micro_batch_size} (preference.batch_size) x {ranks} training "
                              f"rank(s) (gpus); change batch_size_ablation.global_batch_sizes")
        return {"batch_size": micro_batch_size,
                "gradient_accumulation_steps": self.batch_size // (micro_batch_size * ranks),
                "contrast_scope": "global"}


# -- which runs each table shows -------------------------------------------------------------------
# Table 1 compares methods at their defaults on every task; the weighting variants, the tau x
# embedder grid, the random-embedding control and the batch-size ablation are ablations, which the
# paper ran on HH only: `ablation_tasks` says where they run (default: every task).
TABLE1_METHODS = ("sft", "ppo", "dpo", "ipo", "kto", "rpo-unpaired", "rpo-paired")  # the paper lists PPO second
TAU_METHODS = ("rpo-paired",)
BATCH_METHODS = ("dpo", *EMBEDDING_LOSSES)
WEIGHTING_METHODS = ("dpo", "rpo-uniform", "rpo-diagonal", "rpo-paired", "rpo-unpaired")
WEIGHTING_ABLATIONS = tuple(m for m in WEIGHTING_METHODS if m not in TABLE1_METHODS)


@dataclass(frozen=True)
class Defaults:
    """The settings of a method's main run; None: any value (the report then refuses to pool runs
    that differ in it)."""
    batch_size: int | None = None
    tau: float | None = None
    embedder: str | None = None
    control_embedder: str | None = None

    @classmethod
    def from_config(cls, config: dict) -> "Defaults":
        rpo = config["rpo"]
        return cls(config["preference"]["batch_size"], rpo["default_tau"], rpo["default_embedder"],
                   rpo.get("control_embedder"))

    def is_control(self, run: Run) -> bool:
        return (run.method in EMBEDDING_LOSSES and self.control_embedder is not None
                and embedder_short(run.embedder) == embedder_short(self.control_embedder))

    def matches(self, run: Run, vary: tuple[str, ...] = ()) -> bool:
        """Whether `run` is at the defaults in every setting but those in `vary` (batch_size, scope,
        tau, embedder; "control": the embedder may also be the control embedder; "matched": the run may
        be a matched-beta control)."""
        if run.method == "sft":
            return True
        checks = {"batch_size": self.batch_size is None or run.batch_size == self.batch_size,
                  "scope": run.scope == "micro", "matched": run.beta_of is None,
                  "beta": run.beta is None}  # a beta sweep's own beta: no table's run (rpo.report.sweep's)
        if run.method in EMBEDDING_LOSSES:
            checks["tau"] = self.tau is None or (run.tau is not None and math.isclose(run.tau, self.tau))
            checks["embedder"] = (self.embedder is None or embedder_short(run.embedder) == embedder_short(self.embedder)
                                  or ("control" in vary and self.is_control(run)))
        return all(ok for key, ok in checks.items() if key not in vary)

    def cli_args(self) -> str:
        """The flags of `python -m rpo.report` that carry these defaults."""
        flags = (("--main-batch-size", self.batch_size), ("--default-tau", self.tau),
                 ("--default-embedder", self.embedder), ("--control-embedder", self.control_embedder))
        return " ".join(f"{flag} {shlex.quote(str(value))}" for flag, value in flags if value is not None)


# -- artefacts: one name each, the file stem, the Snakemake target and the rpo.report argument -------
TABLES = ("table1", "table2", "table3", "table4", "weighting", "regime")
ALPACAEVAL_TABLE = "table2"
# table -> (methods it shows, settings in which its runs may differ from the defaults)
TABLE_RUNS = {"table1": (TABLE1_METHODS, ()), "table3": (TAU_METHODS, ("tau", "embedder")),
              "table4": (BATCH_METHODS, ("batch_size", "scope")), "weighting": (WEIGHTING_METHODS, ("control", "matched")),
              "regime": ((*TABLE1_METHODS, *WEIGHTING_ABLATIONS), ("matched",))}  # rpo.report.regime
FIGURES = {"table1": "table1", "table2": "table2", "tau": "table3", "table4": "table4", "weighting": "weighting",
           "vs_dpo": "table1", "regime": "regime"}  # vs_dpo: every method's paired difference from DPO
CURVES = "curves"  # results/figures/{model}/curves/{task}/{run}.png
HEATMAP = "weights_heatmap"  # results/figures/weights_heatmap_{task}.png
assert set(TABLE_RUNS) | {ALPACAEVAL_TABLE} == set(TABLES) and set(FIGURES.values()) <= set(TABLES)


def in_table(table: str, run: Run, defaults: Defaults) -> bool:
    methods, vary = TABLE_RUNS[table]
    return run.method in methods and defaults.matches(run, vary)


# -- the experiment matrix -------------------------------------------------------------------------
def ablation_tasks(config: dict) -> list[str]:
    tasks = config["data"]["tasks"]
    chosen = config.get("ablation_tasks")
    return list(tasks) if chosen is None else [t for t in tasks if t in chosen]


def sft_seed(config: dict) -> int:
    """The one SFT run's seed: every preference run, of every seed, starts from its model."""
    return config["seeds"][0]


def seeded_methods(config: dict) -> tuple[str, ...]:
    """The methods whose main run repeats at every seed (`seeded_methods`; default every method)."""
    chosen = config.get("seeded_methods")
    return tuple(m for m in config["methods"] if chosen is None or m in chosen)


def experiment_runs(config: dict, task: str | None = None) -> list[Run]:
    """Every run the config asks for on `task` (None: the union over tasks): SFT, the baselines, the
    RPO grid and the ablations, the last three only on the config's ablation tasks, all at the first
    seed; the main runs of `seeded_methods` (and their matched-beta controls) at every seed."""
    tasks = (config.get("data") or {}).get("tasks")
    if task is None and tasks:
        return list(dict.fromkeys(run for t in tasks for run in experiment_runs(config, t)))
    ablate = task is None or task in ablation_tasks(config)
    rpo = config["rpo"]
    bs = config["preference"]["batch_size"]
    rpo_defaults = (rpo["default_tau"], rpo["default_embedder"])
    runs: list[Run] = [Run("sft", sft_seed(config))]
    repeated = seeded_methods(config)
    for seed in config["seeds"]:
        first = seed == sft_seed(config)
        for method in config["methods"] if first else repeated:
            if method in EMBEDDING_LOSSES:
                main_run = Run(method, seed, bs, *rpo_defaults)
                runs.append(main_run)
                if rpo.get("matched_beta_control") and method in MATCHED_BETA_SOURCES:
                    runs.append(Run.matched_beta(main_run))
                if not (first and ablate):
                    continue
                if method in TAU_METHODS:  # the grid Table 3 shows, no run that no table shows
                    runs += [Run(method, seed, bs, tau, emb) for tau in rpo["taus"] for emb in rpo["embedders"]]
                if rpo.get("control_embedder") and method in rpo.get("control_methods", EMBEDDING_LOSSES):
                    runs.append(Run(method, seed, bs, rpo["default_tau"], rpo["control_embedder"]))
            elif method != "sft" and (ablate or method not in WEIGHTING_ABLATIONS):
                runs.append(Run(method, seed, bs))
        ablation = (config.get("batch_size_ablation") or {}) if ablate and first else {}
        sizes, global_sizes = ablation.get("batch_sizes", []), ablation.get("global_batch_sizes", [])
        for method in ablation.get("methods", []):
            settings = rpo_defaults if method in EMBEDDING_LOSSES else ()
            runs += [Run(method, seed, size, *settings) for size in sizes]
            runs += [Run(method, seed, size, *settings, scope="global") for size in global_sizes]
    return list(dict.fromkeys(runs))  # keep order, drop duplicates


def runs_by_name(config: dict, task: str | None = None) -> dict[str, Run]:
    """The experiment matrix of `task` (None: every task) by run name: how rules find a run's settings."""
    return {run.name: run for run in experiment_runs(config, task)}


def lookup_run(runs: dict[str, Run], name: str, task: str) -> Run:
    """The run called `name` in `runs` (runs_by_name of `task`), or an error saying how to find valid names."""
    if name in runs:
        return runs[name]
    close = difflib.get_close_matches(name, runs, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"run {name!r} is not in the experiment matrix of task {task!r} (config keys methods, "
                      f"seeds, rpo, batch_size_ablation, ablation_tasks).{hint} Every run name: "
                      f"`python -m rpo.pipeline --configfile <profile> --task {task}`, or `snakemake -n`.")


def table_runs(config: dict, table: str) -> list[tuple[str, Run]]:
    """(task, run) of every run `table` shows; AlpacaEval's table: the task is "instructions"."""
    defaults = Defaults.from_config(config)
    if table == ALPACAEVAL_TABLE:
        return [("instructions", run) for run in alpacaeval_runs(config)]
    return [(task, run) for task in config["data"]["tasks"] for run in experiment_runs(config, task)
            if in_table(table, run, defaults)]


COMPARED_WITH = {"table3": "dpo"}  # table -> the baseline method its 'vs' columns need beyond its own runs


def table_inputs(config: dict, table: str) -> list[tuple[str, Run]]:
    """The runs `table` reads: those it shows, plus its paired baseline's runs at the defaults
    (rpo.report.paired; Table 1 and the weighting table already show DPO and SFT)."""
    runs = table_runs(config, table)
    if table in COMPARED_WITH:
        runs += [(task, run) for task, run in table_runs(config, "table1") if run.method == COMPARED_WITH[table]
                 and any(t == task for t, _ in runs)]
    return list(dict.fromkeys(runs))


def shown_figures(config: dict) -> list[str]:
    """The figures the config's runs can draw: those of tables with runs; vs_dpo only with a DPO run."""
    tables = [t for t in TABLES if table_runs(config, t)]
    has_dpo = any(run.method == "dpo" for _, run in table_runs(config, "table1"))
    return [f for f, table in FIGURES.items() if table in tables and (f != "vs_dpo" or has_dpo)]


def alpacaeval_runs(config: dict) -> list[Run]:
    """The runs that answer the instruction set: the methods of alpacaeval.runs, each at its defaults and
    the first seed."""
    defaults, methods = Defaults.from_config(config), (config.get("alpacaeval") or {}).get("runs") or ()
    return [run for run in experiment_runs(config) if run.method in methods and defaults.matches(run)
            and run.seed == sft_seed(config)]


# -- training arguments ----------------------------------------------------------------------------
REFCACHE_ONLY = ("reference_batch_size", "reference_chunk_records")  # training: keys rpo.refcache reads, rpo.train does not
# training: keys passed only where they differ from the trainer's default, so that the runs of a config that
# does not set them keep the params they had before the keys existed (Snakemake reruns a job on new params)
ONLY_IF_SET = ("activation_checkpointing", "attn_implementation")


def training_ranks(config: dict) -> int:
    """Processes a training job runs as: one per GPU when there are several (torchrun), else one."""
    return max(1, int(config.get("gpus") or 0))


def train_settings(config: dict, run: Run) -> dict:
    """The settings `python -m rpo.train` gets for `run`: the training: keys, its stage's keys (sft: or
    preference:) less other losses' hyperparameters (preference: sets beta and diagonal_weight for
    every method; rpo.train refuses a hyperparameter its loss does not take), then its method's own
    `losses:` entry (which wins over the stage-wide value), then the run's own."""
    stage = "sft" if run.method == "sft" else "preference"
    foreign = set(hyperparameter_names()) - set(get_loss(run.method).hyperparameters)
    settings = {k: v for k, v in config["training"].items()
                if k not in REFCACHE_ONLY and not (k in ONLY_IF_SET and v == TRAIN_DEFAULTS[k])}
    if settings.get("dtype") != "bfloat16":  # read with bfloat16 only: other runs' params stay as they were
        settings.pop("fp32_master_weights", None)
    settings.update((k, v) for k, v in config[stage].items() if k not in foreign)
    settings.update((config.get("losses") or {}).get(run.method) or {})
    settings.update(method=run.method, seed=run.seed, run=run.record())  # run: recorded in run.json, for the report
    if run.beta_of is not None:  # rpo.train takes beta from the source run (rule input beta_matched_to)
        settings.pop("beta", None)
    elif run.beta is not None:  # a sweep's beta wins over the stage's and the method's own (rpo.sweep)
        settings["beta"] = run.beta
    if stage == "preference":
        settings.update(run.trainer_batch(config["preference"]["batch_size"], training_ranks(config)))
    if run.method in EMBEDDING_LOSSES:
        settings.update(tau=run.tau, embedder=run.embedder)
    settings["device"] = config["device"]  # threads: the job's, which the rule passes (rpo.distributed.set_rank_threads)
    if config["logging"]["report_to"]:  # only when set: the runs' params (and so Snakemake's reruns) stay as they were
        settings["report_to"] = config["logging"]["report_to"]
    return {k: v for k, v in sorted(settings.items()) if v is not None}


def as_overrides(settings: dict) -> str:
    """key=value arguments (values as JSON, each shell-quoted) for `python -m rpo.train`."""
    return " ".join(shlex.quote(f"{k}={json.dumps(v)}") for k, v in settings.items())


def list_runs(argv, runs_of, prog: str, what: str) -> int:
    """A run-listing command: read and validate --configfile, print the names `runs_of(config, task)`
    gives, one a line; a bad file or task is one line on stderr and exit status 1."""
    parser = argparse.ArgumentParser(prog=prog, description=f"List {what}.")
    parser.add_argument("--configfile", default="config.yaml", help="a profile (default: config.yaml)")
    parser.add_argument("--task", default=None, help="one task's runs (default: the union over tasks)")
    args = parser.parse_args(argv)
    import yaml

    from rpo.config import validate_config

    try:
        with open(args.configfile, encoding="utf-8") as f:
            config = validate_config(yaml.safe_load(f))
        if args.task is not None and args.task not in config["data"]["tasks"]:
            raise ConfigError(f"--task: {args.task!r} is not in data.tasks ({', '.join(config['data']['tasks'])})")
        runs = runs_of(config, args.task)
    except (OSError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(run.name for run in runs))
    return 0


def main(argv=None) -> int:
    return list_runs(argv, experiment_runs, "python -m rpo.pipeline",
                     "a config's run names (the beta sweep's: python -m rpo.sweep)")


if __name__ == "__main__":
    sys.exit(main())
