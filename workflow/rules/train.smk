# SFT on the chosen responses, the reference log-prob cache, then every preference run.
# Checkpoints live beside each run ({run}.ckpt): a killed job resumes when rerun.


rule sft:
    input:
        data=f"{DATA}/{{task}}/train.jsonl",
        base=f"{RESULTS}/{{model}}/base",
    output:
        directory(f"{RESULTS}/{{model}}/{{task}}/models/sft_seed{{seed}}"),
    params:
        overrides=lambda wc: train_overrides("sft", {"method": "sft", "seed": int(wc.seed)}),
        launcher=launcher(),
    log:
        f"{RESULTS}/logs/{{model}}/{{task}}/sft_seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/{{task}}/sft_seed{{seed}}.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=MEM_MB,
        gpu=GPUS,
    conda:
        "../../envs/rpo.yaml"
    shell:
        "{params.launcher} -m rpo.train model={input.base} data={input.data} out={output} {params.overrides}"
        " threads={threads} > {log} 2>&1"


rule refcache:
    input:
        data=f"{DATA}/{{task}}/train.jsonl",
        model=f"{RESULTS}/{{model}}/{{task}}/models/sft_seed{{seed}}",
    output:
        f"{RESULTS}/{{model}}/{{task}}/refcache/sft_seed{{seed}}.pt",
    params:
        max_length=config["training"]["max_length"],
        max_prompt_length=config["training"]["max_prompt_length"],
        batch_size=config["training"]["reference_batch_size"],
        precision=PRECISION_ARGS,  # the trainer's precision (rpo.precision)
        ranks=RANK_ARGS,  # the trainer's device and process-group timeout
        chunk_records=config["training"]["reference_chunk_records"],  # resumable chunks (rpo.refcache)
        packing="" if config["training"]["packing"] else " --no-packing",  # the trainer's layout (rpo.scoring)
        # one rank per GPU this job gets (a profile may give it fewer than the config's gpus)
        launcher=lambda wc, resources: launcher(resources.gpu),
    log:
        f"{RESULTS}/logs/{{model}}/{{task}}/refcache_sft_seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/{{task}}/refcache_sft_seed{{seed}}.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=MEM_MB,
        gpu=GPUS,
    conda:
        "../../envs/rpo.yaml"
    shell:
        "{params.launcher} -m rpo.refcache --model {input.model} --records {input.data} --out {output}"
        " --max-length {params.max_length} --max-prompt-length {params.max_prompt_length}"
        " --batch-size {params.batch_size} {params.precision}{params.packing}{params.ranks}"
        " --chunk-records {params.chunk_records} --threads {threads} > {log} 2>&1"


rule preference:
    input:
        unpack(preference_inputs),
    output:
        directory(f"{RESULTS}/{{model}}/{{task}}/models/{{run}}"),
    params:
        overrides=preference_overrides,
        launcher=launcher(),
        embeddings=lambda wc, input: f"embeddings={input.embeddings}" if "embeddings" in input.keys() else "",
        beta=lambda wc, input: f"beta_matched_to={input.beta_source}" if "beta_source" in input.keys() else "",
    wildcard_constraints:
        run=r"(?!sft_)[a-z-]+_[A-Za-z0-9._-]+",
    log:
        f"{RESULTS}/logs/{{model}}/{{task}}/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/{{task}}/{{run}}.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=MEM_MB,
        gpu=GPUS,
    conda:
        "../../envs/rpo.yaml"
    shell:
        "{params.launcher} -m rpo.train model={input.sft} data={input.data} out={output}"
        " reference_cache={input.refcache}"
        " {params.embeddings} {params.beta} {params.overrides} threads={threads} > {log} 2>&1"
