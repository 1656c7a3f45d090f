# Config validation, path helpers and target lists. Wiring only: what a run means lives in
# rpo.pipeline, how it trains in rpo.train.
import json
import os
import shlex
import sys

from rpo.config import validate_config
from rpo.pipeline import EMBEDDING_LOSSES, embedder_short, experiment_runs, parse_run


validate_config(config)

# Shell commands call `python -m rpo...`: use the interpreter running Snakemake (`.venv/bin/snakemake`
# works without an activated venv); with --sdm conda the job's env still comes first on PATH.
os.environ.update(PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))

RESULTS = config["results_dir"]
DATA = f"{RESULTS}/data"
TASKS = config["data"]["tasks"]
MODELS = list(config["models"])
RPO = config["rpo"]
EMBEDDERS = list(dict.fromkeys(RPO["embedders"] + ([RPO["control_embedder"]] if RPO.get("control_embedder") else [])))
EMBEDDER_BY_SHORT = {embedder_short(e): e for e in EMBEDDERS}
RUNS = experiment_runs(config)  # the union over tasks
RUNS_BY_TASK = {t: [r.name for r in experiment_runs(config, t)] for t in TASKS}
THREADS = config.get("threads", 1)
MEM_MB = config.get("mem_mb", 4000)
GPUS = config.get("gpus", 0)
LOCAL_ORACLE = config["judge"]["backend"] == "local-oracle"
ALPACA_METHODS = (config.get("alpacaeval") or {}).get("runs", [])


wildcard_constraints:
    model="[A-Za-z0-9._-]+",
    task="dialogue|summarization",
    seed=r"\d+",
    run=r"[a-z-]+_[A-Za-z0-9._-]+",
    emb="[A-Za-z0-9._-]+",


def quoted_json(obj):
    return shlex.quote(json.dumps(obj, sort_keys=True))


def run_settings(wildcards):
    return parse_run(wildcards.run, EMBEDDERS)


def model_dir(model, task, run):
    return f"{RESULTS}/{model}/{task}/models/{run}"


def train_overrides(stage, extra):
    """key=value arguments for `python -m rpo.train`: shared training keys, the stage's keys, the run's."""
    keys = {**config["training"], **config[stage], **extra, "threads": THREADS}
    keys.pop("reference_batch_size", None)
    return " ".join(shlex.quote(f"{k}={json.dumps(v)}") for k, v in sorted(keys.items()) if v is not None)


def launcher(gpus=GPUS):
    """One process per GPU (torchrun) when there are several, else plain python. Training ranks run DDP
    or FSDP as training.fsdp says; refcache and generation ranks each take a share of the batches."""
    return f"torchrun --standalone --nproc_per_node {gpus}" if int(gpus) > 1 else "python"


def preference_overrides(wildcards):
    run = run_settings(wildcards)
    extra = {"method": run.method, "seed": run.seed, **run.trainer_batch(config["preference"]["batch_size"])}
    if run.method in EMBEDDING_LOSSES:
        extra.update(tau=run.tau, embedder=run.embedder)
    return train_overrides("preference", extra)


def preference_inputs(wildcards):
    run = run_settings(wildcards)
    inputs = {
        "data": f"{DATA}/{wildcards.task}/train.jsonl",
        "sft": model_dir(wildcards.model, wildcards.task, f"sft_seed{run.seed}"),
        "refcache": f"{RESULTS}/{wildcards.model}/{wildcards.task}/refcache/sft_seed{run.seed}.pt",
    }
    if run.method in EMBEDDING_LOSSES:
        inputs["embeddings"] = f"{RESULTS}/embeddings/{wildcards.task}/{embedder_short(run.embedder)}.pt"
    return inputs


def judge_wrapper():
    """The local oracle judge: an OpenAI-compatible server on 127.0.0.1 that lives for one command."""
    return f"python -m rpo.judge.local --world {DATA}/world.json --" if LOCAL_ORACLE else ""


def judge_inputs():
    return {"world": f"{DATA}/world.json"} if LOCAL_ORACLE else {}


def run_names(task):
    return RUNS_BY_TASK[task]


def winrate_files(model=None):
    return [f"{RESULTS}/{m}/{t}/judgments/{r}.winrate.json" for m in ([model] if model else MODELS)
            for t in TASKS for r in run_names(t)]


def alpaca_runs():
    return [r.name for r in RUNS if r.method in ALPACA_METHODS and _is_default(r)]


def _is_default(run):
    if run.method in EMBEDDING_LOSSES:
        return (run.tau, run.embedder, run.batch_size) == (RPO["default_tau"], RPO["default_embedder"],
                                                           config["preference"]["batch_size"])
    return run.method == "sft" or run.batch_size == config["preference"]["batch_size"]


def alpaca_files():
    return [f"{RESULTS}/{m}/instructions/alpacaeval/{r}.json" for m in MODELS for r in alpaca_runs()]


TABLES = ["table1", "table2", "table3", "table4", "weighting"]
FIGURES = ["table1", "table2", "tau", "table4", "weighting"]


def all_targets():
    """Every table and figure of every model: the `all` target."""
    tables = [t for t in TABLES if t != "table2" or alpaca_runs()]
    figures = [f for f in FIGURES if f != "table2" or alpaca_runs()]
    return (
        [f"{RESULTS}/tables/{m}/{t}.md" for m in MODELS for t in tables]
        + [f"{RESULTS}/figures/{m}/{f}.png" for m in MODELS for f in figures]
        + [f"{RESULTS}/figures/weights_heatmap_{t}.png" for t in TASKS]
        + [f"{RESULTS}/figures/{m}/curves" for m in MODELS]
    )


# -- evaluation ----------------------------------------------------------------------------------
GEN = config["generation"]
JUDGE = config["judge"]


def generation_args():
    return (f"--n-prompts {GEN.get('n_prompts', 256)} --max-new-tokens {GEN.get('max_new_tokens', 256)}"
            f" --top-p {GEN.get('top_p', 0.95)} --temperature {GEN.get('temperature', 1.0)}"
            f" --batch-size {GEN.get('batch_size', 8)}"
            f" --max-prompt-length {config['training'].get('max_prompt_length', 256)}")


# -- report --------------------------------------------------------------------------------------
TABLE_COMMAND = {"table1": "table1", "table2": "table2", "table3": "table3", "table4": "table4",
                 "weighting": "ablation"}
FIGURE_COMMAND = {"table1": "fig-table1", "table2": "fig-table2", "tau": "fig-tau", "table4": "fig-batch",
                  "weighting": "fig-ablation"}


def report_inputs(wildcards, name):
    """Judged runs (their win rates and run.json) of one model; AlpacaEval results for table 2."""
    model = wildcards.model
    if name == "table2":
        return {"alpaca": [f"{RESULTS}/{model}/instructions/alpacaeval/{r}.json" for r in alpaca_runs()],
                "models": [model_dir(model, TASKS[0], r) for r in alpaca_runs()]}
    return {"winrates": winrate_files(model),
            "models": [model_dir(model, t, r) for t in TASKS for r in run_names(t)]}


def expected_runs(name):
    if name == "table2":
        return " ".join(f"instructions/{r}" for r in alpaca_runs())
    return " ".join(f"{t}/{r}" for t in TASKS for r in run_names(t))
