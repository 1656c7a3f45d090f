"""Broken artefacts between stages, failed writes and file modes: each stops with one line naming the file
(and line or key) and what to do, and leaves nothing under an output's final name (the judge's endpoint:
tests/test_bad_judge.py)."""
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rpo import checkpoint
from rpo.alpacaeval import _read_results, main as alpaca_main
from rpo.data.records import PreferenceRecord, write_records
from rpo.embed import embed_prompts, load_embeddings, text_settings
from rpo.errors import CacheMismatchError, DataError, WriteError, run_cli
from rpo.generate import main as generate_main
from rpo.io import atomic_path, write_json, write_jsonl
from rpo.judge.__main__ import main as judge_main
from rpo.models import build_model, load_model, model_fingerprint, save_model
from rpo.pipeline import Run
from rpo.precision import Precision
from rpo.refcache import compute_reference_cache, load_reference_cache
from rpo.report.collect import collect_runs
from rpo.train import Trainer, main as train_main, resolve_config

SPEC = {"kind": "small", "arch": "gpt2", "n_layers": 1, "d_model": 16, "n_heads": 2, "vocab_size": 280,
        "max_position": 64}
LENGTHS = {"max_length": 48, "max_prompt_length": 24}


def records(n=8, word="tea"):
    return [PreferenceRecord(f"r{i}", f"\n<|user|>\nhow do i start with {word} {i}?\n<|assistant|>\n",
                             f"start small with {word}.", f"no. {word} is bad.",
                             {"task": "dialogue", "truncation": "keep_end"}) for i in range(n)]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("artefacts")
    data = root / "train.jsonl"
    write_records(data, records())
    model = build_model(SPEC, root / "model", corpus=[r.prompt + r.chosen + r.rejected for r in records()])
    cache = compute_reference_cache(model, data, root / "ref.pt", batch_size=8, **LENGTHS)
    emb = embed_prompts(data, "tfidf-svd", root / "emb.pt", model_path=model, **LENGTHS)
    return {"root": root, "data": data, "model": model, "cache": cache, "emb": emb}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0][len("error: "):]


def truncated_copy(src: Path, dst: Path, keep) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[:keep(len(data))])
    return dst


# ---- artefacts between stages ------------------------------------------------------------------

def test_a_model_folder_with_missing_or_truncated_weights_is_refused(made, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(made["model"], folder)
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    truncated_copy(made["model"] / "model.safetensors", weights, lambda n: n - 100)
    for load in (load_model, model_fingerprint):  # the trainer, generation, the reference cache
        with pytest.raises(DataError) as info:
            load(folder)
        assert str(info.value) == (f"{weights}: truncated weights ({size - 100} of {size} bytes); delete {folder} "
                                   "and rerun the step that wrote it")
    truncated_copy(made["model"] / "model.safetensors", weights, lambda n: 50)  # cut inside its header
    with pytest.raises(DataError, match=rf"^{weights}: not a complete safetensors file \(its header is unreadable"):
        load_model(folder)
    weights.unlink()
    out = tmp_path / "samples.jsonl"
    assert run_cli(generate_main, ["--model", str(folder), "--records", str(made["data"]), "--out", str(out),
                                   "--n-prompts", "2"]) == 1
    assert one_error_line(capsys) == (f"{folder}: no safetensors weight file in the model folder; delete {folder} "
                                      "and rerun the step that wrote it")
    assert not out.exists()


def test_a_truncated_foreign_or_stale_reference_cache_is_refused(made, tmp_path):
    def load(path, data=made["data"], model=made["model"]):
        return load_reference_cache(path, data, model, truncation="keep_end", precision=Precision(torch.float32),
                                    **LENGTHS)

    recompute = "delete it and recompute it with `python -m rpo.refcache` (Snakemake: its refcache rule)"
    cut = truncated_copy(made["cache"], tmp_path / "cut.pt", lambda n: n // 2)
    with pytest.raises(CacheMismatchError) as info:
        load(cut)
    assert str(info.value).startswith(f"{cut}: cannot read the reference log-prob cache (") and \
        str(info.value).endswith(recompute)
    torch.save({"embeddings": torch.zeros(2)}, tmp_path / "other.pt")  # another artefact under the name
    with pytest.raises(CacheMismatchError, match=rf"^{tmp_path / 'other.pt'}: not a reference log-prob cache"):
        load(tmp_path / "other.pt")
    other_data = tmp_path / "other.jsonl"
    write_records(other_data, records(word="chess"))
    with pytest.raises(CacheMismatchError, match=rf"^{made['cache']} was computed for other data or another "
                                                 r"reference model \(data_sha256: .*recompute it"):
        load(made["cache"], data=other_data)
    another_run = tmp_path / "model"  # another run's model: another config, so another fingerprint
    shutil.copytree(made["model"], another_run)
    config = json.loads((another_run / "config.json").read_text())
    (another_run / "config.json").write_text(json.dumps({**config, "initializer_range": 0.5}))
    with pytest.raises(CacheMismatchError, match="model_fingerprint: cache has"):
        load(made["cache"], model=another_run)


def test_a_truncated_or_foreign_embeddings_file_is_refused(made, tmp_path):
    expected = text_settings(made["model"], truncation=None, **LENGTHS)
    cut = truncated_copy(made["emb"], tmp_path / "emb.pt", lambda n: n - 20)
    with pytest.raises(DataError) as info:
        load_embeddings(cut, made["data"], "tfidf-svd", expected)
    assert str(info.value).startswith(f"{cut}: not a readable embeddings file (") and str(info.value).endswith(
        "delete it and recompute it with `python -m rpo.embed` (Snakemake: its embeddings rule)")
    other_data = tmp_path / "other.jsonl"
    write_records(other_data, records(word="chess"))
    with pytest.raises(CacheMismatchError, match=rf"^{made['emb']}: embeddings were computed for data with sha256"):
        load_embeddings(made["emb"], other_data, "tfidf-svd", expected)
    with pytest.raises(CacheMismatchError, match="computed with embedder 'tfidf-svd', but 'random' was asked"):
        load_embeddings(made["emb"], made["data"], "random", expected)


def sft_config(made, tmp_path, **kw):
    return resolve_config({"model": str(made["model"]), "data": str(made["data"]), "out": str(tmp_path / "sft"),
                           "method": "sft", "batch_size": 4, "lr": 1e-3, "optimizer": "adamw", "seed": 1,
                           "threads": 1, **LENGTHS, **kw})


def test_a_corrupt_checkpoint_stops_the_run_and_is_kept(made, tmp_path):
    cfg = sft_config(made, tmp_path)
    root = Path(cfg["checkpoint_dir"])
    root.mkdir()
    state = root / checkpoint.STATE
    bad_states = {  # what lies in state.pt -> how the message starts
        b"PK\x03\x04 half a zip archive": f"{state}: corrupt checkpoint, cannot be read (",
        b"": f"{state}: corrupt checkpoint, cannot be read (",
    }
    for content, start in bad_states.items():
        state.write_bytes(content)
        with pytest.raises(DataError) as info:
            Trainer(cfg).fit()
        assert str(info.value).startswith(start) and str(info.value).endswith(f"delete {root} to start this run over")
        assert state.read_bytes() == content and not Path(cfg["out"]).exists()  # never started over
    torch.save({"step": 3}, state)
    with pytest.raises(DataError, match=rf"^{state}: not a complete checkpoint \(no config_sha256, scheduler, rng, "
                                        rf"model, optimizer\); delete {root} to start"):
        Trainer(cfg).fit()
    torch.save({"config_sha256": checkpoint.fingerprint(cfg), "step": 3, "scheduler": {}, "model": {"x": torch.ones(1)},
                "optimizer": {}, "rng": [checkpoint.rng_state()]}, state)  # this config, but not this model's state
    with pytest.raises(DataError, match=rf"^{state}: cannot be resumed \(.*\); delete {root} to start this run over"):
        Trainer(cfg).fit()
    assert not Path(cfg["out"]).exists()


def test_a_cut_off_metrics_row_is_dropped_and_a_corrupt_one_refused(tmp_path):
    path = tmp_path / "run.ckpt" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "lo')
    checkpoint.truncate_metrics(path, 2)  # killed mid-row after the checkpoint of step 2
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(DataError, match=rf"^{path}, line 2: not a metrics row; delete {path.parent} to start"):
        checkpoint.truncate_metrics(path, 2)


def test_a_cli_stops_in_one_line_without_a_traceback(made, tmp_path):
    """The whole process: python -m rpo.train with a truncated reference cache."""
    cut = truncated_copy(made["cache"], tmp_path / "ref.pt", lambda n: n // 2)
    args = [f"model={made['model']}", f"data={made['data']}", f"out={tmp_path / 'dpo'}", "method=dpo",
            f"reference_cache={cut}", "batch_size=4", "threads=1", "max_length=48", "max_prompt_length=24"]
    proc = subprocess.run([sys.executable, "-m", "rpo.train", *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {cut}: cannot read the reference log-prob cache (") and "recompute" in last
    assert not (tmp_path / "dpo").exists()
    assert run_cli(train_main, args[:4] + ["reference_cache=" + str(made["cache"]), "batch_size=0"]) == 1


# ---- samples, judgments and alpaca_eval results ------------------------------------------------

def sample_rows(n=4, tag="a"):
    return [{"id": f"s{i}", "prompt": f"\n<|user|>\nQ{i}?\n<|assistant|>\n", "response": f"answer {tag}{i}",
             "chosen": f"GOOD {i}", "metadata": {}} for i in range(n)]


def judge_args(samples, tmp_path, *extra):
    return ["--samples", str(samples), "--task", "dialogue", "--out", str(tmp_path / "j" / "run.jsonl"),
            "--summary", str(tmp_path / "j" / "run.winrate.json"), "--no-progress", *extra]


def test_a_samples_file_with_a_missing_field_or_no_rows_is_refused(tmp_path, capsys):
    rows = sample_rows()
    del rows[1]["response"]
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, rows)
    assert judge_main(judge_args(samples, tmp_path, "--backend", "oracle", "--reward", "math:fabs")) == 1
    assert one_error_line(capsys) == (f"{samples}, line 2: missing field 'response'; regenerate the samples (delete "
                                      "the file and rerun the generate step)")
    samples.write_text("")
    assert judge_main(judge_args(samples, tmp_path, "--backend", "oracle", "--reward", "math:fabs")) == 1
    assert one_error_line(capsys) == f"{samples}: no samples; regenerate it (delete it and rerun the generate step)"
    assert not (tmp_path / "j").exists()


def test_judgments_of_another_prompt_set_than_the_samples_are_refused(tmp_path):
    root = tmp_path / "results"
    for folder in ("models/sft_seed1", "judgments", "samples"):
        (root / "dialogue" / folder).mkdir(parents=True)
    (root / "dialogue" / "models" / "sft_seed1" / "run.json").write_text(json.dumps(
        {"method": "sft", "model": "b", "run": Run("sft", 1).record()}))
    write_json(root / "dialogue" / "judgments" / "sft_seed1.winrate.json", {
        "n": 4, "wins": 2, "ties": 0, "losses": 2, "unparseable": 0, "win_rate": 0.5, "ci_low": 0.1, "ci_high": 0.9})
    judged = [{**row, "verdict": "model_win" if i < 2 else "chosen_win"} for i, row in enumerate(sample_rows())]
    judgments = root / "dialogue" / "judgments" / "sft_seed1.jsonl"
    write_jsonl(judgments, judged)
    samples = root / "dialogue" / "samples" / "sft_seed1.jsonl"
    write_jsonl(samples, sample_rows())
    assert len(collect_runs(root, tasks=["dialogue"])) == 1  # the samples it judged
    write_jsonl(samples, sample_rows()[:3] + [{**sample_rows()[0], "id": "s9"}])  # regenerated on other prompts
    with pytest.raises(DataError, match=rf"^{judgments}: judged 4 samples, but {samples} holds 4 that differ \(id "
                                        r"'s3' is only in .*\); the samples changed after judging: delete"):
        collect_runs(root, tasks=["dialogue"])
    write_jsonl(samples, sample_rows(tag="b"))  # the same prompts, other responses
    with pytest.raises(DataError, match=r"\(id 's0' has another prompt or response\)"):
        collect_runs(root, tasks=["dialogue"])


def test_an_alpaca_eval_result_without_its_columns_is_refused(tmp_path):
    out = tmp_path / "alpaca_eval_gpt4_turbo_fn"
    out.mkdir()
    (out / "leaderboard.csv").write_text(",win_rate,standard_error,n_total\nrpo,50.0,5.0,4\n")
    (out / "annotations.json").write_text(json.dumps([{"preference": 2.0}] * 4))
    with pytest.raises(DataError, match=rf"^{out / 'leaderboard.csv'}: alpaca_eval's output lacks the column\(s\) "
                                        r"n_wins, n_wins_base, n_draws \(found: win_rate, standard_error, n_total\); "
                                        r"is the installed alpaca_eval the pinned one"):
        _read_results(out, "rpo", "alpaca_eval_gpt4_turbo_fn", 1)
    (out / "leaderboard.csv").write_text(",win_rate,standard_error,n_total,n_wins,n_wins_base,n_draws\n"
                                         "other,50.0,5.0,4,2,2,0\n")
    with pytest.raises(DataError, match=r"leaderboard.csv: no row for generator 'rpo' \(rows: other\)"):
        _read_results(out, "rpo", "alpaca_eval_gpt4_turbo_fn", 1)
    (out / "leaderboard.csv").write_text(",win_rate,standard_error,n_total,n_wins,n_wins_base,n_draws\n"
                                         "rpo,100.0,0.0,4,4,0,0\n")
    (out / "annotations.json").write_text(json.dumps([{"output_1": "x"}] * 4))
    with pytest.raises(DataError, match=rf"^{out / 'annotations.json'}: alpaca_eval's output lacks the column\(s\) "
                                        r"preference"):
        _read_results(out, "rpo", "alpaca_eval_gpt4_turbo_fn", 1)


# ---- writes: disk full, permission denied, modes -----------------------------------------------

def no_space(path, data):
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])  # part of it, as a full disk leaves it
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def assert_nothing_left(folder: Path, *keep: str):
    assert sorted(p.name for p in folder.iterdir()) == sorted(keep)  # no half-written file, no staging folder


def test_a_full_disk_leaves_no_partial_output_and_a_rerun_redoes_it(tmp_path, monkeypatch, capsys):
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, [{**row, "metadata": {"instruction": f"Q{i}?"}} for i, row in enumerate(sample_rows())])
    out = tmp_path / "alpaca" / "model_outputs.json"
    write_json(out, ["an older, complete output"])
    args = ["export", "--samples", str(samples), "--out", str(out), "--generator", "rpo"]
    monkeypatch.setattr("rpo.io._write_bytes", no_space)
    assert alpaca_main(args) == 1
    assert one_error_line(capsys) == (f"{out}: cannot write it (No space left on device); nothing was left under "
                                      "this name: free disk space or fix the folder's permissions, then rerun "
                                      "(only this output is redone)")
    assert json.loads(out.read_text()) == ["an older, complete output"]  # not replaced by half a file
    assert_nothing_left(out.parent, out.name)
    monkeypatch.undo()
    assert alpaca_main(args) == 0 and len(json.loads(out.read_text())) == 4


def test_a_full_disk_while_saving_a_model_or_a_tensor_file_leaves_nothing(made, tmp_path, monkeypatch):
    model, tokenizer = load_model(made["model"], device="cpu")
    import transformers.modeling_utils as modeling_utils

    monkeypatch.setattr(modeling_utils, "safe_save_file", lambda tensors, path, **kw: no_space(path, b"x" * 64))
    with pytest.raises(WriteError, match=rf"^{tmp_path / 'saved'}: cannot write it \(No space left on device\)"):
        save_model(model, tokenizer, tmp_path / "saved")
    assert_nothing_left(tmp_path)

    def torch_full(obj, path, *args, **kw):  # torch wraps the OS error in its own
        Path(path).write_bytes(b"PK\x03\x04 part")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0: file write failed")

    monkeypatch.setattr(torch, "save", torch_full)
    with pytest.raises(WriteError, match=rf"^{tmp_path / 'emb.pt'}: cannot write it \(file write failed\)"):
        embed_prompts(made["data"], "random", tmp_path / "emb.pt", model_path=made["model"], **LENGTHS)
    assert_nothing_left(tmp_path)


def test_a_denied_permission_leaves_nothing_and_names_the_output(tmp_path, monkeypatch):
    folder = tmp_path / "readonly"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes through chmod: deny it the way the kernel would
        def denied(*args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder))

        monkeypatch.setattr("tempfile.mkdtemp", denied)
    else:
        folder.chmod(0o555)
    try:
        with pytest.raises(WriteError) as info:
            write_json(folder / "summary.json", {"n": 1})
    finally:
        folder.chmod(0o755)
    assert str(info.value) == (f"{folder / 'summary.json'}: cannot write it (Permission denied); nothing was left "
                               "under this name: free disk space or fix the folder's permissions, then rerun (only "
                               "this output is redone)")
    assert_nothing_left(folder)
    monkeypatch.undo()
    denied_input = PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/elsewhere/input.jsonl")
    with pytest.raises(PermissionError) as info:  # an input that cannot be read is not reported as a write
        with atomic_path(folder / "out.json"):
            raise denied_input
    assert info.value is denied_input
    assert_nothing_left(folder)


@pytest.mark.parametrize("umask", [0o027, 0o002])
def test_outputs_follow_the_umask_model_weights_included(made, tmp_path, umask):
    model, tokenizer = load_model(made["model"], device="cpu")
    old = os.umask(umask)
    try:
        save_model(model, tokenizer, tmp_path / "saved")
        write_json(tmp_path / "summary.json", {"n": 1})
        torch.save({}, tmp_path / "plain.pt")  # what open() itself gives, for comparison
    finally:
        os.umask(old)
    files = [tmp_path / "saved" / "model.safetensors", tmp_path / "saved" / "config.json", tmp_path / "summary.json"]
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in files} == {
        path.name: oct(0o666 & ~umask) for path in files}
    assert (tmp_path / "plain.pt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "saved").stat().st_mode & 0o777 == 0o777 & ~umask
