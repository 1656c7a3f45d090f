"""What the trainer records for the regime questions (rpo.diagnostics): loss logits, the mean diagonal
weight, the matched-beta control's beta; and that seeds give independent batch orders."""
import json

import pytest
import torch

from rpo.diagnostics import HIST_EDGES, final_steps, logit_metrics, mean_diagonal_weight
from rpo.embed import load_embeddings, text_settings
from rpo.errors import ConfigError
from rpo.losses import get_loss, rpo_weights
from rpo.train import Trainer, micro_batch_plan
from test_train import config, world  # noqa: F401  (the tiny model, data, cache and embeddings)


def test_losses_report_the_argument_of_their_link_function():
    pc, pr = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-2.0, -2.5, -1.0])
    rc, rr = torch.tensor([-1.5, -2.0, -2.0]), torch.tensor([-1.5, -2.0, -2.0])
    s = (pc - rc)[:, None] - (pr - rr)[None, :]
    assert torch.equal(get_loss("dpo")(pc, pr, rc, rr, beta=0.1).logits, 0.1 * s.diagonal())
    emb = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    out = get_loss("rpo-paired")(pc, pr, rc, rr, beta=0.1, tau=0.5, chosen_prompt_embeddings=emb,
                                 rejected_prompt_embeddings=emb)
    assert torch.allclose(out.logits, 0.1 * rpo_weights(emb, emb, 0.5).float() * s)
    # the loss is -log sigmoid of exactly these logits
    assert torch.allclose(out.loss, -torch.nn.functional.logsigmoid(out.logits).mean())
    assert get_loss("rpo-uniform")(pc, pr, rc, rr, beta=0.1).logits.shape == (3, 3)


def test_logit_counts_and_histogram():
    row = logit_metrics(torch.tensor([-5.0, -1.5, 0.1, 0.9, 1.2, 9.0]), with_histogram=True)
    assert row["logits/n"] == 6 and row["logits/n_saturated"] == 4
    hist = [row[f"logits/hist{i}"] for i in range(len(HIST_EDGES) - 1)]
    assert sum(hist) == 6 and hist[0] == 1 and hist[-1] == 1  # outside the edges: the end bins
    assert hist[HIST_EDGES.index(0.0)] == 1 and hist[HIST_EDGES.index(0.75)] == 1
    assert "logits/hist0" not in logit_metrics(torch.tensor([0.5]), with_histogram=False)
    assert final_steps(30) == 28 and final_steps(5) == 5 and final_steps(1) == 1


def test_the_run_logs_its_logits_and_its_mean_diagonal_weight(world, tmp_path):  # noqa: F811
    cfg = config(world, tmp_path, "rpo-paired", tau=0.5, max_steps=5)
    trainer = Trainer(cfg)
    out = trainer.fit()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["logits/n"] == 16 for r in rows)  # one 4 x 4 contrast matrix per step
    assert [("logits/hist0" in r) for r in rows] == [False] * 4 + [True]  # the last 10% of 5 steps: step 5
    assert sum(rows[-1][f"logits/hist{i}"] for i in range(len(HIST_EDGES) - 1)) == 16
    run = json.loads((out / "run.json").read_text())
    embeddings = load_embeddings(world["emb"], world["data"], "tfidf-svd", text_settings(
        cfg["model"], cfg["max_length"], cfg["max_prompt_length"], trainer.truncation))
    plan = micro_batch_plan(cfg, trainer.records)[:5]
    by_hand = sum(float(rpo_weights(embeddings[c], embeddings[c], 0.5).diagonal().sum()) for c, _ in plan) / 20
    assert run["contrast_weights"]["mean_diagonal"] == pytest.approx(by_hand, rel=1e-12)
    assert run["contrast_weights"] == {"mean_diagonal": mean_diagonal_weight([c for c, _ in plan], embeddings, 0.5),
                                       "n_matrices": 5, "tau": 0.5}
    assert 1 / 4 < by_hand < 1  # a row of w sums to 1; the own prompt weighs most

    # the matched-beta control: DPO at beta x mean w_ii, the same seed's batch plan, its origin recorded
    control = Trainer(config(world, tmp_path, "dpo", beta_matched_to=str(out), out=str(tmp_path / "control"),
                             max_steps=5))
    assert control.cfg["beta"] == pytest.approx(0.1 * by_hand, rel=1e-12)
    assert control.plan[:5] == trainer.plan[:5]
    saved = json.loads((control.fit() / "run.json").read_text())
    assert saved["matched_beta"]["source"] == str(out) and saved["matched_beta"]["source_method"] == "rpo-paired"
    assert saved["contrast_weights"] is None  # DPO has no weights of its own


def test_matched_beta_refuses_what_it_cannot_read(world, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match=r"beta_matched_to': .*nowhere/run.json does not exist"):
        config(world, tmp_path, "dpo", beta_matched_to=str(tmp_path / "nowhere"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "run.json").write_text(json.dumps({"method": "dpo", "beta": 0.1, "contrast_weights": None}))
    with pytest.raises(ConfigError, match="records no beta and contrast_weights.mean_diagonal"):
        config(world, tmp_path, "dpo", beta_matched_to=str(tmp_path / "src"))
    with pytest.raises(ConfigError, match="given no beta of its own"):
        config(world, tmp_path, "dpo", beta_matched_to=str(tmp_path / "src"), beta=0.2)
    with pytest.raises(ConfigError, match="needs a loss with a beta"):
        config(world, tmp_path, "sft", beta_matched_to=str(tmp_path / "src"))


def test_seeds_draw_independent_orders_epoch_after_epoch(world):  # noqa: F811
    from rpo.data.records import read_records

    records = read_records(world["data"])
    for method in ("dpo", "rpo-unpaired"):
        two_epochs = micro_batch_plan({"method": method, "batch_size": 4, "epochs": 2, "seed": 1}, records)
        seed2 = micro_batch_plan({"method": method, "batch_size": 4, "epochs": 1, "seed": 2}, records)
        half = len(two_epochs) // 2
        assert two_epochs[half:] != seed2  # seed 1's second epoch is not seed 2's first
        assert two_epochs[:half] == micro_batch_plan({"method": method, "batch_size": 4, "epochs": 1, "seed": 1},
                                                     records)
    first = micro_batch_plan({"method": "dpo", "batch_size": 4, "epochs": 1, "seed": 5}, records)
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(5)).tolist()
    assert [c for c, _ in first] == [order[s:s + 4] for s in range(0, len(order) - 3, 4)]
