"""Inference weights (rpo.precision.for_inference): under fp32 master weights the reference cache and
generation hold the linear weights in bf16, and compute exactly what the fp32 weights under autocast do."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from rpo.data.records import read_records
from rpo.data.tokenize import tokenize_records
from rpo.models import load_model
from rpo.refcache import batch_token_logps
from rpo.precision import resolve_precision
from test_train import world  # noqa: F401  (the tiny world: records and a tokenizer trained on them)


@pytest.fixture(scope="module")
def untied_llama(world, tmp_path_factory):
    """A 2-layer Llama with its own lm_head (Llama-2's layout) and the world's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(world["model"])
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("llama") / "model"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def param_bytes(model):
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_fp32_master_inference_holds_bf16_linears_and_scores_bit_identically(world, untied_llama):
    keys = {"dtype": "bfloat16", "fp32_master_weights": True, "device": "cpu"}
    training, tokenizer = load_model(untied_llama, **keys)
    inference, _ = load_model(untied_llama, inference=True, **keys)
    precision = resolve_precision("bfloat16", "cpu", True)
    assert inference.lm_head.weight.dtype == inference.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert inference.model.embed_tokens.weight.dtype == inference.model.norm.weight.dtype == torch.float32
    assert not any(p.requires_grad for p in inference.parameters())
    assert param_bytes(inference) < 0.62 * param_bytes(training)
    sequences = tokenize_records(read_records(world["data"]), tokenizer, 64, 32, "keep_start")
    batch = sequences["chosen"][:6] + sequences["rejected"][:6]
    for packing in (True, False):
        a = batch_token_logps(training, batch, tokenizer.pad_token_id, precision, packing)
        b = batch_token_logps(inference, batch, tokenizer.pad_token_id, precision, packing)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    prompt = torch.tensor([batch[0]["input_ids"][:16]])
    with torch.no_grad(), precision.autocast("cpu"):
        greedy = [m.generate(input_ids=prompt, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             output_logits=True, return_dict_in_generate=True) for m in (training, inference)]
    assert torch.equal(greedy[0].sequences, greedy[1].sequences)
    assert all(torch.equal(x, y) for x, y in zip(greedy[0].logits, greedy[1].logits))  # the KV cache path too


def test_pure_bf16_and_fp32_inference_only_drop_gradients(world):
    for dtype in ("bfloat16", "float32"):
        training, _ = load_model(world["model"], dtype=dtype, device="cpu")
        inference, _ = load_model(world["model"], dtype=dtype, device="cpu", inference=True)
        assert [p.dtype for p in inference.parameters()] == [p.dtype for p in training.parameters()]
        assert not any(p.requires_grad for p in inference.parameters())
