"""The public code's learning-rate schedule and numerics on a tiny model: the lr each step logs, pure bf16
(weights, gradients, optimizer state, summed log-probs) beside fp32 master weights, and resumption in both."""
import json

import pytest
import torch
from safetensors.torch import load_file

from rpo.errors import ConfigError
from rpo.optim import warmup_constant_factor
from rpo.refcache import compute_reference_cache
from rpo.train import Trainer
from test_train import config, world  # noqa: F401  (the tiny model, its records and caches)


def rows(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_public_schedule_warms_up_from_lr_over_warmup_plus_one_then_stays(world, tmp_path):
    warmup, lr = 3, 1e-3
    out = Trainer(config(world, tmp_path, "sft", scheduler="linear_warmup_constant", warmup_steps=warmup, lr=lr,
                         max_steps=warmup + 3)).fit()
    logged = [r["lr"] for r in rows(out)]
    expected = [lr * min(1.0, (k + 1) / (warmup + 1)) for k in range(warmup + 3)]  # trainers.py:351
    assert logged == pytest.approx(expected, rel=1e-12)
    assert logged[0] == pytest.approx(lr / 4) and logged[-3:] == pytest.approx([lr] * 3)  # no decay
    assert [warmup_constant_factor(k, 150) for k in (0, 149, 150, 500)] == [1 / 151, 150 / 151, 1.0, 1.0]
    with pytest.raises(ConfigError, match="'scheduler' must be one of linear_warmup_constant"):
        config(world, tmp_path, "sft", scheduler="warmup")


def test_logged_lr_is_the_one_the_step_used_under_the_default_schedule(world, tmp_path):
    out = Trainer(config(world, tmp_path, "sft", warmup_steps=2, lr=1e-3, max_steps=4)).fit()
    # transformers' linear: k/2 during warm-up (the first step at 0), then decay to 0 over steps 2..4
    assert [r["lr"] for r in rows(out)] == pytest.approx([0.0, 5e-4, 1e-3, 5e-4])


def _step_and_inspect(trainer):
    """One optimizer step by hand: (param dtypes, grad dtypes before the update, optimizer-state dtypes)."""
    trainer.model.train()
    trainer.accumulate_gradients()
    grads = {p.grad.dtype for p in trainer.model.parameters() if p.grad is not None}
    trainer.apply_gradients()
    state = {v.dtype for s in trainer.optimizer.state.values() for v in s.values()
             if torch.is_tensor(v) and v.dim() > 0}
    return {p.dtype for p in trainer.model.parameters()}, grads, state


def test_pure_bf16_keeps_weights_gradients_and_rmsprop_state_in_bf16(world, tmp_path):
    cache = compute_reference_cache(world["model"], world["data"], tmp_path / "ref.pt", max_length=64,
                                    max_prompt_length=32, batch_size=8, dtype="bfloat16")
    assert torch.load(cache, weights_only=True)["meta"]["precision"] == {"weights": "bfloat16", "autocast": None}
    trainer = Trainer(config(world, tmp_path, "dpo", dtype="bfloat16", optimizer="rmsprop", lr=1e-2,
                             reference_cache=str(cache)))
    assert trainer.precision.name == "bfloat16 weights, no autocast"
    chosen, rejected = trainer.plan[0]
    logps, _, _ = trainer.forward_logps(trainer.examples(chosen, rejected))
    assert logps.dtype == torch.bfloat16  # summed in bf16, as the public code's
    out = trainer.micro_batch_loss(chosen, rejected)[0]  # the policy is the reference at step 1
    assert out.loss.dtype == torch.bfloat16 and out.loss.item() == torch.tensor(0.6931, dtype=torch.bfloat16).item()
    assert out.chosen_rewards.abs().max().item() == 0 == out.rejected_rewards.abs().max().item()
    assert _step_and_inspect(trainer) == ({torch.bfloat16}, {torch.bfloat16}, {torch.bfloat16})


def test_fp32_master_weights_keep_fp32_weights_and_state_under_bf16_autocast(world, tmp_path):
    cache = compute_reference_cache(world["model"], world["data"], tmp_path / "ref.pt", max_length=64,
                                    max_prompt_length=32, batch_size=8, dtype="bfloat16", fp32_master_weights=True)
    trainer = Trainer(config(world, tmp_path, "dpo", dtype="bfloat16", fp32_master_weights=True,
                             optimizer="rmsprop", reference_cache=str(cache)))
    assert trainer.precision.name == "float32 weights + bfloat16 autocast"
    assert _step_and_inspect(trainer) == ({torch.float32}, {torch.float32}, {torch.float32})
    with pytest.raises(ConfigError, match="'fp32_master_weights' must be true or false"):
        config(world, tmp_path, "dpo", fp32_master_weights="yes")


@pytest.mark.parametrize("master", [False, True])
def test_resume_is_bit_identical_in_both_numerics(world, tmp_path, master):
    def run(name, **kw):
        return Trainer(config(world, tmp_path / name, "sft", dtype="bfloat16", fp32_master_weights=master,
                              optimizer="rmsprop", scheduler="linear_warmup_constant", warmup_steps=2,
                              max_steps=4, save_every=2, **kw)).fit()

    full = run("a")
    assert run("b", stop_after_steps=3) is None
    resumed = run("b")
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert {v.dtype for v in a.values()} == {torch.float32 if master else torch.bfloat16}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["lr"] for r in rows(resumed)] == [r["lr"] for r in rows(full)]
