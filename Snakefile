# RPO replication: SFT -> reference log-probs -> DPO/RPO variants and baselines -> generation ->
# judging -> AlpacaEval -> tables and figures. `snakemake --cores 2` runs the embedded default;
# `snakemake --configfile workflow/paper.yaml ...` runs the paper's setup through the same rules;
# `snakemake --cores 2 sweep`, after it, the beta sweep (rpo.sweep), which the default target never runs.
from snakemake.utils import min_version

min_version("8.0")


# config.yaml is the default; `--configfile X` replaces it whole (a profile is complete, not a patch).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/sweep.smk"


rule all:
    input:
        all_targets(),
    default_target: True
