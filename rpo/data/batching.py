"""Which records every micro-batch of a run holds, in order: the data order of training.

Derived from the config and the records alone (no model, no trainer), so the trainer, the report
and the budget all read the same plan, and a resumed run finds its place by step number.

Batching kinds (rpo.losses.BATCHINGS):
- paired: pairs shuffled each epoch, `batch_size` pairs a micro-batch.
- sft: the first pair of each unique prompt, chosen response only.
- unpaired (rpo-unpaired): the public SimpleKTODataLoader, batch_size/2 chosen + batch_size/2 rejected
  items a micro-batch (`unpaired_batches`).
- items (kto, ppo): the public UnpairedPreferenceDataLoader (`item_micro_batches`): independent items,
  desirable and undesirable mixed as they fall.
"""
from __future__ import annotations

import random
from typing import Sequence

import torch

from rpo.data.records import PreferenceRecord, UnpairedItem, sft_examples
from rpo.errors import ConfigError
from rpo.losses import get_loss

Plan = list[tuple[list[int], list[int]]]  # each micro-batch as (chosen record indices, rejected record indices)


def unpaired_items(records: Sequence[PreferenceRecord], seed: int | None = None,
                   rng: random.Random | None = None) -> list[UnpairedItem]:
    """Split every triplet into a desirable (x, y_w) and an undesirable (x, y_l) item, then shuffle
    with `rng` (a run's generator, drawn from once per epoch) or random.Random(seed).

    The shuffled flat list feeds `unpaired_batches`' two queues.
    """
    items = []
    for index, record in enumerate(records):
        items.append(UnpairedItem(index, record.prompt, record.chosen, True))
        items.append(UnpairedItem(index, record.prompt, record.rejected, False))
    (rng or random.Random(seed)).shuffle(items)
    return items


def unpaired_batches(records: Sequence[PreferenceRecord], per_side: int, seed: int | None = None,
                     rng: random.Random | None = None) -> Plan:
    """One epoch of unpaired batches as (chosen record indices, rejected record indices).

    As the public code builds them: the shuffled split items fill a chosen queue and a rejected
    queue in order, and each batch takes `per_side` from each, so every contrast matrix is
    per_side x per_side while a batch's chosen and rejected items still come from independent
    prompts. Both queues hold one item per record, so they run short together: the incomplete
    last batch (len(records) % per_side items a side) is dropped, as the trainer drops every
    incomplete trailing micro-batch.
    """
    if per_side < 1:
        raise ValueError(f"unpaired_batches: per_side must be >= 1, got {per_side}")
    items = unpaired_items(records, seed, rng)
    chosen = [item.record_index for item in items if item.desirable]
    rejected = [item.record_index for item in items if not item.desirable]
    return [(chosen[s:s + per_side], rejected[s:s + per_side])
            for s in range(0, min(len(chosen), len(rejected)) - per_side + 1, per_side)]


def item_batches(records: Sequence[PreferenceRecord], global_batch: int, epochs: int,
                 seed: int) -> list[list[UnpairedItem]]:
    """The global batches of the public UnpairedPreferenceDataLoader (dataloader.py), item by item.

    Unique prompts in first-seen order are shuffled; each prompt's pairs give a desirable then an
    undesirable item (the flat list); every epoch shuffles that flat list again, in place, and cuts it
    into consecutive batches of `global_batch` items, the incomplete last one dropped. A batch whose
    items all have one status is skipped, as the public trainer skips it (trainers.py: len(set(status)) == 1).
    One random.Random(seed) draws every shuffle (the public code's global `random`, seeded once).
    """
    if global_batch < 1:
        raise ValueError(f"item_batches: global_batch must be >= 1, got {global_batch}")
    rng = random.Random(seed)
    prompts = list(dict.fromkeys(r.prompt for r in records))
    rng.shuffle(prompts)
    by_prompt: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        by_prompt.setdefault(record.prompt, []).append(index)
    flat = [UnpairedItem(i, records[i].prompt, response, desirable)
            for prompt in prompts for i in by_prompt[prompt]
            for response, desirable in ((records[i].chosen, True), (records[i].rejected, False))]
    batches = []
    for _ in range(epochs):
        rng.shuffle(flat)
        for start in range(0, len(flat) - global_batch + 1, global_batch):
            batch = flat[start:start + global_batch]
            if len({item.desirable for item in batch}) > 1:
                batches.append(batch)
    return batches


def item_micro_batches(records: Sequence[PreferenceRecord], micro: int, per_step: int, epochs: int,
                       seed: int) -> list[tuple[list[UnpairedItem], list[UnpairedItem]]]:
    """Every micro-batch of an items run as (its items, each item's KL partner), in plan order.

    One public global batch is one optimizer step here: `per_step` (= gradient_accumulation_steps x
    ranks) micro-batches of `micro` items, the k-th holding items [k*micro, (k+1)*micro). With one
    micro-batch a rank (the paper's accumulation 1) rank r gets [r*micro, (r+1)*micro), the public
    slice_and_move_batch_for_device; with accumulation, the micro-batches of one rank stand in for
    ranks. Item i's KL partner is item i+1 of the same global batch, the last item's the first
    (dataloader.py: `indices = list(range(1, len(batch))) + [0]`).
    """
    out = []
    for batch in item_batches(records, micro * per_step, epochs, seed):
        partners = batch[1:] + batch[:1]
        out.extend((batch[s:s + micro], partners[s:s + micro]) for s in range(0, len(batch), micro))
    return out


def sides(items: Sequence[UnpairedItem]) -> tuple[list[int], list[int]]:
    """(chosen record indices, rejected record indices) of a micro-batch's items, each side in item order."""
    return [i.record_index for i in items if i.desirable], [i.record_index for i in items if not i.desirable]


def micro_batch_plan(cfg: dict, records: Sequence[PreferenceRecord], world_size: int = 1) -> Plan:
    """Every micro-batch of the run as (chosen record indices, rejected record indices), in order.

    Derived from the seed (and, for items batching, the global batch: batch_size x
    gradient_accumulation_steps x world_size), so a resumed run finds its place by step number.
    Incomplete trailing micro-batches are dropped so every contrast matrix has the configured size.
    """
    bs, plan, batching = cfg["batch_size"], [], get_loss(cfg["method"]).batching
    if batching == "items":
        per_step = cfg.get("gradient_accumulation_steps", 1) * world_size
        return [sides(items) for items, _ in item_micro_batches(records, bs, per_step, cfg["epochs"], cfg["seed"])]
    if batching == "unpaired" and bs % 2:
        raise ConfigError(f"training key batch_size is {bs}: {cfg['method']} takes batch_size/2 chosen and "
                          "batch_size/2 rejected items per micro-batch, so it must be even")
    # One generator per run, drawn from epoch after epoch: seed s's epoch e is never seed s+e's epoch 0.
    generator, shuffler = torch.Generator().manual_seed(cfg["seed"]), random.Random(cfg["seed"])
    for _ in range(cfg["epochs"]):
        if batching == "unpaired":
            plan.extend(unpaired_batches(records, bs // 2, rng=shuffler))
            continue
        pool = [i for i, _, _ in sft_examples(records)] if batching == "sft" else list(range(len(records)))
        order = [pool[i] for i in torch.randperm(len(pool), generator=generator).tolist()]
        for s in range(0, len(order) - bs + 1, bs):
            chunk = order[s:s + bs]
            plan.append((chunk, [] if batching == "sft" else chunk))
    return plan
