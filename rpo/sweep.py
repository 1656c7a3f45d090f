"""The beta sweep: does RPO help once its contrasts saturate? (`snakemake --cores 2 sweep`, never part
of the default target.)

At the embedded default's beta RPO-Paired's loss logits (beta * w_ij * S_ij) stay in the near-linear
part of -log sigmoid, where its gradient is DPO's at a smaller beta (rpo.diagnostics). The sweep trains
each method of `sweep.methods` at every beta of `sweep.betas`, every seed and every task, at its
defaults otherwise and from the one SFT model, and beside each paired embedding-weighted run its
matched-beta control (Run.matched_beta: DPO at that run's beta x its mean w_ii, the rule the default
control follows, rpo.diagnostics.matched_beta). Generation and judging are those of every run.

A beta equal to the one a method's main run trains at names that main run (and its control the
default control): the sweep reuses those runs and never trains them twice. The other runs carry
their beta in their name:

    rpo-paired_tau0.5_minilm_beta0.3_bs8_seed2
    dpo_matched-rpo-paired_tau0.5_minilm_beta0.3_bs8_seed2     DPO at that run's beta_eff
    dpo_beta0.3_bs8_seed2

`python -m rpo.sweep --configfile config.yaml` lists them (every task trains the same names).
"""
from __future__ import annotations

import math
import sys

from rpo.errors import ConfigError
from rpo.losses import EMBEDDING_LOSSES, MATCHED_BETA_SOURCES, get_loss
from rpo.pipeline import Run, list_runs, runs_by_name, sft_seed, train_settings

SWEEP = "sweep"  # the target, and the stem of its table and figure (results/{tables,figures}/{model}/sweep.*)


def configured_beta(config: dict, method: str) -> float:
    """The beta `method`'s main run trains at: its own `losses:` entry's, else preference.beta, else its
    loss's default (rpo.pipeline.train_settings decides which wins)."""
    spec = get_loss(method)
    if "beta" not in spec.hyperparameters:
        raise ConfigError(f"config key 'sweep.methods': loss {method!r} has no beta to sweep")
    rpo = config["rpo"]
    settings = (rpo["default_tau"], rpo["default_embedder"]) if method in EMBEDDING_LOSSES else ()
    main = Run(method, sft_seed(config), config["preference"]["batch_size"], *settings)
    return float(train_settings(config, main).get("beta", spec.hyperparameters["beta"]))


def sweep_runs(config: dict) -> list[Run]:
    """Every run of the sweep, on every task: by beta, then method (each followed by its matched-beta
    control where it has one), then seed. Empty when `sweep.betas` or `sweep.methods` is."""
    sweep = config.get("sweep") or {}
    rpo, batch_size = config["rpo"], config["preference"]["batch_size"]
    runs: list[Run] = []
    for i, method in enumerate(sweep.get("methods") or ()):
        if method not in config["methods"]:
            raise ConfigError(f"config key 'sweep.methods[{i}]': {method!r} is not in methods "
                              f"({', '.join(config['methods'])}): the sweep extends a method's main runs")
        configured_beta(config, method)  # a loss without beta stops here, naming the key
    for beta in sweep.get("betas") or ():
        for method in sweep.get("methods") or ():
            own = None if math.isclose(beta, configured_beta(config, method)) else float(beta)
            settings = (rpo["default_tau"], rpo["default_embedder"]) if method in EMBEDDING_LOSSES else ()
            for seed in config["seeds"]:
                run = Run(method, seed, batch_size, *settings, beta=own)
                runs.append(run)
                if method in MATCHED_BETA_SOURCES:
                    runs.append(Run.matched_beta(run))
    return list(dict.fromkeys(runs))


def known_runs(config: dict, task: str) -> dict[str, Run]:
    """Every run a rule may be asked for on `task` by name: the experiment matrix's and the sweep's (a
    sweep run at the configured beta is the matrix's own)."""
    return {**runs_by_name(config, task), **{run.name: run for run in sweep_runs(config)}}


def main(argv=None) -> int:
    return list_runs(argv, lambda config, task: sweep_runs(config), "python -m rpo.sweep",
                     "the beta sweep's run names (the default target's: python -m rpo.pipeline)")


if __name__ == "__main__":
    sys.exit(main())
