"""Multi-process plumbing: the process group, each rank's share of the data, DDP/FSDP wrapping,
collectives, and the shard-and-gather helpers of rpo.refcache and rpo.generate. Training-step
logic (the global contrast scope included) lives with the trainer in rpo.train.

Launch with torchrun or `accelerate launch`; both set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT, which `init_distributed` reads. A plain `python -m rpo.train` is world size 1 and
everything here is a no-op.

    torchrun --nproc_per_node 8 -m rpo.train --config run.yaml contrast_scope=global

Data: optimizer step k consumes micro-batches [k*A*W, (k+1)*A*W) of the trainer's plan (A =
gradient_accumulation_steps, W = world size); rank r takes the r-th run of A of them. The plan is a
function of the seed, so every rank knows every micro-batch of the step and a resumed run finds its
place by step number.

FSDP (`fsdp: true`) shards with FSDP2 `fully_shard`, one unit per transformer block; on more than
one rank checkpoints stay sharded (rpo.checkpoint), the final model holds gathered full weights.
Tested on CPU/gloo only (gradients, resume, sharded checkpoints, final save); on GPUs (nccl) it is
untested.
"""
from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from rpo.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} must be an integer") from None


# The GPU install line of README.md / docs/cluster.md: the wheel's CUDA must not be newer than the driver's.
CUDA_WHEEL = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"


def no_gpu_message(device: str = "cuda") -> str:
    """Why torch finds no GPU for `device`, and the install line that fixes it (check_device, scripts/gpu_check.sh)."""
    build = (f"torch {torch.__version__} is a CPU-only build" if torch.version.cuda is None else
             f"torch {torch.__version__} (built for CUDA {torch.version.cuda}) finds no usable GPU "
             f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    return (f"device {device}: {build}; install the CUDA wheel matching the driver (nvidia-smi shows the CUDA "
            f"version it supports), e.g. `{CUDA_WHEEL}` (cu126 for older drivers)")


def check_device(device: str | None) -> None:
    """Refuse `device` cuda where torch finds no GPU: a CPU-only torch wheel, or one built for a newer
    CUDA than the driver, would otherwise leave a GPU job computing on the CPU for days."""
    if device is None or not str(device).startswith("cuda") or torch.cuda.is_available():
        return
    raise ConfigError(f"{no_gpu_message(device)}, or set config key device: cpu to run on CPU")


def rank_device(device: str | None, local_rank: int) -> str:
    """The device of this rank: cuda:LOCAL_RANK where CUDA is asked for (or, with device None, available).
    An explicit cuda without a usable GPU is refused (check_device)."""
    check_device(device)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return f"cuda:{local_rank}" if device == "cuda" else device


def rank_threads(threads: int, ranks: int) -> int:
    """Torch threads of each of `ranks` processes sharing a job's `threads` CPUs (at least 1)."""
    return max(1, int(threads) // max(1, int(ranks)))


def set_rank_threads(threads: int | None) -> None:
    """Give this rank its share of the job's `threads` torch threads (None: leave torch's default).

    `threads` is what the job booked (the rule's threads, --cpus-per-task under SLURM), shared by the
    LOCAL_WORLD_SIZE ranks torchrun starts. Snakemake exports OMP_NUM_THREADS = the job's threads and
    torchrun keeps it: without this each of N ranks would run that many threads, N times the cores
    (the rehearsal's generation ran 12x slower).
    """
    if threads:
        torch.set_num_threads(rank_threads(threads, _env_int("LOCAL_WORLD_SIZE", 1)))


def init_distributed(device: str | None = None, timeout_minutes: float | None = None) -> DistEnv:
    """Join the process group the launcher describes (nccl for CUDA ranks, gloo for CPU ranks).

    `timeout_minutes` (training key dist_timeout_minutes) bounds how long a collective waits for the
    slowest rank; None keeps torch's (NCCL: 10 minutes), which rank 0 writing a 13B model alone can
    outlast while the other ranks wait at the barrier."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        check_device(device)
        return DistEnv()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    on_cuda = rank_device(device, local_rank).startswith("cuda")
    if on_cuda:
        torch.cuda.set_device(local_rank)  # before NCCL starts, so each rank talks from its own GPU
    if not dist.is_initialized():
        timeout = {"timeout": timedelta(minutes=timeout_minutes)} if timeout_minutes else {}
        dist.init_process_group("nccl" if on_cuda else "gloo", rank=rank, world_size=world, **timeout)
    elif dist.get_world_size() != world or dist.get_rank() != rank:
        raise ConfigError(f"a process group of world size {dist.get_world_size()} (rank {dist.get_rank()}) "
                          f"exists, but WORLD_SIZE={world} RANK={rank}")
    return DistEnv(rank, world, local_rank)


def shutdown_distributed(env: DistEnv) -> None:
    if env.active and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.active:
        dist.barrier()


# -- data ------------------------------------------------------------------------------------------
def steps_in_plan(n_micro_batches: int, accum: int, world_size: int) -> int:
    return n_micro_batches // (accum * world_size)


def step_micro_batches(plan: list, step: int, accum: int, world_size: int) -> list:
    """Every micro-batch of optimizer step `step` (0-based), all ranks, in rank order."""
    return plan[step * accum * world_size:(step + 1) * accum * world_size]


def local_micro_batches(plan: list, step: int, accum: int, env: DistEnv) -> list:
    return step_micro_batches(plan, step, accum, env.world_size)[env.rank * accum:(env.rank + 1) * accum]


# -- model wrapping --------------------------------------------------------------------------------
def wrap_model(model: torch.nn.Module, env: DistEnv, fsdp: bool = False,
               activation_checkpointing: bool = False) -> torch.nn.Module:
    """DDP (or FSDP2) around `model` when there is more than one rank; `model` itself otherwise.
    activation_checkpointing: per decoder block (rpo.memory), set up before FSDP shards the blocks."""
    if activation_checkpointing:
        from rpo.memory import enable_activation_checkpointing

        enable_activation_checkpointing(model)
    if not env.active:
        return model
    if fsdp:
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:
            raise ConfigError("training config key 'fsdp': needs torch.distributed.fsdp.fully_shard "
                              f"(torch >= 2.6), this is torch {torch.__version__}") from None
        blocks = set(getattr(model, "_no_split_modules", None) or [])
        for module in model.modules():
            # own_fsdp_unit: a module whose dtype differs from the model's (ppo's fp32 value head)
            if type(module).__name__ in blocks or getattr(module, "own_fsdp_unit", False):
                fully_shard(module)
        fully_shard(model)  # the root unit holds embeddings, final norm and (tied) head
        return model
    device = next(model.parameters()).device
    # Buffers here are constants (rotary frequencies, causal masks): no per-forward broadcast, which
    # would also make every no-grad forward a collective.
    new_name = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters  # torch >= 2.13
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   **{"forward_sync_buffers" if new_name else "broadcast_buffers": False})


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under DDP. FSDP2 shards in place, so it is its own unwrapped model."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def _is_fsdp(model) -> bool:
    return hasattr(model, "set_requires_gradient_sync")


@contextmanager
def gradient_sync(model: torch.nn.Module, sync: bool):
    """Backward passes inside reduce gradients across ranks only when `sync` (the last micro-batch)."""
    if isinstance(model, DistributedDataParallel) and not sync:
        with model.no_sync():
            yield
    elif _is_fsdp(model):
        model.set_requires_gradient_sync(sync)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def as_local_tensor(value: torch.Tensor) -> torch.Tensor:
    """A replicated DTensor (FSDP's grad norm) as a plain tensor; anything else unchanged."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def full_state_dicts(model, optimizer=None) -> tuple[dict, dict | None]:
    """Unsharded model (and optimizer) state. Collective under FSDP, where ranks other than 0 get {}."""
    if _is_fsdp(model):
        from torch.distributed.checkpoint import state_dict as dcp

        options = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)
        if optimizer is None:
            model_state, optimizer_state = dcp.get_model_state_dict(model, options=options), None
        else:
            model_state, optimizer_state = dcp.get_state_dict(model, optimizer, options=options)
        return _retie(model, model_state), optimizer_state
    return unwrap(model).state_dict(), optimizer.state_dict() if optimizer is not None else None


def _retie(model, state: dict) -> dict:
    """Tied parameters (embedding and head) come back as separate copies; share them again so that
    save_pretrained writes one tensor, as it does for an unsharded model."""
    first: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first and name in state:
            state[name] = state[first[id(param)]]
        first.setdefault(id(param), name)
    return state


def load_full_state_dicts(model, optimizer, model_state: dict, optimizer_state: dict) -> None:
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state,
                       options=StateDictOptions(full_state_dict=True))
        return
    unwrap(model).load_state_dict(model_state)
    optimizer.load_state_dict(optimizer_state)


def sharded_state_dicts(model, optimizer) -> tuple[dict, dict]:
    """This rank's shards of the FSDP model and optimizer state (DTensors), the layout that
    torch.distributed.checkpoint saves from and loads into without any rank gathering the whole."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, optimizer)


def load_sharded_state_dicts(model, optimizer, model_state: dict, optimizer_state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)


# -- collectives -----------------------------------------------------------------------------------
def all_reduce_sum(values: list[float], env: DistEnv, device) -> list[float]:
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    if env.active:
        dist.all_reduce(totals)
    return totals.tolist()


def gather_objects(obj, env: DistEnv) -> list:
    """[rank 0's obj, rank 1's obj, ...] on every rank (picklable objects: RNG states)."""
    if not env.active:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_varlen(local: torch.Tensor, sizes: list[int], env: DistEnv) -> torch.Tensor:
    """Concatenate every rank's 1-D tensor in rank order; sizes[r] is rank r's length (known to all)."""
    if not env.active:
        return local
    if local.numel() != sizes[env.rank]:
        raise ValueError(f"rank {env.rank} holds {local.numel()} values, the plan says {sizes[env.rank]}")
    padded = local.new_zeros(max(max(sizes), 1))  # all_gather needs one shape on every rank
    padded[:local.numel()] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


# -- sharded inference (reference log-probs, generation) ------------------------------------------
def balanced_shards(costs: list[float], world_size: int) -> list[list[int]]:
    """Indices 0..len(costs)-1 split into `world_size` ascending lists of near-equal total cost: the
    costliest item goes to the least loaded rank, ties to the lower index and rank. A function of
    its arguments only, so every rank computes the same split without talking to the others."""
    loads, shards = [0.0] * world_size, [[] for _ in range(world_size)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        shards[rank].append(index)
        loads[rank] += costs[index]
    return [sorted(shard) for shard in shards]


def gather_in_order(local: dict[int, object], n: int, env: DistEnv) -> list:
    """Every rank's {index: result} merged into [result 0, ..., result n-1], on every rank."""
    merged: dict[int, object] = {}
    for part in gather_objects(local, env):
        merged.update(part)
    if sorted(merged) != list(range(n)):
        missing = sorted(set(range(n)) - set(merged))[:5]
        raise RuntimeError(f"sharded results cover {len(merged)} of {n} items (missing e.g. {missing}): "
                           "the ranks disagree on the shards")
    return [merged[i] for i in range(n)]
