"""benchmarks/bench_mfu.py: the FLOP count against hand computations, and a tiny end-to-end run on CPU."""
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_mfu  # noqa: E402

from rpo.scoring import score  # noqa: E402

# Tiny Llama: hidden 64, 2 layers, 4 heads of 16, 2 KV heads, MLP 128, vocab 512, untied head.
# Per layer: q 64*64 + k 64*32 + v 64*32 + o 64*64 = 12288; gate, up, down 3*64*128 = 24576;
# two RMSNorms 2*64 = 128; sum 36992. Two layers 73984, final norm 64: N = 74048.
TINY_N = 74048
# Per token at T = 32: 6*74048 + 12*2*64*32 = 444288 + 49152 = 493440.
TINY_PER_TOKEN = 493440
# A step of 8 pairs = 16 sequences of 16 + 16 tokens: 512 tokens * 493440 = 252641280, plus the LM head
# (512*64 = 32768 weights) at the 16 response positions per sequence: 6*32768*16*16 = 50331648.
# Sum 302972928.
TINY_STEP_FLOPS = 302972928


def tiny_model():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(bench_mfu.llama_config(bench_mfu.TINY, eos_id=0, pad_id=1))


def example(prompt_len, response_len):
    ids = list(range(2, 2 + prompt_len + response_len))
    return {"input_ids": ids, "labels": [-100] * prompt_len + ids[prompt_len:]}


def test_non_embedding_params_and_flops_per_token_match_hand_count():
    model = tiny_model()
    assert bench_mfu.non_embedding_params(model) == TINY_N
    assert sum(p.numel() for p in model.parameters()) == TINY_N + 2 * 512 * 64  # embeddings + untied head
    assert bench_mfu.flops_per_token(TINY_N, 2, 64, 32) == TINY_PER_TOKEN
    fixed = [example(16, 16)] * 16
    assert bench_mfu.batch_flops(fixed, TINY_N, 2, 64, 512 * 64) == TINY_STEP_FLOPS


@pytest.mark.parametrize("packing", [True, False])
def test_head_positions_are_the_rows_scoring_sends_through_the_head(packing, monkeypatch):
    import rpo.scoring

    model = tiny_model()
    examples = [example(3, 2), example(2, 4), example(5, 1)]
    assert bench_mfu.head_positions(examples) == [2, 4, 1]  # one per response token, in either layout
    seen, head_logps = [], rpo.scoring._target_logps
    monkeypatch.setattr(rpo.scoring, "_target_logps", lambda linear, hidden, targets: seen.append(hidden.shape)
                        or head_logps(linear, hidden, targets))
    with torch.no_grad():
        score(model, examples, pad_token_id=1, packing=packing)
    assert seen == [torch.Size([7, 64])]  # the head's input: only the 2 + 4 + 1 response positions


def test_peak_table_prefers_specific_names_and_admits_ignorance():
    assert bench_mfu.peak_flops("NVIDIA H100 80GB HBM3", None)[0] == 989.4e12
    assert bench_mfu.peak_flops("NVIDIA H100 PCIe", None)[0] == 756e12
    assert bench_mfu.peak_flops("NVIDIA H200", None)[0] == 989.4e12
    assert bench_mfu.peak_flops("NVIDIA A100-SXM4-80GB", None)[0] == 312e12
    assert bench_mfu.peak_flops("NVIDIA L40S", None)[0] == 362.05e12
    assert bench_mfu.peak_flops("NVIDIA L40", None)[0] == 181.05e12
    peak, why = bench_mfu.peak_flops("AMD EPYC 7B13", None)
    assert peak is None and "--peak-tflops" in why
    assert bench_mfu.peak_flops("AMD EPYC 7B13", 2.5) == (2.5e12, "--peak-tflops")


def test_tiny_cpu_run_end_to_end(capsys):
    result = bench_mfu.main(["--device", "cpu", "--tiny", "--steps", "3", "--warmup", "1"])
    out = capsys.readouterr().out
    for key in ("step_time_s", "tokens_per_s", "flops_per_s"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["tokens_per_step"] == 16 * 32  # 8 pairs, every sequence cut to exactly 16 + 16 tokens
    assert result["flops_per_step"] == TINY_STEP_FLOPS
    assert result["non_embedding_params"] == TINY_N
    # an odd number of steps of equal tokens: the median rate is exactly tokens / the median time
    assert result["tokens_per_s"] == pytest.approx(512 / result["step_time_s"], rel=1e-9)
    assert result["mfu"] is None and result["peak_memory_bytes"] is None
    assert "MFU: unknown" in out and "arguments: --device cpu --tiny --steps 3 --warmup 1" in out


def test_tiny_cpu_run_with_peak_override_reports_mfu(capsys):
    result = bench_mfu.main(["--device", "cpu", "--tiny", "--steps", "1", "--warmup", "0", "--pairs", "2",
                             "--peak-tflops", "0.5"])
    assert result["mfu"] == pytest.approx(result["flops_per_s"] / 0.5e12)
    assert 0 < result["mfu"] < 1
    assert result["tokens_per_step"] == 4 * 32
    assert "% of 0.5 TFLOP/s peak (--peak-tflops)" in capsys.readouterr().out


def test_cuda_without_a_gpu_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        bench_mfu.main(["--tiny"])
    assert "no CUDA device visible" in capsys.readouterr().err
