import json
from io import BytesIO
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from rpo.data.records import read_records
from rpo.embed import embed_prompts, embedded_prompts, get_embedder, load_embeddings, text_settings
from rpo.errors import CacheMismatchError, ConfigError, DataError
from rpo.models import build_model

torch.set_num_threads(2)

BREAD = "\n<|user|>\nHow do I bake a loaf of bread at home?\n<|assistant|>\n"
BREAD_TOO = "\n<|user|>\nWhat is a simple recipe for baking homemade bread?\n<|assistant|>\n"
HOCKEY = "\n<|user|>\nExplain the offside rule in ice hockey.\n<|assistant|>\n"
TAXES = "\n<|user|>\nWhen is the deadline to file my income tax return?\n<|assistant|>\n"
PROMPTS = [BREAD, BREAD_TOO, HOCKEY, TAXES,
           "\n<|user|>\nWrite a poem about the sea.\n<|assistant|>\n",
           "\n<|user|>\nHow many legs does a spider have?\n<|assistant|>\n"]


LONG = " ".join(f"turn {i} of a long talk about bread and tea." for i in range(12))
LENGTHS = {"max_length": 64, "max_prompt_length": 32}


def write_records(path, prompts, rejected="no"):
    rows = [{"id": f"r{i}", "prompt": p, "chosen": "yes", "rejected": rejected, "metadata": {}}
            for i, p in enumerate(prompts)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def small_model(folder, corpus):
    spec = {"kind": "small", "arch": "gpt2", "n_layers": 1, "d_model": 16, "n_heads": 2, "vocab_size": 400,
            "max_position": 256}
    return build_model(spec, folder, corpus=corpus, seed=0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return small_model(tmp_path_factory.mktemp("embed") / "base", PROMPTS + [LONG, "yes no"])


def embed(records, name, out, model, **kw):
    return embed_prompts(records, name, out, model_path=model, **{**LENGTHS, **kw})


def load(out, records, name, model, truncation=None, side="rejected", **kw):
    lengths = {**LENGTHS, **kw}
    return load_embeddings(out, records, name, text_settings(model, lengths["max_length"],
                                                             lengths["max_prompt_length"], truncation), side)


def assert_unit_rows(vectors, n_rows):
    assert vectors.dtype == np.float32 and vectors.ndim == 2 and vectors.shape[0] == n_rows
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_minilm_offline_unit_norm_and_semantic(tmp_path):
    embedder = get_embedder("all-MiniLM-L6-v2", device="cpu")
    assert embedder.name == "all-MiniLM-L6-v2"
    vectors = embedder.encode([BREAD, BREAD_TOO, HOCKEY, TAXES])
    assert_unit_rows(vectors, 4)
    assert vectors.shape[1] == 384
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2
    assert similarity[0, 1] > similarity[0, 3] + 0.2
    # The hub-style alias is the same model.
    alias = get_embedder("sentence-transformers/all-MiniLM-L6-v2", device="cpu")
    assert alias.name == "all-MiniLM-L6-v2"
    np.testing.assert_allclose(alias.encode([HOCKEY])[0], vectors[2], atol=1e-5)


def test_tfidf_svd_deterministic_and_normalised():
    embedder = get_embedder("tfidf-svd")
    first = embedder.encode(PROMPTS)
    second = get_embedder("tfidf-svd").encode(PROMPTS)
    assert_unit_rows(first, len(PROMPTS))
    assert first.shape[1] == len(PROMPTS) - 1  # min(64, n - 1)
    np.testing.assert_array_equal(first, second)
    assert get_embedder("tfidf-svd", dim=3).encode(PROMPTS).shape == (len(PROMPTS), 3)
    similarity = first @ first.T
    assert similarity[0, 1] > similarity[0, 2]  # shared words: bread, bake/baking, home
    assert_unit_rows(embedder.encode(["only one text"]), 1)


def test_random_same_text_same_vector_across_calls_and_processes():
    embedder = get_embedder("random")
    first = embedder.encode([BREAD, HOCKEY, BREAD])
    assert_unit_rows(first, 3)
    assert first.shape[1] == 64
    np.testing.assert_array_equal(first[0], first[2])
    assert abs(float(first[0] @ first[1])) < 0.9
    np.testing.assert_array_equal(get_embedder("random").encode([HOCKEY])[0], first[1])
    code = ("import sys, numpy; from rpo.embed import get_embedder; "
            "numpy.save(sys.stdout.buffer, get_embedder('random').encode([sys.argv[1]]))")
    out = subprocess.run([sys.executable, "-c", code, HOCKEY], capture_output=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    np.testing.assert_array_equal(np.load(BytesIO(out.stdout))[0], first[1])


def test_embed_prompts_one_row_per_record_duplicates_identical(tmp_path, model):
    prompts = [BREAD, HOCKEY, BREAD, TAXES, HOCKEY]
    records = write_records(tmp_path / "train.jsonl", prompts)
    out = embed(records, "random", tmp_path / "emb" / "train.random.pt", model)
    stored = torch.load(out, weights_only=True)
    assert stored["ids"] == [f"r{i}" for i in range(5)]
    assert stored["meta"]["embedder"] == "random" and stored["meta"]["dim"] == 64
    embeddings = load(out, records, "random", model)
    assert embeddings.dtype == torch.float32 and embeddings.shape == (5, 64)
    assert torch.equal(embeddings[0], embeddings[2]) and torch.equal(embeddings[1], embeddings[4])
    assert not torch.equal(embeddings[0], embeddings[1])
    expected = get_embedder("random").encode(prompts)
    np.testing.assert_array_equal(embeddings.numpy(), expected)


def test_embed_prompts_fits_tfidf_on_distinct_prompts(tmp_path, model):
    records = write_records(tmp_path / "train.jsonl", PROMPTS + PROMPTS[:2])
    embeddings = load(embed(records, "tfidf-svd", tmp_path / "e.pt", model), records, None, model)
    distinct = get_embedder("tfidf-svd").encode(PROMPTS)
    np.testing.assert_allclose(embeddings[: len(PROMPTS)].numpy(), distinct, atol=1e-6)
    assert torch.equal(embeddings[len(PROMPTS)], embeddings[0])


def test_embed_prompts_minilm(tmp_path, model):
    records = write_records(tmp_path / "train.jsonl", [BREAD, BREAD_TOO, BREAD])
    out = embed(records, "sentence-transformers/all-MiniLM-L6-v2", tmp_path / "e.pt", model)
    embeddings = load(out, records, "all-MiniLM-L6-v2", model)
    assert embeddings.shape == (3, 384)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-5)


def test_load_embeddings_refuses_changed_data_or_other_embedder(tmp_path, model):
    records = write_records(tmp_path / "train.jsonl", [BREAD, HOCKEY])
    out = embed(records, "random", tmp_path / "e.pt", model)
    with pytest.raises(CacheMismatchError, match="'random'.*'tfidf-svd'"):
        load(out, records, "tfidf-svd", model)
    write_records(records, [BREAD, TAXES])
    with pytest.raises(CacheMismatchError, match="sha256") as caught:
        load(out, records, None, model)
    assert str(out) in str(caught.value) and str(records) in str(caught.value)


def test_bad_records_name_file_and_row(tmp_path, model):
    records = tmp_path / "bad.jsonl"
    row = {"id": "a", "prompt": "x", "chosen": "y", "rejected": "n"}
    records.write_text(json.dumps(row) + "\n" + json.dumps({"id": "b"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl, row 2: missing field 'prompt'"):
        embed(records, "random", tmp_path / "e.pt", model)
    records.write_text(json.dumps({**row, "id": 1}) + "\n")
    with pytest.raises(DataError, match=r"row 1: field 'id' must be a string"):
        embed(records, "random", tmp_path / "e.pt", model)
    records.write_text("")
    with pytest.raises(DataError, match="no records"):
        embed(records, "random", tmp_path / "e.pt", model)
    with pytest.raises(ConfigError, match="training key max_prompt_length must be a positive integer"):
        embed(records, "random", tmp_path / "e.pt", model, max_prompt_length=0)
    assert not (tmp_path / "e.pt").exists()
    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "missing.pt", records, None, model)


def test_unknown_hub_embedder_fails_fast_with_config_error():
    start = time.monotonic()
    with pytest.raises(ConfigError, match="sentence-t5-large.*hub"):
        get_embedder("sentence-t5-large", device="cpu")
    assert time.monotonic() - start < 10
    with pytest.raises(ConfigError, match="embedder.dim"):
        get_embedder("random", dim=-3)


def test_cli_writes_the_file(tmp_path, model):
    records = write_records(tmp_path / "train.jsonl", [BREAD, HOCKEY, BREAD])
    out = tmp_path / "cli.pt"
    result = subprocess.run([sys.executable, "-m", "rpo.embed", "--records", str(records),
                             "--embedder", "random", "--model", str(model), "--max-length", "64",
                             "--max-prompt-length", "32", "--out", str(out)],
                            capture_output=True, text=True, check=True)
    assert "3 rows, dim 64" in result.stdout
    assert load(out, records, "random", model).shape == (3, 64)


def test_embedded_text_is_each_elements_prompt_text_the_rejected_ones_for_a_pair(tmp_path, model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    prompt = "\n<|user|>\n" + LONG[:len(LONG) // 3] + "\n<|assistant|>\n"
    n_prompt = len(tokenizer(prompt)["input_ids"])
    assert 32 < n_prompt < 64 - 3  # longer than max_prompt_length, but fits max_length with a short answer
    short, long_rejected = tmp_path / "short.jsonl", tmp_path / "long.jsonl"
    write_records(short, [BREAD, prompt])
    write_records(long_rejected, [BREAD, prompt], rejected=LONG)
    texts = [embedded_prompts(tokenizer, r, 64, 32, "keep_end") for r in read_records(short)]
    # A short prompt round-trips exactly: the markers (special tokens of our BPE) are kept.
    assert texts[0] == {"chosen": BREAD, "rejected": BREAD}
    # The public code cuts a prompt only when it and that response exceed max_length.
    assert texts[1] == {"chosen": prompt, "rejected": prompt}
    sides = embedded_prompts(tokenizer, read_records(long_rejected)[1], 64, 32, "keep_end")
    cut = sides["rejected"]  # only the long rejected response's element cuts the prompt
    assert sides["chosen"] == prompt and cut != prompt and prompt.endswith(cut) and cut.endswith("<|assistant|>\n")
    assert len(tokenizer(cut)["input_ids"]) <= 32
    start = embedded_prompts(tokenizer, read_records(long_rejected)[1], 64, 32, "keep_start")["rejected"]
    # keep_start keeps the post's start; the closing marker goes with its end, as in the public code
    assert prompt.startswith(start) and start.startswith("\n<|user|>\nturn 0") and "<|assistant|>" not in start
    # The file embeds exactly those texts: a pair's rejected text (paired RPO's, both sides) and the chosen
    # one's (an unpaired chosen item's).
    out = embed(long_rejected, "random", tmp_path / "e.pt", model)
    random = get_embedder("random")
    np.testing.assert_array_equal(load(out, long_rejected, "random", model).numpy(), random.encode([BREAD, cut]))
    np.testing.assert_array_equal(load(out, long_rejected, "random", model, side="chosen").numpy(),
                                  random.encode([BREAD, prompt]))


def test_load_embeddings_refuses_other_tokenizer_lengths_or_truncation(tmp_path, model):
    records = write_records(tmp_path / "train.jsonl", [BREAD, HOCKEY])
    out = embed(records, "random", tmp_path / "e.pt", model)
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["max_length"] == 64 and meta["max_prompt_length"] == 32 and meta["truncation"] == "keep_end"
    assert meta["tokenization"] == "halos-joint"
    assert meta["tokenizer_sha256"] == text_settings(model, 64, 32, "keep_end")["tokenizer_sha256"] is not None
    other = small_model(tmp_path / "other", ["a different corpus entirely", "with other words"])
    with pytest.raises(CacheMismatchError, match="tokenizer_sha256.*recompute"):
        load(out, records, "random", other)
    with pytest.raises(CacheMismatchError, match="max_length 64.*128"):
        load(out, records, "random", model, max_length=128)
    with pytest.raises(CacheMismatchError, match="max_prompt_length 32.*16"):
        load(out, records, "random", model, max_prompt_length=16)
    with pytest.raises(CacheMismatchError, match="truncation 'keep_end'.*'keep_start'"):
        load(out, records, "random", model, truncation="keep_start")
    # A file of the earlier tokenisation (no `tokenization`, no chosen-side rows) embeds other texts.
    stored = torch.load(out, weights_only=True)
    del stored["meta"]["tokenization"], stored["chosen_embeddings"]
    torch.save(stored, tmp_path / "old.pt")
    with pytest.raises(CacheMismatchError, match="tokenization None.*'halos-joint'.*recompute"):
        load(tmp_path / "old.pt", records, "random", model)
    stored["meta"]["tokenization"] = "halos-joint"
    torch.save(stored, tmp_path / "old.pt")
    with pytest.raises(DataError, match="has no chosen_embeddings"):
        load(tmp_path / "old.pt", records, "random", model, side="chosen")


def test_the_device_reaches_the_sentence_transformer(tmp_path, model, monkeypatch):
    """embed_prompts(device=...) loads the sentence-transformers model on that device (a GPU for
    sentence-t5-large at paper scale); weight-free embedders need no GPU and are never refused."""
    import rpo.embed as embed_module

    loaded = []
    real = embed_module._load_sentence_transformer.__wrapped__
    monkeypatch.setattr(embed_module, "_load_sentence_transformer",
                        lambda path, device: loaded.append(device) or real(path, "cpu"))
    records = write_records(tmp_path / "train.jsonl", [BREAD, HOCKEY])
    embed(records, "all-MiniLM-L6-v2", tmp_path / "e.pt", model, device="cpu")
    assert loaded == ["cpu"]
    embed(records, "random", tmp_path / "r.pt", model, device="cuda")  # no weights: no GPU wanted, none refused
    assert embed_module.on_gpu("sentence-t5-large") and embed_module.on_gpu("all-MiniLM-L6-v2")
    assert not embed_module.on_gpu("random") and not embed_module.on_gpu("tfidf-svd")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines whose torch finds no GPU")
def test_device_cuda_without_a_gpu_is_refused_naming_the_cuda_wheel(tmp_path, model):
    records = write_records(tmp_path / "train.jsonl", [BREAD, HOCKEY])
    with pytest.raises(ConfigError, match=r"device cuda: .*download\.pytorch\.org/whl/cu"):
        embed(records, "all-MiniLM-L6-v2", tmp_path / "e.pt", model, device="cuda")
    assert not (tmp_path / "e.pt").exists()
