# The paper's tables and figures, one target each, built from the run outputs alone.

rule table:
    input:
        unpack(lambda wc: report_inputs(wc, wc.table)),
    output:
        md=report(f"{RESULTS}/tables/{{model}}/{{table}}.md", category="Tables", subcategory="{model}"),
        csv=f"{RESULTS}/tables/{{model}}/{{table}}.csv",
        tex=f"{RESULTS}/tables/{{model}}/{{table}}.tex",
    params:
        command=lambda wc: TABLE_COMMAND[wc.table],
        results=lambda wc: f"{RESULTS}/{wc.model}",
        stem=lambda wc: f"{RESULTS}/tables/{wc.model}/{wc.table}",
        tasks=" ".join(TASKS),
        expected=lambda wc: expected_runs(wc.table),
        batch=config["preference"]["batch_size"],
        tau=RPO["default_tau"],
        embedder=RPO["default_embedder"],
    wildcard_constraints:
        table="|".join(TABLE_COMMAND),
    log:
        f"{RESULTS}/logs/{{model}}/tables/{{table}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/tables/{{table}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/rpo.yaml"
    shell:
        "python -m rpo.report {params.command} --results {params.results} --out {params.stem}"
        " --tasks {params.tasks} --main-batch-size {params.batch} --default-tau {params.tau}"
        " --default-embedder {params.embedder:q} --expected-runs {params.expected} > {log} 2>&1"


rule figure:
    input:
        unpack(lambda wc: report_inputs(wc, "table2" if wc.figure == "table2" else "table1")),
    output:
        png=report(f"{RESULTS}/figures/{{model}}/{{figure}}.png", category="Figures", subcategory="{model}"),
        pdf=f"{RESULTS}/figures/{{model}}/{{figure}}.pdf",
    params:
        command=lambda wc: FIGURE_COMMAND[wc.figure],
        results=lambda wc: f"{RESULTS}/{wc.model}",
        stem=lambda wc: f"{RESULTS}/figures/{wc.model}/{wc.figure}",
        tasks=" ".join(TASKS),
        expected=lambda wc: expected_runs("table2" if wc.figure == "table2" else "table1"),
        batch=config["preference"]["batch_size"],
        tau=RPO["default_tau"],
        embedder=RPO["default_embedder"],
    wildcard_constraints:
        figure="|".join(FIGURE_COMMAND),
    log:
        f"{RESULTS}/logs/{{model}}/figures/{{figure}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/figures/{{figure}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/rpo.yaml"
    shell:
        "python -m rpo.report {params.command} --results {params.results} --out {params.stem}"
        " --tasks {params.tasks} --main-batch-size {params.batch} --default-tau {params.tau}"
        " --default-embedder {params.embedder:q} --expected-runs {params.expected} > {log} 2>&1"


rule training_curves:
    input:
        lambda wc: [model_dir(wc.model, t, r) for t in TASKS for r in run_names(t)],
    output:
        report(directory(f"{RESULTS}/figures/{{model}}/curves"), patterns=["{task}/{run}.png"],
               category="Training curves", subcategory="{model}"),
    params:
        results=lambda wc: f"{RESULTS}/{wc.model}",
        tasks=" ".join(TASKS),
    log:
        f"{RESULTS}/logs/{{model}}/curves.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/curves.tsv"
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/rpo.yaml"
    shell:
        "python -m rpo.report curves --results {params.results} --tasks {params.tasks} --out {output} > {log} 2>&1"


rule weights_example:
    input:
        records=f"{DATA}/{{task}}/train.jsonl",
        embeddings=f"{RESULTS}/embeddings/{{task}}/{embedder_short(RPO['default_embedder'])}.pt",
    output:
        f"{RESULTS}/figures/weights_{{task}}.json",
    params:
        embedder=RPO["default_embedder"],
        tau=RPO["default_tau"],
        batch=config["preference"]["batch_size"],
        seed=config["seeds"][0],
    log:
        f"{RESULTS}/logs/weights_example_{{task}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/weights_example_{{task}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/rpo.yaml"
    shell:
        "python -m rpo.report weights-example --records {input.records} --embeddings {input.embeddings}"
        " --embedder {params.embedder:q} --tau {params.tau} --batch-size {params.batch} --seed {params.seed}"
        " --out {output} > {log} 2>&1"


rule weights_heatmap:
    input:
        f"{RESULTS}/figures/weights_{{task}}.json",
    output:
        png=report(f"{RESULTS}/figures/weights_heatmap_{{task}}.png", category="Figures"),
        pdf=f"{RESULTS}/figures/weights_heatmap_{{task}}.pdf",
    params:
        stem=lambda wc: f"{RESULTS}/figures/weights_heatmap_{wc.task}",
    log:
        f"{RESULTS}/logs/weights_heatmap_{{task}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/weights_heatmap_{{task}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/rpo.yaml"
    shell:
        "python -m rpo.report heatmap --weights {input} --out {params.stem} > {log} 2>&1"
