"""Will it fit? The per-GPU peak memory of every job of a profile, from a formula checked against measured peaks.

    .venv/bin/python benchmarks/memory_budget.py [--configfile workflow/paper.yaml] [--gpu-gib 80]
    .venv/bin/python benchmarks/memory_budget.py --measure [--device cpu|cuda] [--out FILE.json]

Default mode: one table (job, model, numerics, predicted peak GiB per GPU, GPU GiB, fits) of every job the
profile runs for each of its models: SFT, preference training at the longest micro-batch the data allows
(every sequence max_length tokens), the batch-size ablation's micro-batches, KTO and PPO, the reference
cache and generation, in both numerics (rpo.precision: pure bf16 and fp32 master weights + bf16 autocast).
The runs and their settings are rpo.pipeline's (experiment_runs, train_settings), so the table follows the
profile. Exit status 0 only when every job fits its GPU in the profile's CONFIGURED numerics; the other
numerics is shown and does not decide it. `--measure` runs the calibration probes (memory_probes.py).

The formula (bytes; d hidden, i intermediate, kv key/value width, L blocks, V vocabulary, N tokens of a
micro-batch, S of them scored, W ranks sharding with FSDP2, P parameters; `w` weight bytes, `r` the residual
stream's, `a` the matmuls' (bf16 under autocast); every term named in `training_peak`'s breakdown):
- training, per rank: P*w/W weights + P*w/W gradients + P*w/W RMSprop state; FSDP2's unsharded buffers (the
  root unit, embeddings and head, all step; three blocks' weights: current, prefetched and an all-gather
  output being copied out; two blocks' gradients in backward); the activations autograd keeps from forward
  to backward (with activation_checkpointing each block's input, N*d*r, and one block recomputed at a time;
  without it every block's saved tensors; under autocast also each linear's bf16 weight copy); the LM head
  as rpo.scoring computes it (S response positions, chunks of HEAD_CHUNK_ELEMENTS logits, each recomputed in
  backward); the backward's transient gradients; the optimizer step (torch's foreach RMSprop on CUDA holds a
  sqrt of the whole state); the final save (rpo.distributed.full_state_dicts gathers one parameter at a time
  and copies it to the host). The peak is the largest of: the start of backward, each end of the block loop
  in backward, the optimizer step and the final save.
- inference (reference cache, generation's chosen_logp, KTO's KL forward): full weights on each rank (for the
  reference cache and generation under fp32 master weights the linears in bf16: inference_weights, after a
  load that puts the fp32 model on the device first: load_peak) and one block's working set of N tokens
  under no_grad. Generation: plus the KV cache of batch x max_length tokens
  (keys in fp32 under fp32 master weights: RoPE's fp32 cos/sin promote them) and its growth by torch.cat.
- per-token bytes of a block's saved tensors are derived tensor by tensor in `block_saved` (transformers'
  LlamaDecoderLayer under rpo.scoring's per-sequence sdpa; tests/test_memory_budget.py checks them against
  torch's saved-tensor hooks). flash-attention's varlen kernel (the GPU profiles) saves its output once
  where sdpa's is saved and copied: there the term is 2*d bytes per token too high, on the safe side.
The CPU probes (benchmarks/RESULTS.md, "Will it fit?") check the whole formula against measured peaks.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GIB = 2 ** 30

# config.json of each hub model (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
# num_key_value_heads, vocab_size; tie_word_embeddings false): https://huggingface.co/<name>/blob/main/config.json
# (the hub is not reachable from here: copied by hand).


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False

    @property
    def kv(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    @property
    def block_linear(self) -> int:
        d, i, kv = self.hidden, self.intermediate, self.kv
        return 2 * d * d + 2 * d * kv + 3 * d * i  # q, o; k, v; gate, up, down

    @property
    def block(self) -> int:
        return self.block_linear + 2 * self.hidden  # + two RMSNorm weights

    @property
    def root(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden  # embeddings, head, final norm

    @property
    def params(self) -> int:
        return self.layers * self.block + self.root

    @classmethod
    def of(cls, config) -> "Shape":
        """From a transformers Llama/Mistral config."""
        return cls(config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                   config.num_attention_heads, config.num_key_value_heads, config.vocab_size,
                   bool(config.tie_word_embeddings))


MODELS = {
    "meta-llama/Llama-2-7b-hf": Shape(4096, 11008, 32, 32, 32, 32000),
    "meta-llama/Llama-2-13b-hf": Shape(5120, 13824, 40, 40, 40, 32000),
    "mistralai/Mistral-7B-v0.1": Shape(4096, 14336, 32, 32, 8, 32000),
}


@dataclass(frozen=True)
class Numerics:
    name: str
    weight: int  # bytes of a weight, its gradient and each optimizer state value
    residual: int  # the residual stream (the embeddings' dtype)
    matmul: int  # the linear layers' inputs and outputs
    autocast: bool


PURE_BF16 = Numerics("pure bf16", 2, 2, 2, False)
FP32_MASTER = Numerics("fp32 master", 4, 4, 2, True)
OPTIMIZER_STATES = {"rmsprop": 1, "adamw": 2}  # square_avg; exp_avg and exp_avg_sq
HEAD_CHUNK_ELEMENTS = 2 ** 24  # rpo.scoring's (imported in main() to check it did not change)

# ASSUMPTIONS: what a GPU holds beyond the tensors above, not measurable on a CPU; calibrate with
# `--measure --device cuda` (scripts/gpu_check.sh), which reports max_memory_reserved/allocated and the
# memory the process holds outside torch's allocator.
CUDA_CONTEXT = 1.0 * GIB  # CUDA context, kernels (flash-attn's included), cuBLAS handles: outside the allocator
NCCL_BUFFERS = 1.0 * GIB  # NCCL's channel buffers for 8 ranks on one node (NVLink), outside the allocator
ALLOCATOR_OVERHEAD = 1.10  # reserved / allocated at the peak: the caching allocator's rounding and fragmentation
# ASSUMPTION of the CPU probes only: the model's Python objects and the probe's own tokenizer instance, resident
# beside the tensors (the training probes' resident set after loading minus the weights: 4-5 MiB with a 1k-token
# BPE, 26-31 MiB with SmolLM2's 49k-token tokenizer)
CPU_HOST = 8 * 2 ** 20


def block_saved(shape: Shape, num: Numerics) -> float:
    """Bytes per token autograd keeps for the backward of one LlamaDecoderLayer, its input excluded
    (activation checkpointing keeps that): the sum of the tensors saved, in order."""
    d, i, kv, r, a = shape.hidden, shape.intermediate, shape.kv, num.residual, num.matmul
    half = r < 4  # RMSNorm upcasts a half residual to fp32 (saved) and saves x.to(bf16); an fp32 one saves itself
    norm1 = 4 * d + (r * d if half else 0)  # fp32 upcast (or x*rsqrt) + x.to(dtype); an fp32 input is the block's
    norm2 = 4 * d + r * d  # the same, its input (the residual after attention) counted
    # the norms' outputs: saved once by the linears reading them, or once per linear as its autocast bf16 copy
    norm_outputs = (3 + 2) * a * d if num.autocast else 2 * num.weight * d
    attention = a * d + 2 * a * kv + a * d + a * d  # q, k after RoPE and v; the output; its transposed copy
    mlp = 4 * a * i  # gate and up outputs, silu(gate), their product (down_proj's input)
    return norm1 + norm2 + norm_outputs + attention + mlp


def inference_working_set(shape: Shape, num: Numerics) -> float:
    """Bytes per token live inside one block's forward under no_grad (the MLP's, the larger phase for
    Llama shapes): the block's input held by the caller, the residual after attention, the norm's output
    (and its bf16 copy under autocast), and gate/up/silu outputs with their product being formed."""
    d, i, r, a = shape.hidden, shape.intermediate, num.residual, num.matmul
    return 2 * r * d + num.weight * d + (a * d if num.autocast else 0) + 3 * a * i


def head_chunk_rows(shape: Shape) -> int:
    return max(1, HEAD_CHUNK_ELEMENTS // shape.vocab)


def training_peak(shape: Shape, num: Numerics, *, tokens: int, scored: int, world: int = 1, fsdp: bool = False,
                  checkpointing: bool = True, optimizer: str = "rmsprop", accumulation: int = 1,
                  foreach: bool = True, steady: bool = True, value_head: bool = False) -> tuple[float, str, dict]:
    """(peak bytes on one rank, the phase it occurs in, its breakdown) of a training step. foreach: torch's
    foreach optimizer (CUDA); steady: the optimizer state exists in backward (any step after the first)."""
    d, L, V, w, r, a = shape.hidden, shape.layers, shape.vocab, num.weight, num.residual, num.matmul
    shard = world if fsdp and world > 1 else 1
    head_params = 4 * (2 * d * d + 3 * d + 1) if value_head else 0  # ppo's fp32 value head (bytes), its own unit
    weights = shape.params * w / shard + head_params / shard
    state = (shape.params * w + head_params) * OPTIMIZER_STATES[optimizer] / shard
    grads = shape.params * w / shard + head_params / shard
    fsdp_fwd = fsdp_bwd = ddp = 0.0
    if shard > 1:
        fsdp_fwd = shape.root * w + 3 * shape.block * w
        # current block's and the previous one's (in reduce-scatter) gradients; the root's, unsharded until
        # the end of backward; with gradient sync off (accumulation) every block's stay unsharded
        fsdp_bwd = 2 * shape.block * w + shape.root * w + (shape.params * w if accumulation > 1 else 0)
    elif world > 1:
        ddp = shape.params * w  # DDP's gradient buckets (gradient_as_bucket_view off)
    casts = shape.block_linear * 2 if num.autocast else 0  # bf16 weight copies the linears save
    block = tokens * block_saved(shape, num)
    block_input = tokens * d * r
    if checkpointing:
        kept_per_block, recompute = block_input, block + casts
    else:
        kept_per_block, recompute = block + (block_input if r == 4 else 0) + casts, 0.0
    value_acts = 3 * tokens * d * 4 if value_head else 0  # its fp32 input copy and two ReLU outputs
    final_norm = tokens * (4 + r) * d
    rows = min(scored, head_chunk_rows(shape))
    chunked = scored > rows
    head_kept = scored * d * r + (0 if chunked else rows * V * 4 + (scored * d * a + V * d * a if num.autocast else 0))
    # one chunk's backward: its log-softmax output (recomputed; kept from forward when unchunked), the
    # gradient of that output and of its input (fp32 each), and under autocast the head's bf16 weight copy
    head_backward = rows * V * (12 if chunked else 8) + (V * d * a if num.autocast else 0)
    # a block's backward: three intermediate-wide gradients at the MLP's product, the residual's two; under
    # autocast the largest linear's bf16 weight gradient before its fp32 cast
    i = shape.intermediate
    block_backward = tokens * (3 * a * i + 2 * r * d) + (d * i * a if num.autocast else 0)
    held = weights + (state if steady else 0) + ddp
    grad_head = (shape.vocab * d * w) if shard == 1 else 0.0  # with FSDP2 the root's gradient is in fsdp_bwd
    phases = {
        "backward start": held + fsdp_fwd + fsdp_bwd + L * kept_per_block + final_norm + head_kept + value_acts
        + head_backward + grad_head,
        "backward, last block": held + fsdp_fwd + fsdp_bwd + L * kept_per_block + recompute + block_backward
        + grad_head + shape.block * w / shard,
        "backward, first block": held + fsdp_fwd + fsdp_bwd + kept_per_block + recompute + block_backward
        + grads,
        "optimizer step": weights + state + grads + ddp
        + (state if foreach else 2 * shape.vocab * d * w * OPTIMIZER_STATES[optimizer] / shard),
        # rpo.train's final save (rpo.distributed.full_state_dicts, cpu_offload): one parameter gathered whole
        # at a time, copied to the host; sharded checkpoints (rpo.checkpoint) write each rank's shards as they are
        "final save": weights + state + shape.vocab * d * w,
    }
    phase = max(phases, key=phases.get)
    breakdown = {"weights": weights, "gradients": grads, "optimizer state": state,
                 "fsdp buffers": fsdp_fwd + fsdp_bwd, "kept activations": L * kept_per_block,
                 "recomputed block": recompute, "head": head_kept + head_backward, "block backward": block_backward}
    return phases[phase], phase, breakdown


def inference_weights(shape: Shape, num: Numerics, device: str = "cuda") -> float:
    """Bytes of the weights rpo.models.load_model(inference=True) holds while it computes: under fp32 master
    weights every linear not tied to the input embedding in bf16 (rpo.precision.for_inference, exact under
    autocast), the embeddings and norms in the weights' dtype. On a CPU the fp32 file the weights are mapped
    from stays mapped (the fp32 embeddings and norms still point into it) and the conversion read every page
    of it: there the whole fp32 file stays resident beside the bf16 copies."""
    if not num.autocast:
        return shape.params * num.weight
    linear = shape.layers * shape.block_linear + (0 if shape.tied else shape.vocab * shape.hidden)
    rest = shape.params if device == "cpu" else shape.params - linear
    return linear * num.matmul + rest * num.weight


def load_peak(shape: Shape, num: Numerics) -> float:
    """rpo.models.load_model(inference=True) moves the model to the device in the weights' dtype, then converts
    its linears (for_inference): the whole model in that dtype is on the device first, plus the bf16 copy of
    the linear being converted (the largest: the head, or an MLP projection)."""
    largest = max(shape.hidden * shape.intermediate, 0 if shape.tied else shape.vocab * shape.hidden)
    return shape.params * num.weight + (largest * num.matmul if num.autocast else 0)


def inference_working(shape: Shape, num: Numerics, *, tokens: int, scored: int) -> float:
    """A packed no-grad forward of `tokens` tokens (the reference cache's, rpo.scoring) beside the weights: the
    larger of one block's working set and the head's (the final norm's output, the scored positions, one
    chunk's logits, their fp32 copy and log-softmax)."""
    d, V = shape.hidden, shape.vocab
    rows = min(scored, head_chunk_rows(shape))
    head = rows * V * (num.matmul + 8) + scored * d * num.residual + tokens * d * num.weight
    return max(tokens * inference_working_set(shape, num), head)


def inference_peak(shape: Shape, num: Numerics, *, tokens: int, scored: int, device: str = "cuda") -> float:
    """The reference cache: the larger of loading (load_peak) and its forwards on the inference weights."""
    return max(load_peak(shape, num),
               inference_weights(shape, num, device) + inference_working(shape, num, tokens=tokens, scored=scored))


def kv_bytes(num: Numerics) -> tuple[int, int]:
    """Bytes of a cached key and value element: under fp32 weights + autocast RoPE's fp32 cos/sin make the
    keys fp32 (the values stay the bf16 output of v_proj)."""
    return (4 if num.autocast else num.matmul), num.matmul


def generation_peak(shape: Shape, num: Numerics, *, batch: int, max_length: int, prompt: int | None = None,
                    score_chosen: bool = True, device: str = "cuda") -> float:
    """rpo.generate: loading (load_peak), then on the inference weights: prefill of batch x prompt tokens
    (default: up to max_length), decoding with transformers' DynamicCache to batch x max_length tokens (each
    step torch.cat re-allocates a layer's keys while the old ones live), then (score_chosen, as the workflow
    runs it) chosen_logp's packed forward of batch sequences of up to max_length tokens (the cache is gone
    by then)."""
    key, value = kv_bytes(num)
    tokens, prompt_tokens = batch * max_length, batch * (prompt or max_length)
    per_token = shape.layers * shape.kv * (key + value)
    decode = tokens * per_token + tokens * shape.kv * key + batch * shape.vocab * 4 * 4  # + logits, the sampler's
    prefill = prompt_tokens * (per_token + inference_working_set(shape, num))
    chosen = inference_working(shape, num, tokens=tokens, scored=tokens) if score_chosen else 0
    return max(load_peak(shape, num), inference_weights(shape, num, device) + max(decode, prefill, chosen))


def on_gpu(allocated: float, world: int) -> float:
    """Device bytes: torch's allocations grown by the allocator's overhead, plus what lives outside it."""
    return allocated * ALLOCATOR_OVERHEAD + CUDA_CONTEXT + (NCCL_BUFFERS if world > 1 else 0)


# -- the jobs of a profile ----------------------------------------------------------------------------
JOB_ORDER = ("sft", "preference", "kto", "ppo", "reference cache", "generation")


def configured_numerics(training: dict) -> Numerics:
    """rpo.precision's rule on a CUDA GPU with bf16 (A100): bfloat16 -> pure bf16 or, with fp32_master_weights,
    fp32 weights + bf16 autocast; auto -> fp32 weights + bf16 autocast."""
    from rpo.errors import ConfigError

    dtype = training.get("dtype") or "auto"
    if dtype == "bfloat16":
        return FP32_MASTER if training.get("fp32_master_weights") else PURE_BF16
    if dtype == "auto":
        return FP32_MASTER
    raise ConfigError(f"training.dtype {dtype!r}: memory_budget.py models bfloat16 (pure or with "
                      "fp32_master_weights) and auto, the GPU numerics")


def model_shape(key: str, spec: dict) -> Shape:
    from rpo.errors import ConfigError

    name = spec.get("name_or_path")
    if name not in MODELS:
        raise ConfigError(f"models.{key}: no shape for {name!r} in benchmarks/memory_budget.py MODELS (known: "
                          f"{', '.join(MODELS)}); add its config.json figures there")
    return MODELS[name]


def run_jobs(config: dict) -> list[tuple[str, dict, int]]:
    """(job, training settings, sequences per micro-batch) of every training run of the profile, by
    rpo.pipeline; preference micro-batches smaller than the main one are left out (they fit if it does)."""
    from rpo.losses import get_loss
    from rpo.pipeline import experiment_runs, train_settings
    from rpo.train_config import DEFAULTS

    main_batch = config["preference"]["batch_size"]
    jobs = []
    for run in experiment_runs(config):
        settings = {**DEFAULTS, **train_settings(config, run)}
        spec, bs, accum = get_loss(run.method), settings["batch_size"], settings["gradient_accumulation_steps"]
        if run.method in ("sft", "kto", "ppo"):
            job = run.method
        elif settings["contrast_scope"] == "global":
            job = f"preference bs{bs} x{accum} global"
        elif bs >= main_batch:
            job = f"preference bs{bs}"
        else:
            continue
        jobs.append((job, settings, 2 * bs if spec.batching == "paired" else bs))
    return jobs


def job_kind(job: str) -> int:
    return next(i for i, kind in enumerate(JOB_ORDER) if job.startswith(kind))


def profile_rows(config: dict) -> list[dict]:
    """Every job x model x numerics (configured first) with its predicted device bytes per GPU."""
    configured = configured_numerics(config["training"])
    world, training, gen = int(config["gpus"]), config["training"], config["generation"]
    length = training["max_length"]
    rows = []
    for key, spec in config["models"].items():
        shape = model_shape(key, spec)
        for num in (configured, FP32_MASTER if configured is PURE_BF16 else PURE_BF16):
            peaks: dict[str, tuple[float, str, str]] = {}  # job -> (device bytes, phase, micro-batch)
            for job, s, sequences in run_jobs(config):
                tokens = sequences * s["max_length"]
                peak, phase, _ = training_peak(
                    shape, num, tokens=tokens, scored=tokens, world=world, fsdp=s["fsdp"],
                    checkpointing=s["activation_checkpointing"], optimizer=s["optimizer"],
                    accumulation=s["gradient_accumulation_steps"], value_head=s["method"] == "ppo")
                if on_gpu(peak, world) > peaks.get(job, (-1.0,))[0]:
                    peaks[job] = (on_gpu(peak, world), phase, f"{sequences}x{s['max_length']}")
            tokens = training["reference_batch_size"] * length
            peaks["reference cache"] = (on_gpu(inference_peak(shape, num, tokens=tokens, scored=tokens), world),
                                        "forward", f"{training['reference_batch_size']}x{length}")
            gen_length = gen.get("max_length") or training["max_prompt_length"] + gen.get("max_new_tokens", 256)
            peaks["generation"] = (on_gpu(generation_peak(shape, num, batch=gen["batch_size"], max_length=gen_length),
                                          world), "decoding", f"{gen['batch_size']}x{gen_length}")
            rows += [{"job": f"{job} ({micro})", "model": key, "numerics": num.name, "configured": num is configured,
                      "peak": peak, "phase": phase, "order": (job_kind(job), n)}
                     for n, (job, (peak, phase, micro)) in enumerate(peaks.items())]
    return sorted(rows, key=lambda r: (list(config["models"]).index(r["model"]), r["order"], not r["configured"]))


def print_table(config_path: Path, config: dict, rows: list[dict], gpu_gib: float) -> list[dict]:
    """The table; returns the configured rows that do not fit."""
    configured = next(r["numerics"] for r in rows if r["configured"])
    ckpt = "on" if config["training"].get("activation_checkpointing") else "off"
    shown = config_path.resolve().relative_to(ROOT) if config_path.resolve().is_relative_to(ROOT) else config_path
    print(f"{shown}: predicted peak per GPU, {config['gpus']} GPUs of {gpu_gib:g} GiB, activation checkpointing "
          f"{ckpt}; * = the configured numerics ({configured}), the only rows that decide the exit status")
    print("| job | model | numerics | peak GiB | GPU GiB | fits |")
    print("| --- | --- | --- | ---: | ---: | --- |")
    for r in rows:
        fits = r["peak"] <= gpu_gib * GIB
        print(f"| {r['job']} | {r['model']} | {r['numerics']}{' *' if r['configured'] else ''} | "
              f"{r['peak'] / GIB:.1f} | {gpu_gib:g} | {'yes' if fits else 'NO'} |")
    return [r for r in rows if r["configured"] and r["peak"] > gpu_gib * GIB]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", default=str(ROOT / "workflow/paper.yaml"))
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU (default: an 80 GiB A100)")
    parser.add_argument("--measure", action="store_true", help="run the calibration probes (memory_probes.py)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="--measure: where the probes run")
    parser.add_argument("--out", default=None, help="--measure: also write the probes' figures to this JSON file")
    parser.add_argument("--probes", default=None, help="--measure: comma-separated probe names (default: all)")
    parser.add_argument("--work", default=None, help="--measure: folder for the probes' models and data, kept "
                                                     "(default: a new temporary folder)")
    args = parser.parse_args(argv)
    from rpo.config import validate_config
    from rpo.errors import ConfigError
    from rpo.scoring import HEAD_CHUNK_ELEMENTS as scoring_chunk

    assert scoring_chunk == HEAD_CHUNK_ELEMENTS, "rpo.scoring changed its head chunk: update HEAD_CHUNK_ELEMENTS"
    if args.measure:
        from memory_probes import measure

        return measure(args.device, args.out, args.probes.split(",") if args.probes else None, args.work)
    path = Path(args.configfile)
    try:
        config = validate_config(yaml.safe_load(path.read_text()))
        rows = profile_rows(config)
    except (OSError, ConfigError) as exc:
        print(f"memory_budget: {path}: {exc}", file=sys.stderr)
        return 2
    too_big = print_table(path, config, rows, args.gpu_gib)
    for r in too_big:
        print(f"memory_budget: does not fit: {r['job']} of {r['model']} in {r['numerics']}: {r['peak'] / GIB:.1f} GiB "
              f"> {args.gpu_gib:g} GiB per GPU (peak at {r['phase']})", file=sys.stderr)
    return 1 if too_big else 0


if __name__ == "__main__":
    sys.exit(main())
