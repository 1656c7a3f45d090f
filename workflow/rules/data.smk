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


rule pretrained:
    output:
        directory(f"{RESULTS}/pretrained/{{name}}"),
    params:
        spec=lambda wc: quoted_json(PRETRAINED_BUILDS[wc.name]),
    wildcard_constraints:
        name="|".join(PRETRAINED_BUILDS),
    log:
        f"{RESULTS}/logs/pretrained/{{name}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrained/{{name}}.tsv"
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
    conda:
        "../../envs/rpo.yaml"
    shell:
        "python -m rpo.models --spec {params.spec} --out {output} > {log} 2>&1"


rule base_model:
    input:
        corpus=expand(f"{DATA}/{{task}}/train.jsonl", task=TASKS),
        pretrained=lambda wc: pretrained_input(wc.model),
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
        records=f"{DATA}/{{task}}/train.jsonl",
        # the base model's tokenizer is the SFT model's: it cuts the prompt as training does
        model=f"{RESULTS}/{{model}}/base",
    output:
        f"{RESULTS}/{{model}}/embeddings/{{task}}/{{emb}}.pt",
    wildcard_constraints:
        emb=one_of(CPU_EMBEDDERS),
    params:
        embedder=lambda wc: EMBEDDER_BY_SHORT[wc.emb],
        max_length=config["training"]["max_length"],
        max_prompt_length=config["training"]["max_prompt_length"],
        device=lambda wc: f" --device {DEVICE}" if DEVICE and wc.emb in GPU_EMBEDDERS else "",
    log:
        f"{RESULTS}/logs/{{model}}/embeddings/{{task}}/{{emb}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/embeddings/{{task}}/{{emb}}.tsv"
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
    conda:
        "../../envs/rpo.yaml"
    shell:
        "python -m rpo.embed --records {input.records} --embedder {params.embedder:q} --model {input.model}"
        " --max-length {params.max_length} --max-prompt-length {params.max_prompt_length}{params.device}"
        " --out {output} > {log} 2>&1"


# The neural embedders on one GPU (sentence-t5-large over all of HH: hours on CPU), where the config has GPUs.
use rule embeddings as embeddings_gpu with:
    wildcard_constraints:
        emb=one_of(GPU_EMBEDDERS),
    resources:
        mem_mb=MEM_MB,
        gpu=1,
