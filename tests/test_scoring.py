"""rpo.scoring: packed and padded layouts give the numbers of the full-logits computation (float64, per
sequence, values and gradients), attention never crosses sequences, and the head is chunked."""
import pytest
import torch

import rpo.scoring
from rpo.models import build_model, load_model
from rpo.scoring import Scores, pack, score

EXACT = 1e-10
SMALL = {"kind": "small", "n_layers": 2, "d_model": 32, "n_heads": 4, "vocab_size": 300, "max_position": 96}


def examples(vocab: int, shapes=((12, 4), (30, 10), (5, 2), (20, 19), (9, 8)), seed: int = 0) -> list[dict]:
    """(length, prompt length) per example: a spread of lengths, a 1-token response, a long prompt."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for length, prompt in shapes:
        ids = torch.randint(3, vocab, (length,), generator=generator).tolist()
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def full_logits_logps(model, example: dict) -> torch.Tensor:
    """The definition, one unpadded sequence at a time: log softmax of every logit, response tokens summed."""
    ids = torch.tensor([example["input_ids"]])
    logprobs = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    labels = torch.tensor(example["labels"][1:])
    scored = labels != -100
    return logprobs[scored].gather(1, labels[scored, None]).sum()


def sums_and_grads(model, batch, fn):
    model.zero_grad()
    sums = fn(model, batch)
    sums.sum().backward()
    return sums.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(a, b, tolerance=EXACT):
    (sa, ga), (sb, gb) = a, b
    assert (sa - sb).abs().max().item() < tolerance * max(1.0, sb.abs().max().item())
    assert ga.keys() == gb.keys()
    for name in ga:
        assert (ga[name] - gb[name]).abs().max().item() < tolerance, name


def check_layouts_exact(model, batch):
    reference = sums_and_grads(model, batch, lambda m, b: torch.stack([full_logits_logps(m, e) for e in b]))
    for packing in (True, False):
        assert_same(sums_and_grads(model, batch, lambda m, b: score(m, b, 0, packing=packing).sums), reference)
    packed, padded = (score(model, batch, 0, packing=p) for p in (True, False))
    assert torch.allclose(packed.token_logps, padded.token_logps, atol=EXACT, rtol=0)
    assert packed.counts.tolist() == padded.counts.tolist() == [sum(x != -100 for x in e["labels"][1:]) for e in batch]
    assert packed.n_tokens == padded.n_tokens == sum(len(e["input_ids"]) for e in batch)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_and_padded_equal_the_full_logits_definition(tmp_path, arch):
    model, _ = load_model(build_model({**SMALL, "arch": arch}, tmp_path / arch, corpus=["some text"] * 20),
                          dtype="float64", device="cpu")
    check_layouts_exact(model, examples(model.config.vocab_size))


@pytest.mark.slow
def test_smollm2_packed_and_padded_equal_the_full_logits_definition(smollm2_folder, monkeypatch):
    """The pretrained model (GQA, tied head, 49k vocabulary), its head in chunks of 16 positions."""
    model, _ = load_model(smollm2_folder, dtype="float64", device="cpu")
    batch = examples(model.config.vocab_size, shapes=((24, 8), (40, 30), (9, 3)))
    monkeypatch.setattr(rpo.scoring, "HEAD_CHUNK_ELEMENTS", 16 * model.config.vocab_size)
    check_layouts_exact(model, batch)


def test_packed_attention_stays_inside_each_sequence(tmp_path, monkeypatch):
    """Another sequence in the row changes nothing, and the packed forward ran per-sequence attention."""
    model, _ = load_model(build_model({**SMALL, "arch": "llama"}, tmp_path / "m", corpus=["some text"] * 20),
                          dtype="float64", device="cpu")
    calls, segment = [], rpo.scoring.segment_sdpa
    monkeypatch.setitem(__import__("transformers").AttentionInterface._global_mapping, rpo.scoring.SEGMENT_ATTENTION,
                        lambda *a, **k: calls.append(k["cu_seq_lens_q"].tolist()) or segment(*a, **k))
    batch = examples(model.config.vocab_size)
    with torch.no_grad():
        together = score(model, batch, 0).sums
        alone = torch.cat([score(model, [e], 0).sums for e in batch])
        swapped = score(model, [batch[0], *examples(model.config.vocab_size, seed=1)[1:]], 0).sums
    assert torch.allclose(together, alone, atol=EXACT, rtol=0)
    assert swapped[0] == together[0]
    assert calls[0] == pack(batch)["cu_seq_lens_q"].tolist() and len(calls) == 2 * SMALL["n_layers"] + 2 * 5
    assert model.config._attn_implementation == "sdpa"  # restored after each forward


def test_head_is_chunked_within_its_budget_with_the_same_values_and_gradients(tmp_path, monkeypatch):
    model, _ = load_model(build_model({**SMALL, "arch": "llama"}, tmp_path / "m", corpus=["some text"] * 20),
                          dtype="float64", device="cpu")
    batch = examples(model.config.vocab_size)
    whole = sums_and_grads(model, batch, lambda m, b: score(m, b, 0).sums)
    budget, rows, head_logps = 7 * model.config.vocab_size, [], rpo.scoring._target_logps
    monkeypatch.setattr(rpo.scoring, "HEAD_CHUNK_ELEMENTS", budget)
    monkeypatch.setattr(rpo.scoring, "_target_logps", lambda linear, hidden, targets: rows.append(len(hidden))
                        or head_logps(linear, hidden, targets))
    assert_same(sums_and_grads(model, batch, lambda m, b: score(m, b, 0).sums), whole)
    n = sum(sum(x != -100 for x in e["labels"][1:]) for e in batch)
    forward = rows[:-(-n // 7)]
    assert max(rows) == 7 and sum(forward) == n  # forward chunks, then their recomputation in backward
    assert sum(rows) == 2 * n


def test_scores_matrix_and_sums():
    scores = Scores(torch.tensor([-1.0, -2.0, -3.0, -4.0]), torch.tensor([1, 0, 3]), 9)
    matrix, mask = scores.as_matrix()
    assert matrix.tolist() == [[-1, 0, 0], [0, 0, 0], [-2, -3, -4]]
    assert mask.sum(1).tolist() == [1, 0, 3]
    assert scores.sums.tolist() == [-1.0, 0.0, -9.0]


def test_pack_layout():
    layout = pack([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}])
    assert layout["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert layout["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert layout["cu_seq_lens_q"].tolist() == [0, 3, 5] and layout["max_length_q"] == 3
    assert layout["positions"].tolist() == [0, 1, 3] and layout["targets"].tolist() == [6, 7, 9]
    assert layout["counts"].tolist() == [2, 1]


def test_an_instance_forward_on_the_head_survives_scoring(tmp_path):
    """A hook library's instance-level head forward (accelerate installs one) is used inside and restored."""
    model, _ = load_model(build_model({**SMALL, "arch": "gpt2"}, tmp_path / "m", corpus=["some text"] * 20),
                          dtype="float64", device="cpu")
    head, calls = model.get_output_embeddings(), []
    plain = head.forward
    head.forward = lambda hidden: calls.append(hidden.shape) or plain(hidden)
    wrapped = head.forward
    with torch.no_grad():
        score(model, examples(model.config.vocab_size), 0)
    assert calls and head.forward is wrapped


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_scoring_builds_no_kv_cache(tmp_path, monkeypatch, arch):
    """A scoring forward decodes nothing after it: without use_cache=False, transformers would keep every
    layer's keys and values for the whole forward (at 13B, the reference cache's 32 x 512 tokens: 12.5 GiB)."""
    import transformers.cache_utils

    model, _ = load_model(build_model({**SMALL, "arch": arch}, tmp_path / "m", corpus=["some text"] * 20),
                          dtype="float64", device="cpu")

    def no_cache(*args, **kwargs):
        raise AssertionError("rpo.scoring.score built a KV cache")

    monkeypatch.setattr(transformers.cache_utils.DynamicCache, "__init__", no_cache)
    with torch.no_grad():  # eval mode, where use_cache defaults to the config's True
        assert score(model.eval(), examples(model.config.vocab_size), 0).sums.shape == (5,)
