# Config validation, path helpers and target lists. Wiring only: what a run is, which runs a table
# shows and what each artefact is called live in rpo.pipeline, how a run trains in rpo.train.
import json
import os
import re
import shlex
import sys

from rpo.config import validate_config
from rpo.data.records import PREFERENCE_TASKS
from rpo.embed import on_gpu as embedder_on_gpu
from rpo.losses import EMBEDDING_LOSSES
from rpo.models import PRETRAINED_BUILDS
from rpo.pipeline import (ALPACAEVAL_TABLE, CURVES, FIGURES, HEATMAP, TABLES, Defaults, Run,
                          alpacaeval_runs, as_overrides, embedder_short, lookup_run, runs_by_name, sft_seed, shown_figures,
                          table_inputs, table_runs, train_settings)
from rpo.errors import ConfigError
from rpo.sweep import SWEEP, known_runs, sweep_runs


# Fills in every default (the schema's, the trainer's): below, config[...] needs no fallback.
config = validate_config(config)

# Shell commands call `python -m rpo...`: use the interpreter running Snakemake (`.venv/bin/snakemake`
# works without an activated venv); with --sdm conda the job's env still comes first on PATH.
os.environ.update(PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
# fork_server: `python -m rpo.<stage>` jobs run as children of one process that imported torch and
# transformers once (rpo.launch); an environment variable, so no rule, command or param changes with it.
os.environ.update(RPO_FORK_SERVER="1" if config["fork_server"] else "0")

RESULTS = config["results_dir"]
DATA = f"{RESULTS}/data"
TASKS = config["data"]["tasks"]
MODELS = list(config["models"])
RPO = config["rpo"]
EMBEDDERS = list(dict.fromkeys(RPO["embedders"] + ([RPO["control_embedder"]] if RPO["control_embedder"] else [])))
EMBEDDER_BY_SHORT = {embedder_short(e): e for e in EMBEDDERS}
RUNS_BY_TASK = {t: runs_by_name(config, t) for t in TASKS}  # the default target's runs
KNOWN_RUNS_BY_TASK = {t: known_runs(config, t) for t in TASKS}  # and the beta sweep's (sweep.smk)
THREADS = config["threads"]
MEM_MB = config["mem_mb"]
GPUS = config["gpus"]
LOCAL_ORACLE = config["judge"]["backend"] == "local-oracle"
# `threads` are each process's: a job of one rank per GPU books that many times as many CPUs, of which
# each rank takes its share (rpo.distributed.set_rank_threads). A profile's set-threads overrides it.
JOB_THREADS = THREADS * max(1, GPUS)
# The trainer's precision (rpo.precision) for the jobs that load a model beside it: refcache, generate.
# With them the attention kernel (rpo.models), named only when not the default sdpa (the jobs' params stay).
PRECISION_ARGS = f"--dtype {config['training']['dtype']}" + (
    " --fp32-master-weights" if config["training"]["fp32_master_weights"] else "") + (
    f" --attn-implementation {config['training']['attn_implementation']}"
    if config["training"]["attn_implementation"] != "sdpa" else "")
DEVICE = config["device"]
TIMEOUT = config["training"]["dist_timeout_minutes"]
# The trainer's device and process-group timeout, for refcache and generate (rpo.train takes both as keys)
RANK_ARGS = (f" --device {DEVICE}" if DEVICE else "") + (f" --dist-timeout-minutes {TIMEOUT:g}" if TIMEOUT else "")
# Neural embedders get a GPU where the config has GPUs (the embeddings_gpu rule); the others run on CPU.
GPU_EMBEDDERS = [e for e in EMBEDDER_BY_SHORT if GPUS and embedder_on_gpu(EMBEDDER_BY_SHORT[e])]
CPU_EMBEDDERS = [e for e in EMBEDDER_BY_SHORT if e not in GPU_EMBEDDERS]


wildcard_constraints:
    model="[A-Za-z0-9._-]+",
    task="|".join(PREFERENCE_TASKS),
    seed=r"\d+",
    run=r"[a-z-]+_[A-Za-z0-9._-]+",
    emb="[A-Za-z0-9._-]+",


def quoted_json(obj):
    return shlex.quote(json.dumps(obj, sort_keys=True))


def run_settings(wildcards):
    """The run a job's {task}/{run} names, looked up in the experiment matrix and the beta sweep."""
    return lookup_run(KNOWN_RUNS_BY_TASK[wildcards.task], wildcards.run, wildcards.task)


def model_dir(model, task, run):
    return f"{RESULTS}/{model}/{task}/models/{run}"


def train_overrides(stage, extra):
    """key=value arguments of `python -m rpo.train` for an SFT run (train.smk's sft rule)."""
    return as_overrides(train_settings(config, Run(extra["method"], extra["seed"])))


def launcher(gpus=GPUS):
    """One process per GPU (torchrun) when there are several, else plain python. Training ranks run DDP
    or FSDP as training.fsdp says; refcache and generation ranks each take a share of the batches."""
    return f"torchrun --standalone --nproc_per_node {gpus}" if int(gpus) > 1 else "python"


def preference_overrides(wildcards):
    return as_overrides(train_settings(config, run_settings(wildcards)))


def pretrained_input(model):
    """The folder a `kind: hf` model loads when the `pretrained` rule builds it, else nothing."""
    path = config["models"][model].get("name_or_path") or ""
    return [path] if os.path.dirname(path) == f"{RESULTS}/pretrained" else []


def one_of(names):
    """A wildcard constraint matching exactly `names` (nothing when empty)."""
    return "|".join(map(re.escape, names)) or "(?!)"


def embeddings_path(model, task, embedder):
    # Per model: the text embedded is the prompt as that model's tokenizer cuts it (rpo.embed).
    return f"{RESULTS}/{model}/embeddings/{task}/{embedder_short(embedder)}.pt"


SFT_RUN = Run("sft", sft_seed(config)).name  # every preference run, of every seed, starts from it


def preference_inputs(wildcards):
    run = run_settings(wildcards)
    inputs = {
        "data": f"{DATA}/{wildcards.task}/train.jsonl",
        "sft": model_dir(wildcards.model, wildcards.task, SFT_RUN),
        "refcache": f"{RESULTS}/{wildcards.model}/{wildcards.task}/refcache/{SFT_RUN}.pt",
    }
    if run.method in EMBEDDING_LOSSES:
        inputs["embeddings"] = embeddings_path(wildcards.model, wildcards.task, run.embedder)
    if run.beta_of is not None:  # a matched-beta control reads its beta from the source run's run.json
        inputs["beta_source"] = model_dir(wildcards.model, wildcards.task, run.beta_of)
    return inputs


def judge_wrapper():
    """The local oracle judge: an OpenAI-compatible server on 127.0.0.1 that lives for one command."""
    return f"python -m rpo.judge.local --world {DATA}/world.json --" if LOCAL_ORACLE else ""


def judge_inputs():
    return {"world": f"{DATA}/world.json"} if LOCAL_ORACLE else {}


def run_names(task):
    return list(RUNS_BY_TASK[task])


def alpaca_runs():
    return [r.name for r in alpacaeval_runs(config)]


def all_targets():
    """Every run judged, every table and figure of every model: the `all` target."""
    tables = [t for t in TABLES if table_runs(config, t)]
    figures = shown_figures(config)
    return (
        [f"{RESULTS}/{m}/{t}/judgments/{r}.winrate.json" for m in MODELS for t in TASKS for r in run_names(t)]
        + [f"{RESULTS}/tables/{m}/{t}.md" for m in MODELS for t in tables]
        + [f"{RESULTS}/figures/{m}/{f}.png" for m in MODELS for f in figures]
        + [f"{RESULTS}/figures/{HEATMAP}_{t}.png" for t in TASKS]
        + [f"{RESULTS}/figures/{m}/{CURVES}" for m in MODELS]
    )


# -- evaluation ----------------------------------------------------------------------------------
GEN = config["generation"]
JUDGE = config["judge"]
ALPACAEVAL = config["alpacaeval"]


def generation_args(n_prompts, model):
    # --max-length, when set, replaces --max-new-tokens (rpo.generate): the public code's total budget
    max_length = f" --max-length {GEN['max_length']}" if GEN["max_length"] is not None else ""
    # no --temperature: rpo.generate takes the model's generation config's (the public code's)
    temperature = GEN["temperature_by_model"].get(model, GEN["temperature"])
    temperature = f" --temperature {temperature}" if temperature is not None else ""
    return (f"--n-prompts {n_prompts} --max-new-tokens {GEN['max_new_tokens']}{max_length}"
            f" --top-p {GEN['top_p']} --top-k {GEN['top_k']}{temperature} --batch-size {GEN['batch_size']}"
            f" --max-prompt-length {config['training']['max_prompt_length']}"
            f" --train-max-length {config['training']['max_length']}")


def base_url_arg():
    return f"--base-url {shlex.quote(JUDGE['base_url'])}" if JUDGE["base_url"] else ""


# -- report --------------------------------------------------------------------------------------
REPORT_DEFAULTS = Defaults.from_config(config).cli_args()


def report_inputs(model, table):
    """What one table (or the figure of it) reads: its runs' judgments (AlpacaEval results for
    AlpacaEval's table) and their run.json."""
    runs = table_inputs(config, table)
    if table == ALPACAEVAL_TABLE:
        return {"alpaca": [f"{RESULTS}/{model}/instructions/alpacaeval/{r.name}.json" for _, r in runs],
                "models": [model_dir(model, TASKS[0], r.name) for _, r in runs]}
    judged = [f"{RESULTS}/{model}/{t}/judgments/{r.name}" for t, r in runs]
    inputs = {"winrates": [f"{j}.winrate.json" for j in judged], "judgments": [f"{j}.jsonl" for j in judged],
              "models": [model_dir(model, t, r.name) for t, r in runs]}
    if table == "regime":  # log-ratios and identical samples: rpo.report.regime
        inputs["samples"] = [f"{RESULTS}/{model}/{t}/samples/{r.name}.jsonl" for t, r in runs]
    return inputs


def expected_runs(table):
    return " ".join(f"{t}/{r.name}" for t, r in table_inputs(config, table))


# -- the beta sweep (sweep.smk) --------------------------------------------------------------------
SWEEP_RUNS = sweep_runs(config)


def sweep_judgments(model):
    return [f"{RESULTS}/{model}/{t}/judgments/{r.name}" for t in TASKS for r in SWEEP_RUNS]


def sweep_targets():
    if not SWEEP_RUNS:
        raise ConfigError("the sweep target has no runs: set config keys sweep.betas and sweep.methods")
    return ([f"{j}.winrate.json" for m in MODELS for j in sweep_judgments(m)]
            + [f"{RESULTS}/tables/{m}/{SWEEP}.md" for m in MODELS]
            + [f"{RESULTS}/figures/{m}/{SWEEP}.png" for m in MODELS])
