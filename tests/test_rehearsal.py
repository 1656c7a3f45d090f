"""The rehearsal of the paper profile (workflow/rehearsal.yaml), its smallest form, end to end:
SmolLM2-135M-Instruct as a `kind: hf` folder built from its GGUF, hub-format data through the
loaders, torchrun with FSDP2 on two CPU ranks, the openai judge backend against the local oracle
server, alpaca_eval with the paper's annotator, then every table."""
import csv
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rpo.config import validate_config
from rpo.data.records import ASSISTANT, read_records, write_records
from rpo.data.tokenize import collate, tokenize_element
from rpo.generate import generate
from rpo.judge.protocols import PAPER_REQUEST, render_messages
from rpo.models import load_model
from rpo.pipeline import TABLES, table_runs
from rpo.train import Trainer
from rpo.train_config import resolve_config

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "workflow/rehearsal.yaml"
MODEL = "smollm2-135m"
# The smallest form: the paper's path whole, with the fewest runs that still fill every table kind.
# RPO-paired takes every input a preference run can take but the KL sequences: reference log-probs and
# prompt embeddings; with SFT it fills Table 1, 2 (AlpacaEval), 3 (tau) and the weighting table.
SMALLEST = {"methods": ["rpo-paired"], "taus": [0.5], "alpacaeval_runs": ["rpo-paired"]}
RUN = "rpo-paired_tau0.5_minilm_bs2_seed1"


def smallest_profile(results: Path) -> dict:
    profile = yaml.safe_load(PROFILE.read_text())
    profile["results_dir"] = str(results)
    for spec in profile["data"]["hub"].values():
        spec["path"] = str(results / "hub" / Path(spec["path"]).name)
    name = Path(profile["models"][MODEL]["name_or_path"]).name
    profile["models"][MODEL]["name_or_path"] = str(results / "pretrained" / name)
    profile["methods"] = SMALLEST["methods"]
    profile["rpo"]["taus"] = SMALLEST["taus"]
    profile["alpacaeval"]["runs"] = SMALLEST["alpacaeval_runs"]
    return profile


def run_in_own_group(command, timeout, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run in a session of its own: on a timeout the whole tree (snakemake, the judge server,
    torchrun's ranks) is killed, not only the direct child, so nothing keeps running into later tests."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, **kwargs) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, out, err)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal")
    results = root / "results"
    profile = smallest_profile(results)
    path = root / "rehearsal.yaml"
    path.write_text(yaml.safe_dump(profile))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("OPENAI_API_KEY", None)  # the local server's throwaway key is the only one the DAG may see
    done = run_in_own_group([sys.executable, "-m", "rpo.rehearsal", "--configfile", str(path), "--", "--quiet"],
                            cwd=ROOT, env=env, timeout=600)
    logs = "\n".join(f"--- {log}\n{log.read_text()[-1500:]}" for log in sorted((results / "logs").rglob("*.log"))
                     if done.returncode)
    assert done.returncode == 0, f"{done.stderr[-4000:]}\n{logs[-8000:]}"
    return validate_config(profile), results


def test_every_table_has_its_rows(rehearsal):
    config, results = rehearsal
    shown = [t for t in TABLES if table_runs(config, t)]
    assert {"table1", "table2", "table3"} <= set(shown)
    for table in shown:
        with (results / "tables" / MODEL / f"{table}.data.csv").open() as f:
            body = list(csv.DictReader(f))
        expected = {(task, run.name) for task, run in table_runs(config, table)}
        assert {(r["task"], r.get("runs") or r["run"]) for r in body} == expected, table
        assert all(0 <= float(r["win_rate"]) <= 1 for r in body if "win_rate" in r), table  # not regime's


def test_the_pad_eos_tokenizer_keeps_eos_in_the_labels_and_trains(rehearsal):
    config, results = rehearsal
    _, tokenizer = load_model(results / MODEL / "base", dtype="float32")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # SmolLM2's: the case that loses EOS labels
    record = read_records(results / "data" / "dialogue" / "train.jsonl")[0]
    example = tokenize_element(tokenizer, record.prompt, record.chosen, max_length=config["training"]["max_length"],
                               max_prompt_length=config["training"]["max_prompt_length"], truncation="keep_end").example
    batch = collate([example, {"input_ids": example["input_ids"][:3], "labels": [-100] * 3}], tokenizer.pad_token_id)
    labels = batch["labels"][0][batch["labels"][0] != -100]
    assert labels[-1].item() == tokenizer.eos_token_id  # EOS is learned although it is also the pad id
    assert (batch["labels"][1] == -100).all()  # while the padding of the shorter row is not
    for task in config["data"]["tasks"]:
        for run in ("sft_seed1", RUN):
            rows = [json.loads(line) for line in (results / MODEL / task / "models" / run / "metrics.jsonl").open()]
            assert rows and all(math.isfinite(r["loss"]) for r in rows if "loss" in r), (task, run)



def test_every_run_steps_at_the_public_codes_learning_rates(rehearsal):
    """The public LambdaLR: step k (1-based in metrics.jsonl) at lr x min(1, k / (warmup + 1)), no decay."""
    config, results = rehearsal
    files = sorted((results / MODEL).glob("*/models/*/metrics.jsonl"))
    assert files
    for path in files:
        stage = config["sft"] if path.parent.name.startswith("sft") else config["preference"]
        steps = [row for row in map(json.loads, path.open()) if "lr" in row]
        assert steps, path
        for row in steps:
            want = stage["lr"] * min(1.0, row["step"] / (stage["warmup_steps"] + 1))
            assert row["lr"] == pytest.approx(want, rel=1e-9), (path, row["step"])


def test_a_model_taught_to_stop_stops_at_eos(rehearsal, tmp_path):
    """The rehearsal's few steps at lr 5e-7 cannot teach EOS; 16 steps on one record can. Greedy
    generation must then write that record's chosen response and stop at EOS, counted right."""
    config, results = rehearsal
    record = read_records(results / "data" / "dialogue" / "train.jsonl")[0]
    write_records(tmp_path / "one.jsonl", [record])
    lengths = {k: config["training"][k] for k in ("max_length", "max_prompt_length")}
    Trainer(resolve_config({"model": str(results / MODEL / "base"), "data": str(tmp_path / "one.jsonl"),
                            "out": str(tmp_path / "sft"), "method": "sft", "lr": 1e-4, "optimizer": "adamw",
                            "batch_size": 1, "epochs": 16, "warmup_steps": 0, "save_every": 1000, **lengths})).fit()
    prompt = {"id": record.id, "prompt": record.prompt, "chosen": record.chosen, "rejected": record.rejected,
              "metadata": record.metadata}
    [sample] = generate(tmp_path / "sft", [prompt], tmp_path / "samples.jsonl", max_new_tokens=40, do_sample=False,
                        max_prompt_length=lengths["max_prompt_length"], train_max_length=lengths["max_length"])
    _, tokenizer = load_model(tmp_path / "sft", dtype="float32")
    assert sample["response"] == record.chosen
    # it learned the response as the public tokenisation writes it: the text, " ", EOS (the space a token here)
    element = tokenize_element(tokenizer, record.prompt, record.chosen, truncation="keep_end", **lengths)
    assert sample["stopped_at_eos"] and sample["new_tokens"] == sum(x != -100 for x in element.labels) - 1


def test_samples_record_where_generation_stopped(rehearsal):
    config, results = rehearsal
    for task in config["data"]["tasks"]:
        for line in (results / MODEL / task / "samples" / f"{RUN}.jsonl").open():
            sample = json.loads(line)
            assert "<|im_end|>" not in sample["response"]
            budget = sample["sampling"]["new_token_budget"]
            assert sample["new_tokens"] < budget if sample["stopped_at_eos"] else sample["new_tokens"] == budget


def test_a_long_tldr_post_is_sampled_as_the_test_loader_cuts_it(rehearsal):
    config, results = rehearsal
    _, tokenizer = load_model(results / MODEL / "base", dtype="float32")
    lengths = {k: config["training"][k] for k in ("max_length", "max_prompt_length")}
    samples = [json.loads(line) for line in (results / MODEL / "summarization" / "samples" / "sft_seed1.jsonl").open()]
    long_posts = [s for s in samples if len(tokenizer(s["prompt"])["input_ids"]) > lengths["max_prompt_length"]]
    assert long_posts, "no TL;DR post is longer than max_prompt_length: the cut is not rehearsed"
    # the public code's rule cuts a prompt only when it and its (chosen) response exceed max_length
    assert any("cut_prompt" in s for s in long_posts), "no long post was cut: the keep_start cut is not rehearsed"
    for sample in long_posts:
        element = tokenize_element(tokenizer, sample["prompt"], sample["chosen"], truncation="keep_start", **lengths)
        assert sample.get("cut_prompt", sample["prompt"]) == element.prompt_text
        if "cut_prompt" in sample:  # its start, the assistant marker cut away with its end (as there)
            assert sample["prompt"].startswith(element.prompt_text) and not element.prompt_text.endswith(ASSISTANT)


def test_judge_requests_carry_the_paper_protocol(rehearsal):
    config, results = rehearsal
    bodies = [json.loads(line) for line in (results / "logs" / "judge_requests.jsonl").open()]
    pairwise = [b for b in bodies if not b.get("tools") and not b.get("functions")]
    sent = [body["messages"] for body in pairwise]
    for body in pairwise:
        assert body["model"] == config["judge"]["model"]
        assert {k: body.get(k) for k in PAPER_REQUEST} == PAPER_REQUEST
        assert len(body["messages"]) == 2 and all(m["role"] == "user" for m in body["messages"])
    # every judged sample went out (or was answered from the cache after going out once) as the
    # public code's two user messages, in one of the two presentation orders
    for task in config["data"]["tasks"]:
        for path in (results / MODEL / task / "judgments").glob("*.jsonl"):
            samples = {s["id"]: s for s in map(json.loads, (results / MODEL / task / "samples" / path.name).open())}
            assert len(samples) == config["generation"]["n_prompts"]
            for s in samples.values():
                # compare.py's inputs: the prompt as fed, the chosen as tokenised (rpo.generate records both)
                shown = [render_messages("rpo-paper", task, s["prompt_text"], a, b)
                         for a, b in ((s["response"], s["chosen_text"]), (s["chosen_text"], s["response"]))]
                assert any(m in sent for m in shown), (task, path.name, s["id"])
    assert len(bodies) > len(pairwise)  # alpaca_eval's annotator called through the same server
