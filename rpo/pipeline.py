"""The experiment matrix: which runs a config asks for, and what each run's name means.

Run names are output paths, so a name must say everything that distinguishes a run and parse back
into the settings that produced it:

    sft_seed1
    dpo_bs8_seed1                              dpo, ipo, kto, rpo-diagonal, rpo-uniform
    rpo-paired_tau0.5_minilm_bs8_seed1         rpo-paired, rpo-unpaired (embedder by short name)
    rpo-paired_tau0.5_minilm_bs32_global_seed1 one contrast matrix over the global batch of 32

The Snakefile only wires these names to rules; the logic lives here so it is tested.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from rpo.errors import ConfigError
from rpo.losses import REGISTRY, losses_needing

EMBEDDING_LOSSES = losses_needing("embeddings")

# Short names keep paths readable; anything else is used as given with "/" replaced.
EMBEDDER_SHORT = {
    "all-MiniLM-L6-v2": "minilm",
    "sentence-transformers/all-MiniLM-L6-v2": "minilm",
    "sentence-t5-large": "t5large",
    "sentence-transformers/sentence-t5-large": "t5large",
    "all-distilroberta-v1": "distilroberta",
    "sentence-transformers/all-distilroberta-v1": "distilroberta",
    "tfidf-svd": "tfidf",
    "random": "random",
}
RUN_RE = re.compile(
    r"^(?P<method>[a-z-]+?)(?:_tau(?P<tau>[0-9.]+)_(?P<embedder>[A-Za-z0-9.-]+))?(?:_bs(?P<batch_size>\d+))?"
    r"(?P<scope>_global)?_seed(?P<seed>\d+)$"
)


def embedder_short(name: str) -> str:
    return EMBEDDER_SHORT.get(name, name.replace("/", "--").replace("_", "-"))


@dataclass(frozen=True)
class Run:
    method: str
    seed: int
    batch_size: int | None = None
    tau: float | None = None
    embedder: str | None = None  # the full embedder name
    scope: str = "micro"  # "global": batch_size is the global batch one contrast matrix spans

    @property
    def name(self) -> str:
        if self.method == "sft":
            return f"sft_seed{self.seed}"
        middle = f"_tau{self.tau:g}_{embedder_short(self.embedder)}" if self.method in EMBEDDING_LOSSES else ""
        scope = "_global" if self.scope == "global" else ""
        return f"{self.method}{middle}_bs{self.batch_size}{scope}_seed{self.seed}"

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def trainer_batch(self, micro_batch_size: int) -> dict:
        """batch_size / gradient_accumulation_steps / contrast_scope for rpo.train."""
        if self.scope != "global":
            return {"batch_size": self.batch_size, "contrast_scope": "micro"}
        if self.batch_size % micro_batch_size:
            raise ConfigError(f"run {self.name}: global batch {self.batch_size} is not a multiple of the "
                              f"micro-batch {micro_batch_size} (preference.batch_size)")
        return {"batch_size": micro_batch_size, "gradient_accumulation_steps": self.batch_size // micro_batch_size,
                "contrast_scope": "global"}


def parse_run(name: str, embedders: list[str]) -> Run:
    """Invert Run.name, resolving the short embedder name against the configured embedders."""
    match = RUN_RE.match(name)
    if not match or match["method"] not in REGISTRY:
        raise ConfigError(f"run name {name!r} does not name a known method; e.g. dpo_bs8_seed1")
    method, seed = match["method"], int(match["seed"])
    scope = "global" if match["scope"] else "micro"
    if method == "sft":
        return Run("sft", seed)
    if match["batch_size"] is None:
        raise ConfigError(f"run name {name!r} lacks a batch size (_bsN)")
    if method not in EMBEDDING_LOSSES:
        return Run(method, seed, int(match["batch_size"]), scope=scope)
    if match["tau"] is None:
        raise ConfigError(f"run name {name!r}: {method} needs _tau<value>_<embedder>")
    by_short = {embedder_short(e): e for e in embedders}
    if match["embedder"] not in by_short:
        raise ConfigError(f"run name {name!r}: embedder {match['embedder']!r} is not one of the configured "
                          f"embedders ({', '.join(by_short)})")
    return Run(method, seed, int(match["batch_size"]), float(match["tau"]), by_short[match["embedder"]], scope)


# Table 1 compares every method at its defaults on every task; the weighting variants, the tau x
# embedder grid, the random-embedding control and the batch-size ablation are ablations, which the
# paper ran on HH only: `ablation_tasks` says where they run (default: every task).
WEIGHTING_ABLATIONS = ("rpo-diagonal", "rpo-uniform")


def ablation_tasks(config: dict) -> list[str]:
    tasks = config["data"]["tasks"]
    chosen = config.get("ablation_tasks")
    return list(tasks) if chosen is None else [t for t in tasks if t in chosen]


def experiment_runs(config: dict, task: str | None = None) -> list[Run]:
    """Every run the config asks for on `task` (None: the union over tasks): SFT, the baselines, the
    RPO grid and the ablations, the last three only on the config's ablation tasks."""
    tasks = (config.get("data") or {}).get("tasks")
    if task is None and tasks:
        return list(dict.fromkeys(run for t in tasks for run in experiment_runs(config, t)))
    ablate = task is None or task in ablation_tasks(config)
    rpo = config["rpo"]
    bs = config["preference"]["batch_size"]
    runs: list[Run] = []
    for seed in config["seeds"]:
        runs.append(Run("sft", seed))
        for method in config["methods"]:
            if method in EMBEDDING_LOSSES:
                runs.append(Run(method, seed, bs, *default_rpo(config)))
                if ablate:
                    runs += [Run(method, seed, bs, tau, emb) for tau in rpo["taus"] for emb in rpo["embedders"]]
                    if rpo.get("control_embedder") and method in rpo.get("control_methods", EMBEDDING_LOSSES):
                        runs.append(Run(method, seed, bs, rpo["default_tau"], rpo["control_embedder"]))
            elif method != "sft" and (ablate or method not in WEIGHTING_ABLATIONS):
                runs.append(Run(method, seed, bs))
        ablation = (config.get("batch_size_ablation") or {}) if ablate else {}
        for method in ablation.get("methods", []):
            defaults = default_rpo(config) if method in EMBEDDING_LOSSES else ()
            for size in ablation.get("batch_sizes", []):
                runs.append(Run(method, seed, size, *defaults))
            for size in ablation.get("global_batch_sizes", []):
                runs.append(Run(method, seed, size, *defaults, scope="global"))
    return list(dict.fromkeys(runs))  # keep order, drop duplicates


def default_rpo(config: dict) -> tuple[float, str]:
    return config["rpo"]["default_tau"], config["rpo"]["default_embedder"]


def run_summary(run: Run) -> dict:
    """The settings a run name encodes, for run.json and for the report."""
    return {"run": run.name, **run.as_dict()}
