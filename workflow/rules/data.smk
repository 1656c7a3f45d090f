# Data (generated world or the paper's datasets), base models, prompt embeddings.


rule data:
    output:
        train=expand(f"{DATA}/{{task}}/train.jsonl", task=TASKS),
        test=expand(f"{DATA}/{{task}}/test.jsonl", task=TASKS),
        instructions=f"{DATA}/instructions/eval.jsonl",
        report=f"{DATA}/load_report.json",
        world=f"{DATA}/world.json" if config["data"]["source"] == "world" else [],
    params:
        data_config=quoted_json(config["data"]),
        out=lambda wc, output: os.path.dirname(output.report),
    log:
        f"{RESULTS}/logs/data.log",
    benchmark:
        f"{RESULTS}/benchmarks/data.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/rpo.yaml"
    shell:
        "python -m rpo.data.prepare --data-config {params.data_config} --out {params.out} > {log} 2>&1"


rule base_model:
    input:
        corpus=expand(f"{DATA}/{{task}}/train.jsonl", task=TASKS),
    output:
        directory(f"{RESULTS}/{{model}}/base"),
    params:
        spec=lambda wc: quoted_json(config["models"][wc.model]),
    log:
        f"{RESULTS}/logs/{{model}}/base.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/base.tsv"
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
    conda:
        "../../envs/rpo.yaml"
    shell:
        "python -m rpo.models --spec {params.spec} --corpus {input.corpus} --out {output} > {log} 2>&1"


rule embeddings:
    input:
        f"{DATA}/{{task}}/train.jsonl",
    output:
        f"{RESULTS}/embeddings/{{task}}/{{emb}}.pt",
    params:
        embedder=lambda wc: EMBEDDER_BY_SHORT[wc.emb],
    log:
        f"{RESULTS}/logs/embeddings/{{task}}/{{emb}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embeddings/{{task}}/{{emb}}.tsv"
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
    conda:
        "../../envs/rpo.yaml"
    shell:
        "python -m rpo.embed --records {input} --embedder {params.embedder:q} --out {output} > {log} 2>&1"
