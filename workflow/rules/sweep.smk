# The beta sweep (rpo.sweep): `snakemake --cores 2 sweep`, never part of `all`. Its runs train, sample
# and judge through the rules of every run (train.smk, evaluate.smk); at the configured beta they are
# the default target's own runs, which it reuses.


rule sweep:
    input:
        lambda wc: sweep_targets(),


rule sweep_report:
    input:
        winrates=lambda wc: [f"{j}.winrate.json" for j in sweep_judgments(wc.model)],
        judgments=lambda wc: [f"{j}.jsonl" for j in sweep_judgments(wc.model)],
        models=lambda wc: [model_dir(wc.model, t, r.name) for t in TASKS for r in SWEEP_RUNS],  # metrics.jsonl
    output:
        md=report(f"{RESULTS}/tables/{{model}}/{SWEEP}.md", category="Tables", subcategory="{model}"),
        csv=f"{RESULTS}/tables/{{model}}/{SWEEP}.csv",
        tex=f"{RESULTS}/tables/{{model}}/{SWEEP}.tex",
        png=report(f"{RESULTS}/figures/{{model}}/{SWEEP}.png", category="Figures", subcategory="{model}"),
        pdf=f"{RESULTS}/figures/{{model}}/{SWEEP}.pdf",
    params:
        results=lambda wc: f"{RESULTS}/{wc.model}",
        table=lambda wc: f"{RESULTS}/tables/{wc.model}/{SWEEP}",
        figure=lambda wc: f"{RESULTS}/figures/{wc.model}/{SWEEP}",
        tasks=" ".join(TASKS),
        expected=" ".join(f"{t}/{r.name}" for t in TASKS for r in SWEEP_RUNS),
    log:
        f"{RESULTS}/logs/{{model}}/tables/{SWEEP}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/tables/{SWEEP}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/rpo.yaml"
    shell:
        "python -m rpo.report sweep --results {params.results} --out {params.table} --figure {params.figure}"
        " --tasks {params.tasks} --expected-runs {params.expected} > {log} 2>&1"
