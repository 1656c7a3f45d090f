"""rpo.report on a generated fake results tree: every table's numbers equal the inputs, paper values sit
where published and "n/a" elsewhere, missing inputs are named, and every figure is a real PNG."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from rpo.errors import DataError
from rpo.losses import rpo_weights
from rpo.pipeline import Run
from rpo.report import (collect_alpacaeval, collect_runs, load_metrics, read_weight_example, table1, table2,
                        table3, table4, weighting, write_table)
from rpo.report.__main__ import main
from rpo.report.figures import shorten_prompt
from rpo.report.tables import to_markdown

from report_tree import (DEFAULT_FLAGS, DEFAULTS, MINILM, MODEL, ROOT, RUNS, add_run,  # noqa: F401 (runs, tree: fixtures)
                         assert_png, row_of, runs, tree)


def test_collect_joins_every_judgment_with_its_config(runs):
    assert len(runs) == 2 * len(RUNS)
    row = row_of(runs, task="dialogue", run="rpo-paired_tau0.5_minilm_bs8_seed1")
    assert (row["method"], row["tau"], row["embedder"], row["batch_size"], row["model"]) == ("rpo-paired", 0.5, MINILM, 8, MODEL)
    assert row["win_rate"] == 0.785 and row["n"] == 256
    assert row_of(runs, task="summarization", run="dpo_bs8_seed1")["win_rate"] == pytest.approx(0.5)


def test_missing_files_and_expected_runs_are_named(tree, tmp_path):
    copy = shutil.copytree(tree, tmp_path / "r")
    with pytest.raises(DataError) as err:
        collect_runs(copy, expected_runs=["ghost_run", "dialogue/other_missing", "dpo_bs8_seed1"])
    message = str(err.value)
    assert "dialogue/ghost_run" in message and "summarization/ghost_run" in message
    assert "dialogue/other_missing" in message and "summarization/other_missing" not in message
    shutil.rmtree(copy / "dialogue" / "models" / "ipo_bs8_seed1")
    (copy / "summarization" / "judgments" / "kto_bs8_seed1.winrate.json").unlink()
    with pytest.raises(DataError) as err:
        collect_runs(copy)
    message = str(err.value)
    assert str(copy / "dialogue" / "models" / "ipo_bs8_seed1" / "run.json") in message
    assert "summarization/kto_bs8_seed1" in message and "kto_bs8_seed1.winrate.json" in message
    with pytest.raises(DataError, match="instructions/alpacaeval/gone.json"):
        collect_alpacaeval(copy, expected_runs=["instructions/gone", "bare_name_is_not_alpacaeval"])
    # with expected runs, exactly those are read: a trained but unjudged run elsewhere does not matter
    assert list(collect_runs(copy, expected_runs=["dialogue/dpo_bs8_seed1"])["run"]) == ["dpo_bs8_seed1"]
    assert list(collect_alpacaeval(copy, ["instructions/sft_seed1"])["run"]) == ["sft_seed1"]
    stale = copy / "instructions" / "alpacaeval" / "kto_bs8_seed1.json"
    stale.write_text(json.dumps({k: v for k, v in json.loads(stale.read_text()).items() if k != "ci_low"}))
    with pytest.raises(DataError, match=r"kto_bs8_seed1\.json: no interval .*rerun `python -m rpo.alpacaeval"):
        collect_alpacaeval(copy)


def test_bad_inputs_name_file_and_key(tree, tmp_path):
    copy = shutil.copytree(tree, tmp_path / "r")
    path = copy / "dialogue" / "judgments" / "dpo_bs8_seed1.winrate.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "win_rate": 70.0}))  # percent, not a fraction
    with pytest.raises(DataError, match=r"dpo_bs8_seed1\.winrate\.json: key 'win_rate' must be a fraction"):
        collect_runs(copy)
    config = copy / "summarization" / "models" / "sft_seed1" / "run.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "method": "orpo"}))
    with pytest.raises(DataError, match=r"sft_seed1/run\.json: key 'method' is 'orpo'"):
        collect_runs(copy, tasks=["summarization"])
    dpo_config = copy / "dialogue" / "models" / "dpo_bs4_seed1" / "run.json"
    original = dpo_config.read_text()
    dpo_config.write_text(json.dumps({**json.loads(original), "run": Run("dpo", 1, 8).record()}))
    with pytest.raises(DataError, match=r"dpo_bs4_seed1/run\.json: records run 'dpo_bs8_seed1' but lies in folder 'dpo_bs4_seed1'"):
        collect_runs(copy, tasks=["dialogue"])
    legacy = {k: v for k, v in json.loads(original).items() if k != "run"}  # trained before rpo.train recorded it
    dpo_config.write_text(json.dumps(legacy))
    with pytest.raises(DataError, match=r"^\S*dpo_bs4_seed1/run\.json: records no run identity \(key 'run'.*: retrain it$"):
        collect_runs(copy, tasks=["dialogue"])
    dpo_config.write_text(json.dumps({**legacy, "run": {**Run("dpo", 1, 4).record(), "batch_size": 8}}))
    with pytest.raises(DataError, match=r"run\.json: key 'run': run record names 'dpo_bs4_seed1' but its settings make "
                                        r"'dpo_bs8_seed1'; retrain it$"):
        collect_runs(copy, tasks=["dialogue"])
    dpo_config.write_text(json.dumps({**legacy, "run": {"name": "dpo_bs4_seed1", "method": "dpo"}}))
    with pytest.raises(DataError, match=r"key 'run': not a run record \(name, method, seed and any of"):
        collect_runs(copy, tasks=["dialogue"])
    dpo_config.write_text(json.dumps({**json.loads(original), "model": "results/dialogue/models/sft_seed7"}))
    with pytest.raises(DataError, match=r"key 'model' points to run 'sft_seed7', whose run config .* is missing"):
        collect_runs(copy, tasks=["dialogue"])
    metrics = copy / "dialogue" / "models" / "ipo_bs8_seed1" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + json.dumps({"step": 99, "loss": "nan?"}) + "\n")
    with pytest.raises(DataError, match=r"metrics\.jsonl, row 31: key 'loss'"):
        load_metrics(copy, "dialogue", "ipo_bs8_seed1")


def test_table1_cells_equal_inputs_beside_paper_values(runs):
    frame = table1(runs, DEFAULTS).frame
    assert list(frame["method"]) == ["SFT", "DPO", "IPO", "KTO", "RPO-Unpaired", "RPO-Paired"]
    paired = row_of(frame, method="RPO-Paired")
    assert paired["dialogue"] == "78.5 [72.1, 84.0]"  # tau 0.5, MiniLM, batch 8: not the sweep's other runs
    assert paired["dialogue: paper (Anthropic HH)"] == "78.52"
    assert paired["summarization"].startswith("58.5 [")
    assert paired["summarization: paper (TL;DR)"] == "50.00 (reported)"
    unpaired = row_of(frame, method="RPO-Unpaired")
    assert unpaired["dialogue: paper (Anthropic HH)"] == "75.00 (reported)"
    assert unpaired["summarization: paper (TL;DR)"] == "50.39 (reported)"
    dpo = row_of(frame, method="DPO")
    assert dpo["dialogue"].startswith("70.0 [") and dpo["dialogue: paper (Anthropic HH)"] == "72.26"
    assert dpo["summarization: paper (TL;DR)"] == "n/a"
    for method in ("SFT", "IPO", "KTO"):
        assert row_of(frame, method=method)["dialogue: paper (Anthropic HH)"] == "n/a"


def test_table1_paired_differences_from_dpo_and_sft(runs):
    """The synthetic verdicts put each run's wins on its first prompts, so run A beats run B on exactly
    wins_A - wins_B prompts and loses on none: the difference is exact and McNemar's p is 2 * 2^-k."""
    frame = table1(runs, DEFAULTS).frame
    w_rpo, w_dpo, w_sft = (round(rate * 256) for rate in (0.785, 0.70, 0.40))
    paired = row_of(frame, method="RPO-Paired")
    k = w_rpo - w_dpo
    assert paired["dialogue: vs DPO"].startswith(f"+{100 * k / 256:.1f} [")
    assert f"p={2 * 0.5 ** k:.2g} (McNemar)" in paired["dialogue: vs DPO"]  # one seed: the exact test, named
    assert paired["dialogue: vs DPO"].endswith("(paper +6.3)")  # 78.52 - 72.26, both published
    assert row_of(frame, method="SFT")["dialogue: vs DPO"].startswith(f"{100 * (w_sft - w_dpo) / 256:.1f} [")
    assert row_of(frame, method="DPO")["dialogue: vs DPO"] == "" == row_of(frame, method="SFT")["dialogue: vs SFT"]
    assert "(paper" not in row_of(frame, method="IPO")["dialogue: vs DPO"]  # no published IPO number
    data = table1(runs, DEFAULTS).data
    cell = data[(data["task"] == "dialogue") & (data["method"] == "rpo-paired")].iloc[0]
    assert cell["vs DPO: diff"] == pytest.approx(k / 256) and cell["vs DPO: p"] == pytest.approx(2 * 0.5 ** k)
    assert cell["vs DPO: test"] == "McNemar"
    assert cell["vs DPO: diff_low"] <= cell["vs DPO: diff"] <= cell["vs DPO: diff_high"]


def test_table2_alpacaeval(tree):
    table = table2(collect_alpacaeval(tree))
    frame = table.frame
    assert row_of(frame, method="DPO")["paper"] == "30.84"
    paired = row_of(frame, method="RPO-Paired")
    assert (paired["win rate"], paired["paper"], paired["LC win rate"], paired["SE"]) == ("33.1 [30.1, 36.1]", "38.88", "30.0", "1.5")
    assert (paired["annotator"], paired["n"]) == ("alpaca_eval_gpt4_turbo_fn", 805)
    # the reference as its rows name it; a result from before it was recorded says so
    assert (paired["reference"], row_of(frame, method="KTO")["reference"]) == ("gpt4_turbo", "not recorded")
    assert table.notes[0].startswith("AlpacaEval win rate vs the reference outputs of gpt4_turbo, not recorded (")
    # an old result without the reason says so, never a bare n/a
    assert row_of(frame, method="SFT")[["paper", "LC win rate"]].tolist() == ["n/a", "n/a (not recorded)"]
    kto = row_of(frame, method="KTO")
    assert kto[["win rate", "paper", "annotator", "n"]].tolist() == [
        "20.0 [17.5, 22.6]", "n/a", "weighted_alpaca_eval_gpt4_turbo", 800]
    assert kto["LC win rate"] == "n/a (offline, no df_gamed.csv)"
    assert ("LC n/a (offline, no df_gamed.csv): alpaca_eval needs tatsu-lab/alpaca_eval df_gamed.csv from the hub; "
            "not in the HF cache and HF_HUB_OFFLINE=1 (runs: kto_bs8_seed1)") in table.notes
    assert any("generated for 800 of the 805 instructions" in note and "partial batch of 32" in note
               for note in table.notes)
    assert set(table.data["annotator"]) == {"alpaca_eval_gpt4_turbo_fn", "weighted_alpaca_eval_gpt4_turbo"}


def test_collect_alpacaeval_needs_the_annotator(tree, tmp_path):
    import shutil

    copy = tmp_path / "results"
    shutil.copytree(tree, copy)
    path = copy / "instructions" / "alpacaeval" / "sft_seed1.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "annotator"}))
    with pytest.raises(DataError, match=r"sft_seed1\.json: missing key 'annotator'"):
        collect_alpacaeval(copy)


def test_table3_tau_by_embedder(runs):
    frame = table3(runs, DEFAULTS).frame
    minilm = row_of(frame, task="dialogue", embedder="minilm")  # embedders by their one short name
    assert [minilm[f"tau={t}"][:4] for t in ("0.25", "0.5", "0.75")] == ["76.0", "78.5", "77.0"]
    assert minilm["paper"] == "78.52 at tau=0.5"
    tfidf = row_of(frame, task="summarization", embedder="tfidf")
    assert [tfidf[f"tau={t}"][:4] for t in ("0.25", "0.5", "0.75")] == ["51.0", "53.0", "52.0"]
    assert tfidf["paper"] == "n/a"
    random_row = row_of(frame, task="dialogue", embedder="random")
    assert random_row["tau=0.25"] == "not run" and random_row["tau=0.5"].startswith("67.0")
    # each tau's paired difference from DPO at the defaults (70.0%): wins on the first prompts, so exact
    w_dpo = round(0.70 * 256)
    for tau, rate in (("0.25", 0.76), ("0.5", 0.785), ("0.75", 0.77)):
        k = round(rate * 256) - w_dpo
        assert minilm[f"tau={tau}: vs DPO"].startswith(f"+{100 * k / 256:.1f} [") and f"p={2 * 0.5 ** k:.2g}" in \
            minilm[f"tau={tau}: vs DPO"]
    assert random_row["tau=0.25: vs DPO"] == "not run"


def test_table4_batch_sizes(runs):
    frame = table4(runs, DEFAULTS).frame
    assert [c for c in frame.columns if c.startswith("bs=")] == ["bs=2", "bs=4", "bs=8"]
    paired = row_of(frame, task="dialogue", method="RPO-Paired")
    assert [paired[c][:4] for c in ("bs=2", "bs=4", "bs=8")] == ["62.0", "71.0", "78.5"]
    dpo = row_of(frame, task="summarization", method="DPO")
    assert [dpo[c][:4] for c in ("bs=2", "bs=4", "bs=8")] == ["41.0", "44.0", "50.0"]


def test_weighting_ablation(runs):
    frame = weighting(runs, DEFAULTS).frame
    paper = dict(zip(frame["method"], frame["dialogue: paper (Anthropic HH)"]))
    assert paper == {"DPO": "72.26", "Uniform weights (w=1)": "68.36", "Diagonal-heavy (alpha=0.8)": "69.92 (reported)",
                     "Embedding-weighted (RPO-Paired)": "78.52", "Random-embedding control": "n/a",
                     "RPO-Unpaired": "75.00 (reported)"}
    ours = dict(zip(frame["method"], frame["dialogue"].str[:4]))
    assert ours == {"DPO": "70.0", "Uniform weights (w=1)": "66.0", "Diagonal-heavy (alpha=0.8)": "69.0",
                    "Embedding-weighted (RPO-Paired)": "78.5", "Random-embedding control": "67.0", "RPO-Unpaired": "74.0"}


def test_written_table_files(runs, tmp_path):
    table = table1(runs, DEFAULTS)
    paths = write_table(table, tmp_path / "t" / "table1")
    assert sorted(p.name for p in paths) == ["table1.csv", "table1.data.csv", "table1.md", "table1.tex"]
    assert pd.read_csv(paths[0], dtype=str, keep_default_na=False).equals(table.frame.astype(str))
    assert "| RPO-Paired" in paths[1].read_text() and "78.5 [72.1, 84.0]" in paths[1].read_text()
    assert "TL;DR column" in paths[1].read_text()  # the task-to-paper footnote
    tex = paths[2].read_text()
    assert "\\begin{tabular}" in tex and "78.5 [72.1, 84.0]" in tex and "95\\% interval" in tex and "\\label{tab:table1}" in tex
    assert row_of(pd.read_csv(paths[3]), task="dialogue", method="rpo-paired")["paper"] == pytest.approx(0.7852)
    assert to_markdown(pd.DataFrame({"a|b": ["x"]})).splitlines()[0] == "| a\\|b |"


def test_weight_example_matches_rpo_weights(tree):
    example = read_weight_example(tree / "weights.json")
    weights = np.asarray(example["weights"])
    assert weights.shape == (6, 6) and np.allclose(weights.sum(axis=1), 1.0)
    assert example["tau"] == 0.5 and example["embedder"] == MINILM
    embeddings = torch.as_tensor(np.random.default_rng(0).standard_normal((6, 16)))
    assert np.allclose(weights, rpo_weights(embeddings, embeddings, 0.5).numpy())
    assert shorten_prompt(example["chosen_prompts"][0], 20) == "Question number 0 a…"
    bad = tree.parent / "bad_weights.json"
    bad.write_text(json.dumps({**example, "weights": weights[:, :5].tolist()}))
    with pytest.raises(DataError, match=r"bad_weights\.json: key 'weights' has shape \(6, 5\), expected \(6, 6\)"):
        read_weight_example(bad)


def test_cli_writes_every_table_and_figure(tree, tmp_path, capsys):
    assert main(["tables", "--results", str(tree), "--out", str(tmp_path / "tables"), *DEFAULT_FLAGS]) == 0
    for name in ("table1", "table2", "table3", "table4", "weighting"):
        for suffix in (".csv", ".md", ".tex", ".data.csv"):
            assert (tmp_path / "tables" / f"{name}{suffix}").is_file()
    assert "rpo-paired\\_tau0.5\\_minilm\\_bs8\\_seed1" in (tmp_path / "tables" / "table2.tex").read_text()
    out = tmp_path / "figures"
    args = ["--results", str(tree), "--tasks", "dialogue"]
    config = ROOT / "config.yaml"  # the defaults from a pipeline profile instead of flags
    assert main(["figures", *args, "--config", str(config), "--out", str(out), "--weights", str(tree / "weights.json"),
                 "--targets", "table1", "table2", "tau", "table4", "weighting"]) == 0
    for name in ("table1", "table2", "tau", "table4", "weighting", "weights_heatmap"):
        assert_png(out / f"{name}.png")
    assert main(["curve", *args, "--run", "rpo-paired_tau0.5_minilm_bs8_seed1", "--task", "dialogue",
                 "--out", str(out / "curve_rpo")]) == 0
    assert main(["curve", *args, "--run", "sft_seed1", "--task", "dialogue", "--out", str(out / "curve_sft")]) == 0
    assert_png(out / "curve_rpo.png") and assert_png(out / "curve_sft.png")
    capsys.readouterr()
    assert main(["table", "table1", "--results", str(tree), "--out", str(tmp_path / "x"), "--expected-runs",
                 "dialogue/nope"]) == 1
    assert "expected run dialogue/nope is missing" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_a_controls_source_is_the_name_its_run_json_records(tmp_path):
    """beta_of is the matched-beta source as the control's run.json records it (key `run`), whatever folder
    beta_matched_to names: the report parses no folder name."""
    root = tmp_path / "results"
    add_run(root, "dialogue", "sft", None, None, 8, 0.4)  # where both start
    source = add_run(root, "dialogue", "rpo-paired", 0.5, MINILM, 8, 0.7)
    control = add_run(root, "dialogue", "dpo", None, None, 8, 0.66, beta=0.08, beta_of=source)
    path = root / "dialogue" / "models" / control / "run.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "beta_matched_to": "/elsewhere/renamed-copy"}))
    runs = collect_runs(root, tasks=["dialogue"]).set_index("run")
    assert runs.loc[control, "beta_of"] == source and runs.loc[source, "beta_of"] is None
    assert runs.loc[control, "identity"].beta_of == source


def test_cli_curves_for_every_trained_run(tmp_path):
    root = tmp_path / "results"
    runs = [add_run(root, "dialogue", "sft", None, None, 8, 0.4), add_run(root, "dialogue", "kto", None, None, 8, 0.6)]
    assert main(["curves", "--results", str(root), "--tasks", "dialogue", "--out", str(tmp_path / "curves")]) == 0
    for run in runs:
        assert_png(tmp_path / "curves" / "dialogue" / f"{run}.png")
    (root / "dialogue" / "models" / runs[1] / "metrics.jsonl").unlink()
    with pytest.raises(DataError, match=r"missing training log .*kto_bs8_seed1/metrics\.jsonl"):
        load_metrics(root, "dialogue", runs[1])


def test_notes_name_the_judging_protocol(tree, tmp_path):
    """Summaries without the key predate it (rationale); a table mixing protocols says so."""
    assert set(collect_runs(tree)["protocol"]) == {"rationale"}
    copy = shutil.copytree(tree, tmp_path / "r")
    for path in (copy / "dialogue" / "judgments").glob("*.winrate.json"):
        path.write_text(json.dumps({**json.loads(path.read_text()), "protocol": "rpo-paper",
                                    "template_sha256": "ab" * 32}))
    dialogue_only = table1(collect_runs(copy, tasks=["dialogue"]), DEFAULTS).notes
    assert [n for n in dialogue_only if n.startswith("Judging protocol")] == [
        "Judging protocol: rpo-paper; rpo-paper is the public code's compare.py (rpo/judge/protocols.py). "
        "Template sha256: rpo-paper/dialogue abababababab."]
    mixed = table1(collect_runs(copy), DEFAULTS).notes
    assert any(n.startswith("Judging protocols: rationale, rpo-paper (MIXED") for n in mixed)
