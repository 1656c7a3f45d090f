# The paper's tables and figures, one target each, built from the run outputs alone.

rule table:
    input:
        unpack(lambda wc: report_inputs(wc.model, wc.table)),
    output:
        md=report(f"{RESULTS}/tables/{{model}}/{{table}}.md", category="Tables", subcategory="{model}"),
        csv=f"{RESULTS}/tables/{{model}}/{{table}}.csv",
        tex=f"{RESULTS}/tables/{{model}}/{{table}}.tex",
    params:
        results=lambda wc: f"{RESULTS}/{wc.model}",
        stem=lambda wc: f"{RESULTS}/tables/{wc.model}/{wc.table}",
        tasks=" ".join(TASKS),
        expected=lambda wc: expected_runs(wc.table),
        defaults=REPORT_DEFAULTS,
    wildcard_constraints:
        table="|".join(TABLES),
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
        "python -m rpo.report table {wildcards.table} --results {params.results} --out {params.stem}"
        " --tasks {params.tasks} {params.defaults} --expected-runs {params.expected} > {log} 2>&1"


rule figure:
    input:
        unpack(lambda wc: report_inputs(wc.model, FIGURES[wc.figure])),
    output:
        png=report(f"{RESULTS}/figures/{{model}}/{{figure}}.png", category="Figures", subcategory="{model}"),
        pdf=f"{RESULTS}/figures/{{model}}/{{figure}}.pdf",
    params:
        results=lambda wc: f"{RESULTS}/{wc.model}",
        stem=lambda wc: f"{RESULTS}/figures/{wc.model}/{wc.figure}",
        tasks=" ".join(TASKS),
        expected=lambda wc: expected_runs(FIGURES[wc.figure]),
        defaults=REPORT_DEFAULTS,
    wildcard_constraints:
        figure="|".join(FIGURES),
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
        "python -m rpo.report figure {wildcards.figure} --results {params.results} --out {params.stem}"
        " --tasks {params.tasks} {params.defaults} --expected-runs {params.expected} > {log} 2>&1"


rule training_curves:
    input:
        lambda wc: [model_dir(wc.model, t, r) for t in TASKS for r in run_names(t)],
    output:
        report(directory(f"{RESULTS}/figures/{{model}}/{CURVES}"), patterns=["{task}/{run}.png"],
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
        # one example per task: the first model's embeddings (models differ only by their tokenizer's cut)
        embeddings=embeddings_path(MODELS[0], "{task}", RPO["default_embedder"]),
        model=f"{RESULTS}/{MODELS[0]}/base",
    output:
        f"{RESULTS}/figures/weights_{{task}}.json",
    params:
        embedder=RPO["default_embedder"],
        tau=RPO["default_tau"],
        batch=config["preference"]["batch_size"],
        seed=config["seeds"][0],
        max_length=config["training"]["max_length"],
        max_prompt_length=config["training"]["max_prompt_length"],
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
        " --embedder {params.embedder:q} --model {input.model} --max-length {params.max_length}"
        " --max-prompt-length {params.max_prompt_length}"
        " --tau {params.tau} --batch-size {params.batch} --seed {params.seed} --out {output} > {log} 2>&1"


rule weights_heatmap:
    input:
        f"{RESULTS}/figures/weights_{{task}}.json",
    output:
        png=report(f"{RESULTS}/figures/{HEATMAP}_{{task}}.png", category="Figures"),
        pdf=f"{RESULTS}/figures/{HEATMAP}_{{task}}.pdf",
    params:
        stem=lambda wc: f"{RESULTS}/figures/{HEATMAP}_{wc.task}",
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
