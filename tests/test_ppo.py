"""PPO's value head as the public code has it (HALOs models.py ValueHead): an fp32 3-layer MLP on the
DETACHED last hidden state, so the critic loss trains the head alone, and its gradient is clipped on
its own (v_head_max_grad_norm 0.1) while the language model keeps max_grad_norm."""
import pytest
import torch

from rpo.data.records import PreferenceRecord
from rpo.ppo import parameter_groups
from rpo.train import Trainer, resolve_config


@pytest.fixture(scope="module")
def world(tmp_path_factory, build_tiny_world):
    records = [PreferenceRecord(id=f"p{i}", prompt=f"\n<|user|>\nname a colour, {i}\n<|assistant|>\n",
                                chosen=f"blue, number {i % 3}.", rejected="no.", metadata={"truncation": "keep_end"})
               for i in range(16)]
    return build_tiny_world(tmp_path_factory.mktemp("ppo"), records)


def trainer(world, name, **kw):
    return Trainer(resolve_config({"model": str(world["model"]), "data": str(world["data"]), "method": "ppo",
                                   "out": str(world["root"] / name), "reference_cache": str(world["cache"]),
                                   "batch_size": 4, "lr": 1e-3, "optimizer": "adamw", "warmup_steps": 1,
                                   "max_length": 64, "max_prompt_length": 32, "seed": 3, "threads": 1, **kw}))


def backward(t):
    out, _, _, _ = t.micro_batch_loss(*t.plan[0])
    out.loss.backward()
    return parameter_groups(t.model)


def test_value_head_is_the_public_fp32_mlp(world):
    t = trainer(world, "shape")
    head, d = t.model.v_head, t.model.config.hidden_size
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert [(m.in_features, m.out_features) for m in (head[0], head[2], head[4])] == [(d, d), (d, d), (d, 1)]
    assert all(p.dtype == torch.float32 for p in head.parameters())
    assert t.cfg["v_head_max_grad_norm"] == 0.1  # the public base_model.yaml value


def test_critic_gradient_reaches_only_the_value_head(world):
    """The language model's gradient is the same with the critic loss removed (critic_coef 0)."""
    lm, head = backward(trainer(world, "with-critic", critic_coef=1.0))
    lm0, head0 = backward(trainer(world, "no-critic", critic_coef=0.0))
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(lm, lm0))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in head0)


def test_value_head_gradient_is_clipped_on_its_own(world):
    t = trainer(world, "clip", critic_coef=1.0, v_head_max_grad_norm=1e-4, max_grad_norm=1e9)
    lm, head = backward(t)
    lm_before = [p.grad.clone() for p in lm]
    head_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in head])).item()
    t.optimizer.zero_grad = lambda set_to_none=True: None  # keep the clipped gradients to look at
    norms = t.apply_gradients()
    after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in head])).item()
    assert head_norm > 1e-4 and after == pytest.approx(1e-4, rel=1e-5)
    assert norms["grad_norm/v_head"] == pytest.approx(head_norm, rel=1e-6)
    assert all(torch.equal(a, p.grad) for a, p in zip(lm_before, lm))  # the policy is clipped at max_grad_norm only
    assert norms["grad_norm"] == pytest.approx(torch.linalg.vector_norm(torch.stack([g.norm() for g in lm_before])).item(),
                                      rel=1e-6)
