"""Every loss against values computed by hand (plain `math`, no torch), gradchecks and identities."""
import math

import pytest
import torch

from rpo.errors import ConfigError
from rpo.losses import REGISTRY, get_loss, losses_needing, rpo_weights

BETA = 0.1


def logsig(x):
    return -math.log1p(math.exp(-x))


def sig(x):
    return 1 / (1 + math.exp(-x))


PC = [-10.0, -12.0, -8.0]
PR = [-11.0, -9.0, -15.0]
RC = [-10.5, -11.0, -9.0]
RR = [-10.0, -10.0, -14.0]
RW = [p - r for p, r in zip(PC, RC)]  # chosen log-ratios  [0.5, -1.0, 1.0]
RL = [p - r for p, r in zip(PR, RR)]  # rejected log-ratios [-1.0, 1.0, -1.0]
EW = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]
EL = [[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.hypot(*a) / math.hypot(*b)


def hand_weights(ew, el, tau):
    rows = []
    for a in ew:
        scores = [math.exp(-(1 - cos(a, b)) / tau) for b in el]
        rows.append([s / sum(scores) for s in scores])
    return rows


def call(name, **kw):
    return get_loss(name)(t(PC), t(PR), t(RC), t(RR), **kw)


def test_dpo_by_hand():
    expected = sum(-logsig(BETA * (w - l)) for w, l in zip(RW, RL)) / 3
    out = call("dpo", beta=BETA)
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.chosen_rewards.tolist() == pytest.approx([BETA * r for r in RW])
    assert out.rejected_rewards.tolist() == pytest.approx([BETA * r for r in RL])
    assert not out.chosen_rewards.requires_grad


def test_ipo_by_hand():
    expected = sum((w - l - 1 / (2 * BETA)) ** 2 for w, l in zip(RW, RL)) / 3
    assert call("ipo", beta=BETA).loss.item() == pytest.approx(expected, rel=1e-12)


def test_cdpo_by_hand_and_at_epsilon_zero_is_dpo():
    eps = 0.2
    expected = sum(-(1 - eps) * logsig(BETA * (w - l)) - eps * logsig(-BETA * (w - l)) for w, l in zip(RW, RL)) / 3
    out = get_loss("cdpo")(t(PC), t(PR), t(RC), t(RR), beta=BETA, epsilon=eps)
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.chosen_rewards.tolist() == pytest.approx([BETA * r for r in RW])
    assert call("cdpo", beta=BETA, epsilon=0.0).loss.item() == pytest.approx(call("dpo", beta=BETA).loss.item(), rel=1e-15)
    assert call("cdpo").loss.item() == pytest.approx(call("cdpo", beta=0.1, epsilon=0.2).loss.item(), rel=1e-15)
    with pytest.raises(ValueError, match="epsilon must be in"):
        call("cdpo", epsilon=1.5)


def test_slic_by_hand_needs_no_reference():
    beta, lam = 1.0, 0.1
    expected = sum(max(0.0, beta - w + l) - lam * w for w, l in zip(PC, PR)) / 3
    out = get_loss("slic")(t(PC), t(PR), beta=beta, lambda_coef=lam)
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    # margins logp(y_w) - logp(y_l) = 1, -3, 7 against beta 1: only the second pair is inside the hinge
    assert [max(0.0, beta - w + l) for w, l in zip(PC, PR)] == [0.0, 4.0, 0.0]
    assert get_loss("slic")(t(PC), t(PR)).loss.item() == pytest.approx(expected, rel=1e-15)  # the defaults
    with pytest.raises(ConfigError, match="loss 'slic': takes no reference"):
        get_loss("slic")(t(PC), t(PR), t(RC), t(RR))


def test_kto_by_hand_with_positive_and_clamped_kl():
    for kl_policy, kl_ref in (([-5.0, -6.0], [-6.0, -6.5]), ([-7.0, -7.0], [-6.0, -6.0])):
        z0 = max(0.0, sum(p - r for p, r in zip(kl_policy, kl_ref)) / 2)
        terms = [1 - sig(BETA * (w - z0)) for w in RW] + [1 - sig(BETA * (z0 - l)) for l in RL]
        out = call("kto", beta=BETA, policy_kl_logps=t(kl_policy), reference_kl_logps=t(kl_ref))
        assert out.loss.item() == pytest.approx(sum(terms) / 6, rel=1e-12)
        # the trainer's z0 (averaged over ranks, rpo.kto) given directly: the same loss
        assert call("kto", beta=BETA, z0=z0).loss.item() == pytest.approx(sum(terms) / 6, rel=1e-12)


def test_rpo_weights_by_hand():
    w = rpo_weights(t(EW), t(EL), 0.5)
    assert w.tolist() == [pytest.approx(row, rel=1e-12) for row in hand_weights(EW, EL, 0.5)]
    assert w.sum(1).tolist() == pytest.approx([1.0, 1.0, 1.0])


@pytest.mark.parametrize("name", ["rpo-paired", "rpo-unpaired"])
@pytest.mark.parametrize("tau", [0.25, 0.5, 0.75])
def test_rpo_embedding_weighted_by_hand(name, tau):
    w = hand_weights(EW, EL, tau)
    expected = sum(-logsig(BETA * w[i][j] * (RW[i] - RL[j])) for i in range(3) for j in range(3)) / 9
    out = call(name, beta=BETA, tau=tau, chosen_prompt_embeddings=t(EW), rejected_prompt_embeddings=t(EL))
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.weights.shape == (3, 3)


def test_rpo_unpaired_rectangular_by_hand():
    pc, rc, ew = t(PC[:2]), t(RC[:2]), t(EW[:2])
    out = get_loss("rpo-unpaired")(pc, t(PR), rc, t(RR), beta=BETA, tau=0.5,
                                   chosen_prompt_embeddings=ew, rejected_prompt_embeddings=t(EL))
    w = hand_weights(EW[:2], EL, 0.5)
    expected = sum(-logsig(BETA * w[i][j] * (RW[i] - RL[j])) for i in range(2) for j in range(3)) / 6
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)


def test_rpo_unpaired_batch_without_rejected_items_contributes_nothing():
    pc = t(PC).requires_grad_()
    empty = t([])
    out = get_loss("rpo-unpaired")(pc, empty, t(RC), empty, chosen_prompt_embeddings=t(EW),
                                   rejected_prompt_embeddings=torch.zeros(0, 2, dtype=torch.float64))
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert pc.grad.abs().sum().item() == 0.0


def test_rpo_uniform_by_hand():
    expected = sum(-logsig(BETA * (RW[i] - RL[j])) for i in range(3) for j in range(3)) / 9
    assert call("rpo-uniform", beta=BETA).loss.item() == pytest.approx(expected, rel=1e-12)


def test_rpo_diagonal_by_hand():
    alpha = 0.8
    rows = []
    for i in range(3):
        off = [-logsig(BETA * (RW[i] - RL[j])) for j in range(3) if j != i]
        rows.append(alpha * -logsig(BETA * (RW[i] - RL[i])) + (1 - alpha) * sum(off) / 2)
    assert call("rpo-diagonal", beta=BETA, diagonal_weight=alpha).loss.item() == pytest.approx(sum(rows) / 3, rel=1e-12)


def test_sft_is_mean_token_nll():
    out = get_loss("sft")(t([-6.0, -2.0]), None, None, None, chosen_lengths=torch.tensor([3, 1]))
    assert out.loss.item() == pytest.approx(8.0 / 4)
    assert REGISTRY["sft"].hyperparameters == {"normalization": "token"}  # the default: as above


def test_sft_sequence_normalization_is_the_public_codes_summed_nll_per_sequence():
    """trainers.py:559: -logp summed over each sequence's tokens, then the mean over sequences; the
    token counts play no part (a long sequence weighs more)."""
    pc = t([-6.0, -2.0, -1.0]).requires_grad_()
    out = get_loss("sft")(pc, chosen_lengths=torch.tensor([3, 1, 5]), normalization="sequence")
    assert out.loss.item() == pytest.approx((6.0 + 2.0 + 1.0) / 3)
    out.loss.backward()
    assert torch.allclose(pc.grad, torch.full((3,), -1.0 / 3, dtype=pc.dtype))
    token = get_loss("sft")(pc, chosen_lengths=torch.tensor([3, 1, 5]))
    assert token.loss.item() == pytest.approx(9.0 / 9)
    with pytest.raises(ConfigError, match="'normalization' must be one of token, sequence, got 'tokens'"):
        REGISTRY["sft"].resolve_hyperparameters({"normalization": "tokens"})


def test_identities():
    dpo = call("dpo", beta=BETA).loss
    assert call("rpo-diagonal", beta=BETA, diagonal_weight=1.0).loss.item() == pytest.approx(dpo.item(), rel=1e-12)
    assert call("rpo-diagonal", beta=BETA, diagonal_weight=0.0).loss.item() != pytest.approx(dpo.item())
    # With one pair every RPO variant is DPO (w_11 = 1: the softmax runs over a single entry).
    one = dict(chosen_prompt_embeddings=t(EW[:1]), rejected_prompt_embeddings=t(EL[:1]))
    args = (t(PC[:1]), t(PR[:1]), t(RC[:1]), t(RR[:1]))
    dpo1 = get_loss("dpo")(*args, beta=BETA).loss.item()
    for name in ("rpo-paired", "rpo-unpaired", "rpo-uniform", "rpo-diagonal"):
        kw = one if "embeddings" in get_loss(name).needs else {}
        assert get_loss(name)(*args, beta=BETA, **kw).loss.item() == pytest.approx(dpo1, rel=1e-12), name
    # Orthogonal prompts and tau -> 0: the weights become the identity, so off-diagonal logits vanish.
    eye = torch.eye(3, dtype=torch.float64)
    w = rpo_weights(eye, eye, 1e-3)
    assert torch.allclose(w, eye, atol=1e-12)
    # Uniform weights 1/N inside the sigmoid are RPO with identical prompts; the uniform loss uses w = 1.
    same = torch.ones(3, 2, dtype=torch.float64)
    assert torch.allclose(rpo_weights(same, same, 0.5), torch.full((3, 3), 1 / 3, dtype=torch.float64))


GRAD_KW = {
    "dpo": {}, "ipo": {}, "rpo-diagonal": {}, "rpo-uniform": {}, "cdpo": {},
    "kto": {"policy_kl_logps": t([-5.0, -6.0]), "reference_kl_logps": t([-6.0, -6.5])},
    "rpo-paired": {"chosen_prompt_embeddings": t(EW), "rejected_prompt_embeddings": t(EL)},
    "rpo-unpaired": {"chosen_prompt_embeddings": t(EW), "rejected_prompt_embeddings": t(EL)},
}


@pytest.mark.parametrize("name", sorted(GRAD_KW))
def test_gradcheck(name):
    def f(pc, pr):
        tau = {"tau": 0.5} if "tau" in get_loss(name).hyperparameters else {}
        return get_loss(name)(pc, pr, t(RC), t(RR), beta=0.5, **tau, **GRAD_KW[name]).loss

    inputs = (t(PC).requires_grad_(), t(PR).requires_grad_())
    assert torch.autograd.gradcheck(f, inputs)


def test_slic_gradcheck():
    def f(pc, pr):
        return get_loss("slic")(pc, pr, beta=10.0).loss  # every pair inside the hinge: away from the kink

    assert torch.autograd.gradcheck(f, (t(PC).requires_grad_(), t(PR).requires_grad_()))


def test_sft_gradcheck():
    lengths = torch.tensor([3, 1])
    assert torch.autograd.gradcheck(lambda pc: get_loss("sft")(pc, chosen_lengths=lengths).loss, (t(PC[:2]).requires_grad_(),))


def test_no_gradient_into_embeddings():
    ew, el = t(EW).requires_grad_(), t(EL).requires_grad_()
    pc = t(PC).requires_grad_()
    get_loss("rpo-paired")(pc, t(PR), t(RC), t(RR), chosen_prompt_embeddings=ew, rejected_prompt_embeddings=el).loss.backward()
    assert ew.grad is None and el.grad is None and pc.grad is not None


def test_errors():
    with pytest.raises(ConfigError, match="known losses: sft, dpo"):
        get_loss("orpo")
    with pytest.raises(ValueError, match="chosen_prompt_embeddings"):
        call("rpo-paired")
    with pytest.raises(ValueError, match="as many chosen as rejected"):
        get_loss("dpo")(t(PC[:2]), t(PR), t(RC[:2]), t(RR))
    with pytest.raises(ValueError, match="tau must be > 0"):
        call("rpo-paired", tau=0.0, chosen_prompt_embeddings=t(EW), rejected_prompt_embeddings=t(EL))
    with pytest.raises(ValueError, match="policy_kl_logps"):
        call("kto")
    with pytest.raises(ValueError, match="1-D"):
        get_loss("dpo")(t([PC]), t([PR]), t([RC]), t([RR]))
    assert {"sft", "dpo", "ipo", "cdpo", "slic", "kto", "rpo-paired", "rpo-unpaired", "rpo-diagonal",
            "rpo-uniform"} <= set(REGISTRY)


def test_a_loss_takes_only_its_own_keys():
    # A loss that needs no embeddings refuses them, and a misspelt hyperparameter is an error naming both.
    with pytest.raises(ConfigError, match="loss 'dpo': unknown key.*chosen_prompt_embeddings.*it takes beta"):
        call("dpo", chosen_prompt_embeddings=t(EW), rejected_prompt_embeddings=t(EL))
    with pytest.raises(ConfigError, match="loss 'rpo-paired': unknown key\\(s\\) taus"):
        call("rpo-paired", taus=0.5, chosen_prompt_embeddings=t(EW), rejected_prompt_embeddings=t(EL))
    with pytest.raises(ConfigError, match="loss 'ipo': unknown key\\(s\\) diagonal_weight"):
        call("ipo", diagonal_weight=0.8)
    with pytest.raises(ConfigError, match="loss 'sft': takes no reference"):
        get_loss("sft")(t(PC), t(PR), t(RC), t(RR), chosen_lengths=torch.tensor([1, 1, 1]))


def test_registry_defaults_and_needs():
    # An omitted hyperparameter takes the registry's default: the paper's beta 0.1, tau 0.5, alpha 0.8.
    assert call("dpo").loss.item() == pytest.approx(call("dpo", beta=0.1).loss.item(), rel=1e-15)
    assert call("rpo-diagonal").loss.item() == pytest.approx(call("rpo-diagonal", beta=0.1, diagonal_weight=0.8).loss.item())
    assert {name: dict(spec.hyperparameters) for name, spec in REGISTRY.items()} == {
        "sft": {"normalization": "token"}, "dpo": {"beta": 0.1}, "ipo": {"beta": 0.1}, "kto": {"beta": 0.1},
        "rpo-paired": {"beta": 0.1, "tau": 0.5}, "rpo-unpaired": {"beta": 0.1, "tau": 0.5},
        "rpo-diagonal": {"beta": 0.1, "diagonal_weight": 0.8}, "rpo-uniform": {"beta": 0.1},
        "cdpo": {"beta": 0.1, "epsilon": 0.2}, "slic": {"beta": 1.0, "lambda_coef": 0.1},
        **({"ppo": dict(REGISTRY["ppo"].hyperparameters)} if "ppo" in REGISTRY else {})}
    assert losses_needing("embeddings") == ("rpo-paired", "rpo-unpaired")
    assert losses_needing("kl") == ("kto",)
    assert [n for n, s in REGISTRY.items() if s.batching == "unpaired"] == ["rpo-unpaired"]
    assert [n for n, s in REGISTRY.items() if s.batching == "items"] == ["kto", "ppo"]  # UnpairedPreferenceDataLoader
    assert dict(REGISTRY["ppo"].hyperparameters) == {"gamma": 0.99, "lam": 0.95, "cliprange": 0.5,
                                                     "critic_coef": 0.01, "kl_coef": 0.1}


# -- ppo: GAE, discounted returns, whitening and the clipped surrogate, by hand ------------------------
from rpo.losses import discounted_returns, gae_advantages, masked_whiten, terminal_rewards  # noqa: E402

G, LAM = 0.99, 0.95
# Two episodes over a window of 5 token columns: row 0 a chosen response on columns 1-3 (column 0 is a
# prompt position), row 1 a rejected response on columns 0-1 then right padding.
MASK = [[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]]
VALUES = [[9.0, 0.2, -0.1, 0.4, 7.0], [-0.3, 0.5, 5.0, 5.0, 5.0]]  # off-mask values must not matter
SCORES = [1.0, -1.0]
PPO_PC = [[0.0, -1.0, -2.0, -0.5, 0.0], [-1.5, -0.2, 0.0, 0.0, 0.0]]
PPO_REF = [[0.0, -1.0 - math.log(3.0), -1.8, -0.5, 0.0], [-1.0, -0.2 - math.log(0.3), 0.0, 0.0, 0.0]]


def hand_episode(values, mask, score):
    """(rewards, advantages, returns) of one row in plain python: the reward on the last response
    token, delta_t = r_t + G*V_{t+1} - V_t with V = 0 off the mask, A_t = delta_t + G*LAM*A_{t+1},
    return_t = sum over tokens AFTER t of G^(k-t-1) r_k."""
    n = len(mask)
    v = [x * m for x, m in zip(values, mask)]
    last = max(i for i in range(n) if mask[i])
    r = [score if i == last else 0.0 for i in range(n)]
    adv, gae = [0.0] * n, 0.0
    for i in reversed(range(n)):
        gae = r[i] + G * (v[i + 1] if i + 1 < n else 0.0) - v[i] + G * LAM * gae
        adv[i] = gae * mask[i]
    ret = [sum(G ** (k - i - 1) * r[k] for k in range(i + 1, n)) * mask[i] for i in range(n)]
    return r, adv, ret


def hand_whiten(x, mask):
    kept = [a for row, mrow in zip(x, mask) for a, m in zip(row, mrow) if m]
    mean = sum(kept) / len(kept)
    var = sum((a - mean) ** 2 for a in kept) / len(kept)  # biased, as the public code
    return [[(a - mean) / math.sqrt(var + 1e-8) * m for a, m in zip(row, mrow)] for row, mrow in zip(x, mask)]


def test_gae_returns_and_terminal_rewards_by_hand():
    mask = t(MASK)
    rewards = terminal_rewards(t(SCORES), mask.bool())
    adv = gae_advantages(t(VALUES), rewards, mask, G, LAM)
    ret = discounted_returns(rewards, mask, G)
    for row in range(2):
        r, a, g = hand_episode(VALUES[row], MASK[row], SCORES[row])
        assert rewards[row].tolist() == r
        assert adv[row].tolist() == pytest.approx(a, rel=1e-12, abs=1e-12)
        assert ret[row].tolist() == pytest.approx(g, rel=1e-12, abs=1e-12)
    # spelled out for row 0: V = (0, .2, -.1, .4, 0), r_3 = 1
    d3, d2, d1 = 1 - 0.4, G * 0.4 + 0.1, G * -0.1 - 0.2
    assert adv[0, 1].item() == pytest.approx(d1 + G * LAM * (d2 + G * LAM * d3), rel=1e-12)
    assert ret[0].tolist() == pytest.approx([0.0, G, 1.0, 0.0, 0.0], abs=1e-15)  # 0 at the rewarded token


def test_masked_whiten_by_hand():
    x = [[5.0, 1.0, 2.0, 4.0, -9.0], [0.5, -1.0, 3.0, 3.0, 3.0]]
    got = masked_whiten(t(x), t(MASK))
    assert got.tolist() == [pytest.approx(row, rel=1e-12, abs=1e-12) for row in hand_whiten(x, MASK)]
    kept = got[t(MASK).bool()]
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-12) and (got[~t(MASK).bool()] == 0).all()


def hand_ppo(pc, ref, values, mask, scores, cliprange=0.5, critic_coef=0.01, kl_coef=0.1):
    episodes = [hand_episode(v, m, s) for v, m, s in zip(values, mask, scores)]
    adv = hand_whiten([a for _, a, _ in episodes], mask)
    n = sum(map(sum, mask))
    cells = [(i, j) for i in range(len(mask)) for j in range(len(mask[0])) if mask[i][j]]
    policy = clipped = critic = kl = 0.0
    for i, j in cells:
        ratio = math.exp(pc[i][j] - ref[i][j])
        plain, clip = -adv[i][j] * ratio, -adv[i][j] * min(max(ratio, cliprange), 1 / cliprange)
        policy += max(plain, clip) / n
        clipped += (clip > plain) / n
        critic += 0.5 * (values[i][j] - episodes[i][2][j]) ** 2 / n
        kl += (ref[i][j] - pc[i][j]) / n
    return policy + critic_coef * critic + kl_coef * kl, policy, critic, clipped, kl


def ppo_call(pc=PPO_PC, values=VALUES, **kw):
    as_t = lambda x: x if isinstance(x, torch.Tensor) else t(x)  # noqa: E731
    return get_loss("ppo")(as_t(pc), reference_token_logps=t(PPO_REF), response_mask=t(MASK).bool(),
                           values=as_t(values), episode_rewards=t(SCORES), **kw)


def test_ppo_loss_by_hand_with_clipping():
    out = ppo_call()
    loss, policy, critic, clipfrac, kl = hand_ppo(PPO_PC, PPO_REF, VALUES, MASK, SCORES)
    assert out.loss.item() == pytest.approx(loss, rel=1e-12)
    m = out.metrics
    assert m["loss/policy"].item() == pytest.approx(policy, rel=1e-12)
    assert m["loss/critic"].item() == pytest.approx(critic, rel=1e-12)
    assert m["loss/policykl"].item() == pytest.approx(kl, rel=1e-12)
    # ratio 1/3 at (0, 1) and 1/0.3 at (1, 1): the clamp to [0.5, 2] binds where the sign of A says so
    assert m["clipfrac/policy"].item() == pytest.approx(clipfrac) and 0 < clipfrac < 1
    assert out.chosen_rewards.numel() == out.rejected_rewards.numel() == 0
    other = ppo_call(cliprange=0.2, critic_coef=1.0, kl_coef=0.0, gamma=0.5, lam=1.0)
    assert other.loss.item() != pytest.approx(out.loss.item())


def test_ppo_clipped_surrogate_elementwise():
    """One token per episode: the term is max(-A*r, -A*clamp(r, 0.5, 2)) for each sign of A and r."""
    for ratio in (0.3, 0.8, 1.5, 3.0):
        for score in (1.0, -1.0):
            # two episodes so the whitened advantages are +-1: the episode with score s has A = sign
            pc = [[0.0, math.log(ratio)], [0.0, math.log(ratio)]]
            out = get_loss("ppo")(t(pc), reference_token_logps=t([[0.0, 0.0], [0.0, 0.0]]),
                                  response_mask=t([[0, 1], [0, 1]]).bool(), values=t([[0.0, 0.0], [0.0, 0.0]]),
                                  episode_rewards=t([score, -score]), kl_coef=0.0, critic_coef=0.0)
            terms = [max(-a * ratio, -a * min(max(ratio, 0.5), 2.0)) for a in (1.0, -1.0)]  # A ~ +-1 (eps 1e-8)
            assert out.loss.item() == pytest.approx(sum(terms) / 2, rel=1e-6)


def test_ppo_gradcheck_float64():
    """The policy path gradchecks; values get only the critic's gradient (advantages use detached values):
    d loss / d V_t = critic_coef * (V_t - G_t) / n on the mask."""
    def fn(pc):
        return get_loss("ppo")(pc, reference_token_logps=t(PPO_REF), response_mask=t(MASK).bool(), values=t(VALUES),
                               episode_rewards=t(SCORES)).loss

    assert torch.autograd.gradcheck(fn, (t(PPO_PC).requires_grad_(True),))
    values = t(VALUES).requires_grad_(True)
    pc = t(PPO_PC).requires_grad_(True)
    ppo_call(pc=pc, values=values).loss.backward()
    n = sum(map(sum, MASK))
    for row in range(2):
        returns = hand_episode(VALUES[row], MASK[row], SCORES[row])[2]
        expected = [0.01 * (v - g) / n * m for v, g, m in zip(VALUES[row], returns, MASK[row])]
        assert values.grad[row].tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert (pc.grad[~t(MASK).bool()] == 0).all()


def test_ppo_takes_only_its_inputs():
    with pytest.raises(ConfigError, match="loss 'ppo': unknown key\\(s\\) beta"):
        ppo_call(beta=0.1)
    with pytest.raises(ConfigError, match="loss 'ppo': takes no reference log-probs"):
        get_loss("ppo")(t(PPO_PC), None, t([1.0]), t([1.0]))
    with pytest.raises(ValueError, match="per-token shapes differ"):
        ppo_call(values=[[0.0] * 4, [0.0] * 4])
    with pytest.raises(ValueError, match="cliprange"):
        ppo_call(cliprange=2.0)
