"""Reference log-probs and generation sharded over 2 CPU ranks (gloo) write the same files as one process:
the same cache tensors and metadata, the same samples JSONL byte for byte (nucleus sampling and greedy),
one file each and nothing half-written. Both CLIs pass through torchrun's own argument parser, and the
workflow's refcache/generate commands launch torchrun with one rank per GPU.

The two ranks run `main()` of each module as torchrun runs it (process group from the environment,
torn down at the end), in ONE forkserver spawn (module fixture `outputs`).
"""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.run import get_args_parser as torchrun_parser

from rpo import generate, refcache
from rpo.data.records import PreferenceRecord, write_records
from rpo.distributed import DistEnv, balanced_shards, gather_in_order
from rpo.models import build_model
from conftest import free_port, start_two_ranks

ROOT = Path(__file__).resolve().parent.parent
TOPICS = ["tea", "rivers", "chess", "ferns", "bells", "maps", "wool"]
# 21 records in batches of 4: 6 batches per side, the last of 1; 11 prompts in batches of 3: 4 batches,
# the last of 2, so neither split is even.
N_RECORDS, REF_BATCH, N_PROMPTS, GEN_BATCH = 21, 4, 11, 3


def make_records():
    # prompt lengths vary, so batches differ in padded size and the cost balancing has work to do
    return [PreferenceRecord(
        id=f"s{i}", prompt=f"\n<|user|>\n{'please ' * (i % 4)}tell me about {TOPICS[i % 7]}, number {i}\n<|assistant|>\n",
        chosen=f"{TOPICS[i % 7]} are {'very ' * (i % 3)}interesting; see item {i % 5}.",
        rejected=f"no idea about {TOPICS[i % 7]}.", metadata={"truncation": "keep_end"}) for i in range(N_RECORDS)]


def commands(root: Path, out: Path) -> dict[str, list[str]]:
    data, model = str(root / "train.jsonl"), str(root / "model")
    gen = ["--model", model, "--records", data, "--n-prompts", str(N_PROMPTS), "--max-new-tokens", "6",
           "--batch-size", str(GEN_BATCH), "--seed", "5", "--device", "cpu", "--temperature", "1.0"]
    return {
        "refcache": ["--model", model, "--records", data, "--out", str(out / "ref.pt"), "--max-length", "64",
                     "--max-prompt-length", "32", "--batch-size", str(REF_BATCH), "--threads", "1"],
        # the default sampling settings: top_k 50, top_p 0.95; temperature 1 (the small model's config sets none)
        "sampled": [*gen, "--out", str(out / "sampled.jsonl")],
        "greedy": [*gen, "--out", str(out / "greedy.jsonl"), "--greedy"],
    }


def run_all(root: Path, out: Path, ports=None) -> None:
    for k, (name, argv) in enumerate(commands(root, out).items()):
        if ports:  # a fresh rendezvous port per process group, as each torchrun launch has
            os.environ["MASTER_PORT"] = str(ports[k])
        (refcache.main if name == "refcache" else generate.main)(argv)
        assert not dist.is_initialized()


def _refuse_write(*args, **kwargs):
    raise AssertionError("a rank other than 0 wrote an output file")


def _rank_worker(rank, root, ports):
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    if rank != 0:  # this process only: rank 0 alone may write
        generate.write_jsonl = refcache.atomic_path = _refuse_write
    run_all(Path(root), Path(root) / "two", ports)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharding")
    records = make_records()
    write_records(root / "train.jsonl", records)
    spec = {"kind": "small", "arch": "gpt2", "n_layers": 2, "d_model": 32, "n_heads": 2, "vocab_size": 300,
            "max_position": 96}
    build_model(spec, root / "model", corpus=[r.prompt + r.chosen + r.rejected for r in records], seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' thread count: CPU kernels may round differently with others
    try:
        run_all(root, root / "one")
    finally:
        torch.set_num_threads(threads)
    start_two_ranks(_rank_worker, __name__, (str(root), [free_port() for _ in range(3)]))
    return root / "one", root / "two"


def test_two_rank_reference_cache_equals_one_process(outputs):
    one, two = (torch.load(folder / "ref.pt", weights_only=True) for folder in outputs)
    assert list(one) == list(two) == ["chosen", "rejected", "token_logps", "token_counts", "meta"]
    for side in refcache.TOKEN_SIDES:  # ppo's per-token log-probs: the same on one rank and two
        assert torch.equal(one["token_logps"][side], two["token_logps"][side])
        assert torch.equal(one["token_counts"][side], two["token_counts"][side])
        assert one["token_counts"][side].sum() == one["token_logps"][side].numel()
    for side in refcache.SIDES:
        assert one[side].shape == (N_RECORDS,) and torch.isfinite(one[side]).all()
        assert one[side].unique().numel() > N_RECORDS // 2  # real per-example values, not a constant
        assert one[side].dtype == two[side].dtype and torch.equal(one[side], two[side]), side
    assert one["meta"] == two["meta"] and one["meta"]["n"] == N_RECORDS


@pytest.mark.parametrize("name", ["sampled", "greedy"])
def test_two_rank_samples_equal_one_process_byte_for_byte(outputs, name):
    one, two = ((folder / f"{name}.jsonl").read_bytes() for folder in outputs)
    assert one == two
    rows = generate.read_jsonl(outputs[0] / f"{name}.jsonl")
    assert len(rows) == N_PROMPTS and len({r["id"] for r in rows}) == N_PROMPTS
    assert rows[0]["sampling"]["do_sample"] is (name == "sampled")


def test_sampling_really_sampled(outputs):
    """Byte equality above means something only if the sampled file differs from the greedy one."""
    sampled, greedy = (generate.read_jsonl(outputs[0] / f"{name}.jsonl") for name in ("sampled", "greedy"))
    assert [r["id"] for r in sampled] == [r["id"] for r in greedy]
    assert sum(s["response"] != g["response"] for s, g in zip(sampled, greedy)) >= N_PROMPTS // 2
    assert {key: sampled[0]["sampling"][key] for key in ("top_k", "top_p", "temperature")} == {
        "top_k": 50, "top_p": 0.95, "temperature": 1.0}


def test_each_output_written_once_and_no_temporary_files_left(outputs):
    # rank 1 ran with its writers replaced by _refuse_write, so the files are rank 0's alone
    for folder in outputs:
        assert sorted(p.name for p in folder.iterdir()) == ["greedy.jsonl", "ref.pt", "sampled.jsonl"]
    assert sorted(p.name for p in outputs[0].parent.iterdir()) == ["model", "one", "train.jsonl", "two"]


def test_balanced_shards_cover_every_index_once_with_near_equal_cost():
    costs = [7, 1, 1, 1, 5, 3, 3, 2, 9, 4]
    shards = balanced_shards(costs, 3)
    assert sorted(i for shard in shards for i in shard) == list(range(len(costs)))
    assert all(shard == sorted(shard) for shard in shards)
    loads = [sum(costs[i] for i in shard) for shard in shards]
    assert max(loads) - min(loads) <= max(costs) // 2 and max(loads) <= 13  # total 36 over 3 ranks
    assert shards == balanced_shards(list(costs), 3)  # every rank derives the same split
    assert balanced_shards(costs, 1) == [list(range(len(costs)))]
    assert balanced_shards([1, 1], 3)[2] == []  # more ranks than items: the extra rank idles


def test_gather_in_order_refuses_shards_that_miss_an_item():
    assert gather_in_order({1: "b", 0: "a"}, 2, DistEnv()) == ["a", "b"]
    with pytest.raises(RuntimeError, match=r"cover 2 of 3 items \(missing e.g. \[2\]\)"):
        gather_in_order({0: "a", 1: "b"}, 3, DistEnv())


@pytest.mark.parametrize("module", [generate, refcache])
def test_every_option_reaches_the_module_through_torchrun(module):
    """torchrun parses its own options first and errors on an ambiguous prefix even after the script
    name (`--n` could be --nnodes or --nproc-per-node): each canonical option must pass untouched."""
    parser = module.build_parser()
    argv = []
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            argv.append(action.option_strings[0])
            if action.nargs != 0:
                argv.append(action.choices[0] if action.choices else "1")
    launched = torchrun_parser().parse_args(["--standalone", "--nproc-per-node", "2", "-m", module.__name__, *argv])
    assert launched.module and launched.training_script == module.__name__
    assert launched.training_script_args == argv
    parser.parse_args(argv)
    if module is generate:  # the short spelling still works without torchrun
        assert parser.parse_args(["--model", "m", "--records", "r", "--out", "o", "--n", "3"]).n == 3


def test_workflow_launches_refcache_and_generation_with_one_rank_per_gpu(tmp_path):
    """Dry run of the paper config (gpus: 8): every refcache/generate command is torchrun with 8 ranks,
    and its arguments reach the module's parser intact."""
    r = "results"
    for path in (f"{r}/data/dialogue/train.jsonl", f"{r}/data/dialogue/test.jsonl", f"{r}/data/instructions/eval.jsonl",
                 f"{r}/mistral-7b/dialogue/models/sft_seed1/config.json",
                 f"{r}/mistral-7b/dialogue/models/dpo_bs8_seed1/config.json"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).touch()
    # the inputs exist and only these rules may run: the plan is exactly one job of each
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "-p",
                             "--configfile", str(ROOT / "workflow/paper.yaml"), "--directory", str(tmp_path),
                             "--allowed-rules", "refcache", "generate", "generate_instructions",
                             "--", f"{r}/mistral-7b/dialogue/refcache/sft_seed1.pt",
                             f"{r}/mistral-7b/dialogue/samples/dpo_bs8_seed1.jsonl",
                             f"{r}/mistral-7b/instructions/samples/dpo_bs8_seed1.jsonl"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split("Shell command:")[-1].strip() for line in (result.stdout + result.stderr).splitlines()
             if " -m rpo.refcache " in line or " -m rpo.generate " in line]
    assert len(lines) == 3, result.stdout[-3000:]
    for line in lines:
        words = shlex.split(line.split(" > ")[0])
        assert words[0] == "torchrun"
        launched = torchrun_parser().parse_args(words[1:])
        assert launched.standalone and launched.nproc_per_node == "8"
        module = refcache if launched.training_script == "rpo.refcache" else generate
        module.build_parser().parse_args(launched.training_script_args)
