import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rpo.errors import ConfigError, DataError
from rpo.models import ROLE_TOKENS, build_model, load_model, model_fingerprint, save_model
from rpo.precision import DTYPES, Precision, resolve_precision

torch.set_num_threads(2)

CORPUS = [
    "\n<|user|>\nHow do I bake bread at home?\n<|assistant|>\nMix flour, water, salt and yeast.",
    "\n<|user|>\nWhat is the capital of France?\n<|assistant|>\nThe capital of France is Paris.",
    "The quick brown fox jumps over the lazy dog. Ünïcode café naïve façade.",
    "Summaries should capture the most important points of the post, precisely and concisely.",
] * 10


def small_spec(arch, **overrides):
    spec = {"kind": "small", "arch": arch, "n_layers": 2, "d_model": 32, "n_heads": 4,
            "vocab_size": 300, "max_position": 64}
    spec.update(overrides)
    return spec


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "model"
    assert build_model(small_spec(request.param), out, corpus=CORPUS, seed=3) == out
    return request.param, out


def test_small_folder_loads_with_auto_classes(tiny):
    arch, folder = tiny
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.model_type == arch
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    assert model.config.vocab_size == len(tokenizer) <= 300
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    # Tied embeddings: the output layer is the input embedding matrix.
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    text = "héllo wörld, naïve café!"
    assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_role_markers_are_single_tokens(tiny):
    _, folder = tiny
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = "\n<|user|>\nHow do I bake bread?\n<|assistant|>\n"
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    for marker in ROLE_TOKENS:
        marker_ids = tokenizer(marker, add_special_tokens=False).input_ids
        assert len(marker_ids) == 1
        assert marker_ids[0] != tokenizer.unk_token_id
        assert ids.count(marker_ids[0]) == 1
    # No BOS is prepended: prompt and response can be tokenized separately and concatenated.
    assert tokenizer("abc").input_ids == tokenizer("abc", add_special_tokens=False).input_ids


def test_logits_identical_after_save_and_reload(tiny, tmp_path):
    _, folder = tiny
    model, tokenizer = load_model(folder, dtype="float32", device="cpu")
    batch = tokenizer(["\n<|user|>\nHi\n<|assistant|>\n", "the quick brown fox"],
                      return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model(**batch).logits
    save_model(model, tokenizer, tmp_path / "copy")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "copy")
    with torch.no_grad():
        after = reloaded(**batch).logits
    assert before.shape[-1] == len(tokenizer)
    assert torch.equal(before, after)
    assert model_fingerprint(tmp_path / "copy") == model_fingerprint(folder)


def test_build_is_seeded(tmp_path):
    first = build_model(small_spec("llama"), tmp_path / "a", corpus=CORPUS, seed=7)
    second = build_model(small_spec("llama"), tmp_path / "b", corpus=CORPUS, seed=7)
    other = build_model(small_spec("llama"), tmp_path / "c", corpus=CORPUS, seed=8)
    assert model_fingerprint(first) == model_fingerprint(second) != model_fingerprint(other)
    assert (first / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_fingerprint_copy_and_weight_change(tiny, tmp_path):
    _, folder = tiny
    copy = tmp_path / "copied"
    shutil.copytree(folder, copy)
    assert model_fingerprint(copy) == model_fingerprint(folder)
    # Files that are neither config nor weights do not enter the key.
    (copy / "notes.txt").write_text("hello")
    assert model_fingerprint(copy) == model_fingerprint(folder)

    model, tokenizer = load_model(copy, dtype="float32", device="cpu")
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1.0
    save_model(model, tokenizer, copy)
    assert model_fingerprint(copy) != model_fingerprint(folder)


def test_fingerprint_and_load_refuse_non_model_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        model_fingerprint(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DataError, match="no safetensors"):
        model_fingerprint(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no config.json"):
        load_model(tmp_path / "empty")


@pytest.mark.parametrize("spec, key", [
    ({"arch": "llama"}, "model.kind"),
    ({"kind": "huge"}, "model.kind"),
    (small_spec("llama", n_layers=0), "model.n_layers"),
    (small_spec("llama", n_layers="2"), "model.n_layers"),
    (small_spec("gpt2", d_model=2.5), "model.d_model"),
    (small_spec("gpt2", n_heads=True), "model.n_heads"),
    (small_spec("gpt2", n_heads=5), "model.n_heads"),
    (small_spec("llama", vocab_size=100), "model.vocab_size"),
    (small_spec("mamba"), "model.arch"),
    (small_spec("llama", d_ff=-1), "model.d_ff"),
    (small_spec("llama", n_layer=2), "model.n_layer"),
    ({k: v for k, v in small_spec("llama").items() if k != "max_position"}, "model.max_position"),
    ({"kind": "hf"}, "model.name_or_path"),
    ({"kind": "hf", "name_or_path": 3}, "model.name_or_path"),
])
def test_config_errors_name_the_key(spec, key, tmp_path):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_model(spec, tmp_path / "out", corpus=CORPUS)
    assert not (tmp_path / "out").exists()


def test_small_needs_a_corpus(tmp_path):
    with pytest.raises(ConfigError, match="corpus"):
        build_model(small_spec("gpt2"), tmp_path / "out")
    with pytest.raises(ConfigError, match="corpus"):
        build_model(small_spec("gpt2"), tmp_path / "out", corpus=[])


@pytest.mark.parametrize("name", ["org-that-does-not-exist/model-xyz", "/no/such/folder"])
def test_hf_unloadable_name_is_a_config_error(name, tmp_path):
    with pytest.raises(ConfigError, match="model.name_or_path.*hub"):
        build_model({"kind": "hf", "name_or_path": name}, tmp_path / "out")


def test_hf_copy_adds_a_pad_token(tiny, tmp_path):
    _, folder = tiny
    model, tokenizer = load_model(folder, dtype="float32", device="cpu")
    tokenizer.pad_token = None
    model.config.pad_token_id = None
    model.generation_config.pad_token_id = None
    save_model(model, tokenizer, tmp_path / "no_pad")
    assert AutoTokenizer.from_pretrained(tmp_path / "no_pad").pad_token is None

    out = build_model({"kind": "hf", "name_or_path": str(tmp_path / "no_pad")}, tmp_path / "copy")
    tokenizer = AutoTokenizer.from_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    assert config["pad_token_id"] == tokenizer.eos_token_id


def test_load_model_loads_the_weights_the_precision_rule_names(tiny):
    _, folder = tiny
    for dtype, master, weights in (("bfloat16", False, torch.bfloat16), ("bfloat16", True, torch.float32),
                                   ("auto", False, torch.float32), ("float64", False, torch.float64)):
        model, tokenizer = load_model(folder, dtype=dtype, device="cpu", fp32_master_weights=master)
        assert next(model.parameters()).dtype == weights, (dtype, master)  # pure bf16 or fp32 master weights
    assert tokenizer.pad_token is not None
    with pytest.raises(ConfigError, match="dtype"):
        load_model(folder, dtype="float8")


FP32, FP64, BF16 = torch.float32, torch.float64, torch.bfloat16
# (dtype, fp32_master_weights) -> (weights, autocast) on: CPU, CUDA with bf16, CUDA without bf16
PRECISION_TABLE = {
    (None, False): ((FP32, None), (FP32, BF16), (FP32, None)),
    ("auto", False): ((FP32, None), (FP32, BF16), (FP32, None)),
    ("auto", True): ((FP32, None), (FP32, BF16), (FP32, None)),  # the key is read with bfloat16 only
    ("bfloat16", False): ((BF16, None), (BF16, None), (FP32, None)),  # pure bf16: the public code's
    ("bfloat16", True): ((FP32, BF16), (FP32, BF16), (FP32, None)),  # fp32 master weights + bf16 autocast
    ("float32", True): ((FP32, None), (FP32, None), (FP32, None)),
    ("float64", False): ((FP64, None), (FP64, None), (FP64, None)),
}


@pytest.mark.parametrize("dtype,master", list(PRECISION_TABLE))
def test_precision_rule_table(dtype, master, monkeypatch):
    cpu, cuda_bf16, cuda_no_bf16 = PRECISION_TABLE[dtype, master]
    assert resolve_precision(dtype, "cpu", master) == Precision(*cpu)
    assert resolve_precision(dtype, torch.device("cpu"), master) == Precision(*cpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision(dtype, "cuda:0", master) == Precision(*cuda_bf16)
    assert resolve_precision(dtype, torch.device("cuda", 1), master) == Precision(*cuda_bf16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision(dtype, "cuda", master) == Precision(*cuda_no_bf16)
    if master is False:  # the default is pure bf16
        assert resolve_precision(dtype, "cpu") == Precision(*cpu)


def test_precision_names_metadata_autocast_and_refuses_unknown_dtypes():
    mixed = Precision(FP32, BF16)
    assert mixed.as_dict() == {"weights": "float32", "autocast": "bfloat16"}
    assert mixed.name == "float32 weights + bfloat16 autocast"
    assert Precision(FP64).as_dict() == {"weights": "float64", "autocast": None}
    assert Precision(FP64).name == "float64 weights, no autocast"
    with mixed.autocast("cpu"):  # the context is real where there is an autocast dtype ...
        assert torch.is_autocast_enabled("cpu")
    with Precision(FP32).autocast("cpu"):  # ... and nothing at all where there is none
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == FP32
    for bad in ("float8", "float16", "fp32", torch.float32, 32):
        with pytest.raises(ConfigError, match=r"dtype: must be one of auto, bfloat16, float32, float64"):
            resolve_precision(bad, "cpu")
    assert DTYPES == ("auto", "bfloat16", "float32", "float64")
    with pytest.raises(ConfigError, match=r"fp32_master_weights: must be true or false"):
        resolve_precision("bfloat16", "cpu", "yes")
    assert Precision(BF16).name == "bfloat16 weights, no autocast"


@pytest.mark.slow
def test_smollm2_gguf_builds_a_plain_folder(smollm2_folder):
    out = smollm2_folder
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    model, tokenizer = load_model(out, dtype="float32", device="cpu")
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - 134.5e6) < 0.1e6
    assert tokenizer.pad_token is not None
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    assert 0 < len(new_tokens) <= 8
    assert "Paris" in tokenizer.decode(new_tokens, skip_special_tokens=True)
    assert len(model_fingerprint(out)) == 64


