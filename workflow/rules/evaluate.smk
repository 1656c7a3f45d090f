# Generation on the test prompts, pairwise judging against the dataset's chosen responses, and
# AlpacaEval on the instruction set. With judge.backend local-oracle the same openai-client code
# talks to a server on 127.0.0.1 that judges by the generated world's known reward.

rule generate:
    input:
        model=lambda wc: model_dir(wc.model, wc.task, wc.run),
        records=f"{DATA}/{{task}}/test.jsonl",
    output:
        f"{RESULTS}/{{model}}/{{task}}/samples/{{run}}.jsonl",
    params:
        args=lambda wc: generation_args(GEN["n_prompts"], wc.model),
        seed=config["seeds"][0],
        precision=PRECISION_ARGS,  # the trainer's precision (rpo.precision)
        ranks=RANK_ARGS,  # the trainer's device and process-group timeout
        launcher=lambda wc, resources: launcher(resources.gpu),  # one rank per GPU of the job
    log:
        f"{RESULTS}/logs/{{model}}/{{task}}/generate_{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/{{task}}/generate_{{run}}.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=MEM_MB,
        gpu=GPUS,
    conda:
        "../../envs/rpo.yaml"
    shell:
        "{params.launcher} -m rpo.generate --model {input.model} --records {input.records} --out {output}"
        " --seed {params.seed} {params.precision}{params.ranks} --threads {threads} {params.args} --score-chosen > {log} 2>&1"


rule judge:
    input:
        unpack(lambda wc: judge_inputs()),
        samples=f"{RESULTS}/{{model}}/{{task}}/samples/{{run}}.jsonl",
    output:
        judgments=f"{RESULTS}/{{model}}/{{task}}/judgments/{{run}}.jsonl",
        summary=f"{RESULTS}/{{model}}/{{task}}/judgments/{{run}}.winrate.json",
        usage=f"{RESULTS}/{{model}}/{{task}}/judgments/{{run}}.usage.json",
    params:
        wrapper=judge_wrapper(),
        model=JUDGE["model"],
        base_url=base_url_arg(),
        cache=f"{RESULTS}/judge_cache.sqlite",
        concurrency=JUDGE["concurrency"],
        protocol=JUDGE["protocol"],
        max_tokens=JUDGE["max_tokens"],
        timeout=JUDGE["timeout"],
        max_attempts=JUDGE["max_attempts"],
        failed="--failed-as-no-winner" if JUDGE["failed_as_no_winner"] else "",
        seed=config["seeds"][0],
    log:
        f"{RESULTS}/logs/{{model}}/{{task}}/judge_{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/{{task}}/judge_{{run}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        judge_api=1,
    conda:
        "../../envs/rpo.yaml"
    shell:
        "{params.wrapper} python -m rpo.judge --samples {input.samples} --task {wildcards.task} --backend openai"
        " {params.base_url} --model {params.model:q} --protocol {params.protocol} --cache {params.cache} --seed {params.seed}"
        " --concurrency {params.concurrency} --max-tokens {params.max_tokens} --timeout {params.timeout}"
        " --max-attempts {params.max_attempts} {params.failed}"
        " --no-progress --out {output.judgments} --summary {output.summary} --usage {output.usage}"
        " > {log} 2>&1"


rule generate_instructions:
    input:
        model=lambda wc: model_dir(wc.model, TASKS[0], wc.run),
        records=f"{DATA}/instructions/eval.jsonl",
    output:
        f"{RESULTS}/{{model}}/instructions/samples/{{run}}.jsonl",
    params:
        # all 805 at paper scale (the public code: 800)
        args=lambda wc: generation_args(config["alpacaeval"]["n_prompts"], wc.model),
        seed=config["seeds"][0],
        precision=PRECISION_ARGS,
        ranks=RANK_ARGS,
        launcher=lambda wc, resources: launcher(resources.gpu),
    log:
        f"{RESULTS}/logs/{{model}}/instructions/generate_{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/instructions/generate_{{run}}.tsv"
    threads: JOB_THREADS
    resources:
        mem_mb=MEM_MB,
        gpu=GPUS,
    conda:
        "../../envs/rpo.yaml"
    shell:
        "{params.launcher} -m rpo.generate --model {input.model} --records {input.records} --out {output}"
        " --seed {params.seed} {params.precision}{params.ranks} --threads {threads} {params.args} > {log} 2>&1"


rule alpacaeval:
    input:
        unpack(lambda wc: judge_inputs()),
        samples=f"{RESULTS}/{{model}}/instructions/samples/{{run}}.jsonl",
    output:
        f"{RESULTS}/{{model}}/instructions/alpacaeval/{{run}}.json",
    params:
        wrapper=judge_wrapper(),
        work=lambda wc: f"{RESULTS}/{wc.model}/instructions/alpacaeval/{wc.run}.work",
        annotator=ALPACAEVAL["annotators_config"],
        base_url=base_url_arg(),
        cache=lambda wc: f"{RESULTS}/{wc.model}/instructions/alpacaeval/{wc.run}.work/annotations_cache.json",
        seed=config["seeds"][0],  # seeds the bootstrap interval, as the judge's
    log:
        f"{RESULTS}/logs/{{model}}/instructions/alpacaeval_{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/instructions/alpacaeval_{{run}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        judge_api=1,
    conda:
        "../../envs/rpo.yaml"
    shell:
        "(python -m rpo.alpacaeval export --samples {input.samples} --out {params.work}/model_outputs.json"
        " --generator {wildcards.run} --reference-out {params.work}/reference_outputs.json"
        " && {params.wrapper} python -m rpo.alpacaeval evaluate --model-outputs {params.work}/model_outputs.json"
        " --reference-outputs {params.work}/reference_outputs.json --annotators-config {params.annotator}"
        " {params.base_url} --output-dir {params.work} --caching-path {params.cache} --seed {params.seed}"
        " --summary {output}) > {log} 2>&1"
