"""One training loop for SFT and every preference loss, driven by a config file.

    python -m rpo.train --config run.yaml [key=value ...]          (torchrun/accelerate launch: rpo.distributed)

Read top to bottom: config -> data order -> step (forward, loss, backward) -> checkpoint -> save.
Each micro-batch is one forward pass over its chosen sequences followed by its rejected ones, packed
into one row by default (`packing`, rpo.scoring).
`contrast_scope` says which sequences one M x N contrast matrix spans: `micro` (default, the paper's
per-device code) each micro-batch, the losses of a step's micro-batches (all ranks) averaged;
`global` every micro-batch of the step on every rank (rpo.distributed; SFT refuses it).
Reference log-probs come from the cache (rpo.refcache); this process never holds a reference model.
Only rank 0 writes metrics, checkpoints and the final model (a sharded FSDP checkpoint: every rank its
shards, rpo.checkpoint); metrics are global (all ranks).
"""
from __future__ import annotations

import argparse
import collections
import itertools
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from rpo.data.batching import micro_batch_plan
from rpo.data.records import read_records
from rpo.data.tokenize import default_truncation, tokenize_records
from rpo.distributed import (all_reduce_sum, as_local_tensor, barrier, full_state_dicts, gather_varlen,
                             gradient_sync, init_distributed, local_micro_batches, rank_device, set_rank_threads,
                             shutdown_distributed, step_micro_batches, steps_in_plan, unwrap, wrap_model)
from rpo.embed import load_embeddings, text_settings
from rpo.errors import ConfigError, TrainingDivergedError
from rpo.io import atomic_path, write_json
from rpo import checkpoint, diagnostics, kto, ppo
from rpo.optim import current_lr, make_optimizer, make_scheduler
from rpo.losses import PPO_METRICS, get_loss
from rpo.models import load_model
from rpo.train_config import load_config, resolve_config
from rpo.precision import resolve_precision
from rpo.refcache import load_reference_cache
from rpo.scoring import score
from rpo.tracking import Trackers

METRIC_KEYS = ("loss", "logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected", "rewards/margins",
               "rewards/accuracies") + PPO_METRICS  # each logged where its loss reports it


class Trainer:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        set_rank_threads(cfg["threads"])
        self.records = read_records(cfg["data"])
        self.truncation = cfg["truncation"] or default_truncation(self.records)
        self.env = init_distributed(cfg["device"], cfg["dist_timeout_minutes"])
        torch.manual_seed(cfg["seed"])
        # Pure bf16 weights, or fp32 master weights with bf16 autocast (rpo.precision).
        model, self.tokenizer = load_model(cfg["model"], device=rank_device(cfg["device"], self.env.local_rank),
                                           dtype=cfg["dtype"], fp32_master_weights=cfg["fp32_master_weights"],
                                           attn_implementation=cfg["attn_implementation"])
        self.device = next(model.parameters()).device
        self.loss = get_loss(cfg["method"])
        model = ppo.attach_value_head(model) if "values" in self.loss.needs else model  # before wrapping: rpo.ppo
        model = wrap_model(model, self.env, fsdp=cfg["fsdp"], activation_checkpointing=cfg["activation_checkpointing"])
        self.precision = resolve_precision(cfg["dtype"], self.device, cfg["fp32_master_weights"])
        self.sequences = tokenize_records(self.records, self.tokenizer, cfg["max_length"], cfg["max_prompt_length"],
                                          self.truncation)
        self.ref = self.embeddings = None
        if self.loss.needs & {"reference", "reference_tokens"}:
            self.ref = load_reference_cache(cfg["reference_cache"], cfg["data"], cfg["model"],
                                            max_length=cfg["max_length"], max_prompt_length=cfg["max_prompt_length"],
                                            truncation=self.truncation, precision=self.precision,
                                            packing=cfg["packing"])
        if "embeddings" in self.loss.needs:
            # The public code's prompt_text: a pair's rejected element's for both sides; an unpaired item its own.
            settings = text_settings(cfg["model"], cfg["max_length"], cfg["max_prompt_length"], self.truncation)
            self.embeddings = {side: load_embeddings(cfg["embeddings"], cfg["data"], cfg["embedder"], settings, side)
                               for side in ("chosen", "rejected")}
            if self.loss.batching != "unpaired":
                self.embeddings["chosen"] = self.embeddings["rejected"]
        self.plan = micro_batch_plan(cfg, self.records, self.env.world_size)
        accum = cfg["gradient_accumulation_steps"]
        self.total_steps = steps_in_plan(len(self.plan), accum, self.env.world_size)
        self.total_steps = min(self.total_steps, cfg["max_steps"] or self.total_steps)
        if self.total_steps < 1:
            raise ConfigError(f"{cfg['data']}: {len(self.records)} records give no full step of batch_size "
                              f"{cfg['batch_size']} x gradient_accumulation_steps {accum} x {self.env.world_size} "
                              "rank(s)")
        self.z0 = None  # KTO: this step's z0 (rpo.kto)
        if "kl" in self.loss.needs:
            self.kl_sequences = kto.kl_sequences(self, self.total_steps * accum * self.env.world_size)
        optimizer = make_optimizer(model.parameters(), cfg)
        # What training changes and a checkpoint restores: model, optimizer, scheduler, step, KTO's reference KL
        self.state = checkpoint.TrainState(model, optimizer, make_scheduler(optimizer, cfg, self.total_steps))
        self.final_step = diagnostics.final_steps(self.total_steps)  # from here on, logit histograms are logged

    # The run's state lives in self.state (rpo.checkpoint.TrainState); these read it.
    @property
    def model(self) -> torch.nn.Module:
        return self.state.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.state.optimizer

    @property
    def step(self) -> int:
        return self.state.step

    def contrast_weights(self) -> dict | None:
        """The mean w_ii over the run's own contrast matrices (paired embedding-weighted losses): a
        matched-beta control's beta is this run's beta times it (rpo.diagnostics)."""
        if "embeddings" not in self.loss.needs or self.loss.batching != "paired":
            return None
        accum, world = self.cfg["gradient_accumulation_steps"], self.env.world_size
        steps = [step_micro_batches(self.plan, step, accum, world) for step in range(self.total_steps)]
        if self.cfg["contrast_scope"] == "global":  # one matrix spans every micro-batch of a step
            matrices = [[i for chosen, _ in batches for i in chosen] for batches in steps]
        else:
            matrices = [chosen for batches in steps for chosen, _ in batches]
        weights = diagnostics.mean_diagonal_weight(matrices, self.embeddings["rejected"], self.cfg["tau"])
        return {"mean_diagonal": weights,
                "n_matrices": len(matrices), "tau": self.cfg["tau"]}

    # -- one micro-batch -------------------------------------------------------------------------
    def examples(self, chosen_idx: list[int], rejected_idx: list[int]) -> list[dict]:
        seqs = self.sequences
        return [seqs["chosen"][i] for i in chosen_idx] + [seqs["rejected"][j] for j in rejected_idx]

    def score(self, examples: list[dict], model=None, with_values: bool = False):
        """The response log-probs of `examples` (packed or padded: training.packing) in the run's precision."""
        with self.precision.autocast(self.device):
            return score(model or self.model, examples, self.tokenizer.pad_token_id, packing=self.cfg["packing"],
                         with_values=with_values)

    def forward_logps(self, examples: list[dict], model=None):
        scores = self.score(examples, model)
        return scores.sums, scores.counts, scores.n_tokens

    def reference_logps(self, side: str, indices: list[int]) -> torch.Tensor:
        return self.ref[side][torch.tensor(indices, dtype=torch.long)]

    def contrast_loss(self, pc, pr, chosen_idx: list[int], rejected_idx: list[int], counts=None):
        """The configured loss over policy log-probs pc/pr of the records chosen_idx/rejected_idx."""
        needs, kw = self.loss.needs, {k: self.cfg[k] for k in self.loss.hyperparameters}
        if "lengths" in needs:
            kw.update(chosen_lengths=counts)
        if "embeddings" in needs:
            ci, ri = torch.tensor(chosen_idx, dtype=torch.long), torch.tensor(rejected_idx, dtype=torch.long)
            kw.update(chosen_prompt_embeddings=self.embeddings["chosen"][ci],
                      rejected_prompt_embeddings=self.embeddings["rejected"][ri])
        if "kl" in needs:  # this step's z0, over every micro-batch of all ranks (accumulate_gradients)
            kw.update(z0=self.z0)
        if "reference" not in needs:
            return self.loss(pc, pr, **kw)
        return self.loss(pc, pr, self.reference_logps("chosen", chosen_idx).to(pc),
                         self.reference_logps("rejected", rejected_idx).to(pr), **kw)

    def micro_batch_loss(self, chosen_idx: list[int], rejected_idx: list[int]):
        if "values" in self.loss.needs:  # ppo: per-token log-probs and values, not summed log-probs
            scores = self.score(self.examples(chosen_idx, rejected_idx), with_values=True)
            return ppo.micro_batch_loss(self.loss, scores, self.ref, chosen_idx, rejected_idx,
                                        {k: self.cfg[k] for k in self.loss.hyperparameters})
        logps, counts, n_tokens = self.forward_logps(self.examples(chosen_idx, rejected_idx))
        m = len(chosen_idx)
        pc, pr = logps[:m], logps[m:]
        return self.contrast_loss(pc, pr, chosen_idx, rejected_idx, counts=counts[:m]), pc, pr, n_tokens

    def check_loss(self, value: float) -> None:
        if not math.isfinite(value):
            raise TrainingDivergedError(f"{self.cfg['out']}: loss is {value} at step {self.step + 1}; lower lr "
                                        f"(now {self.cfg['lr']}) or check the data")

    # -- one optimizer step ----------------------------------------------------------------------
    def accumulate_gradients(self) -> dict:
        """Forward and backward of every micro-batch of this step (this rank's share); global metrics."""
        accum, paired = self.cfg["gradient_accumulation_steps"], self.loss.batching == "paired"
        if "kl" in self.loss.needs:
            self.z0 = kto.step_z0(self)
        stats: dict[str, list] = {}
        counts = collections.Counter()  # loss-logit counts (rpo.diagnostics): summed, not averaged
        at_end = self.step + 1 >= self.final_step
        n_tokens = 0
        if self.cfg["contrast_scope"] == "global":
            out, pc, pr, n_tokens = self.global_scope_backward()
            _accumulate(stats, out, pc, pr, paired=paired)
            if self.env.is_main:  # every rank holds the same global matrix: count it once
                counts.update(diagnostics.logit_metrics(out.logits, at_end))
        else:
            mine = local_micro_batches(self.plan, self.step, accum, self.env)
            for k, (chosen_idx, rejected_idx) in enumerate(mine):
                with gradient_sync(self.model, sync=k == len(mine) - 1):
                    out, pc, pr, tokens = self.micro_batch_loss(chosen_idx, rejected_idx)
                    (out.loss / accum).backward()
                n_tokens += tokens
                _accumulate(stats, out, pc, pr, paired=paired)
                counts.update(diagnostics.logit_metrics(out.logits, at_end))
        # Means over micro-batches of all ranks; a non-finite loss anywhere stops every rank here.
        sums = [x for k in METRIC_KEYS for x in (sum(stats.get(k, [])), len(stats.get(k, [])))]
        count_keys = diagnostics.logit_keys()
        totals = all_reduce_sum(sums + [counts.get(k, 0.0) for k in count_keys] + [n_tokens], self.env, self.device)
        row = {k: totals[2 * i] / totals[2 * i + 1] for i, k in enumerate(METRIC_KEYS) if totals[2 * i + 1]}
        self.check_loss(row["loss"])
        logged = dict(zip(count_keys, totals[len(sums):-1]))
        if logged["logits/n"]:  # a loss with logits; histogram bins only at the end of training
            row.update({k: int(v) for k, v in logged.items() if at_end or not k.startswith("logits/hist")})
        if self.z0 is not None:
            row["rewards/KL_estimate"] = self.z0  # the public code's name
        return {**row, "tokens": int(totals[-1])}

    def global_scope_backward(self):
        """Accumulate into .grad the gradient of ONE loss over every micro-batch of this step, all ranks.

        `contrast_scope: global`, at the memory of one micro-batch:
          (a) forward each local micro-batch without gradients (the last one with) -> summed log-probs;
          (b) all_gather the log-probs (record indices are known to all ranks from the plan);
          (c) evaluate the loss on leaf copies of the gathered log-probs; their .grad is d loss / d logp;
          (d) backpropagate sum(logp * coefficient) through the kept graph, then forward each other
              local micro-batch again with gradients and do the same.
        By the chain rule (d) yields the gradient of the global loss, for A - 1 extra forward passes (of
        A local micro-batches). Returns (loss output, gathered chosen and rejected log-probs, local tokens).
        """
        env, accum, model = self.env, self.cfg["gradient_accumulation_steps"], self.model
        everyone = step_micro_batches(self.plan, self.step, accum, env.world_size)
        ranks = [everyone[r * accum:(r + 1) * accum] for r in range(env.world_size)]
        mine, last = ranks[env.rank], accum - 1
        chosen_sizes = [sum(len(c) for c, _ in batches) for batches in ranks]
        rejected_sizes = [sum(len(r) for _, r in batches) for batches in ranks]
        # Gradients are reduced across ranks in the last backward of (d): the kept graph's only when alone.
        kept_syncs = last == 0

        # (a) log-probs of every local sequence; only the last micro-batch keeps a graph
        local_c, local_r, n_tokens = [], [], 0
        for k, (c_idx, r_idx) in enumerate(mine):
            if k == last:
                with gradient_sync(model, sync=kept_syncs):  # DDP decides at forward time whether to sync
                    kept, _, n_tokens = self.forward_logps(self.examples(c_idx, r_idx), model)
                logps = kept.detach()
            else:
                with torch.no_grad():
                    logps = self.forward_logps(self.examples(c_idx, r_idx), unwrap(model))[0]
            local_c.append(logps[:len(c_idx)])
            local_r.append(logps[len(c_idx):])
        # (b) the whole global batch on every rank
        pc = gather_varlen(torch.cat(local_c), chosen_sizes, env)
        pr = gather_varlen(torch.cat(local_r), rejected_sizes, env)
        # (c) d loss / d logp on leaves; every rank computes the same loss, so all raise together
        pc_leaf, pr_leaf = pc.detach().requires_grad_(True), pr.detach().requires_grad_(True)
        out = self.contrast_loss(pc_leaf, pr_leaf, [i for c, _ in everyone for i in c],
                                 [j for _, r in everyone for j in r])
        self.check_loss(out.loss.item())
        coef_c, coef_r = torch.autograd.grad(out.loss, (pc_leaf, pr_leaf), allow_unused=True, materialize_grads=True)
        # DDP and FSDP average gradients over ranks; the global loss wants their sum.
        coef_c, coef_r = coef_c * env.world_size, coef_r * env.world_size
        starts_c = list(itertools.accumulate((len(c) for c, _ in mine), initial=sum(chosen_sizes[:env.rank])))
        starts_r = list(itertools.accumulate((len(r) for _, r in mine), initial=sum(rejected_sizes[:env.rank])))

        def coefficients(k):
            return torch.cat([coef_c[starts_c[k]:starts_c[k + 1]], coef_r[starts_r[k]:starts_r[k + 1]]])

        # (d) backward of sum(logp * coefficient): the kept graph, then one re-forward at a time
        with gradient_sync(model, sync=kept_syncs):
            (kept * coefficients(last).to(kept.dtype)).sum().backward()
        del kept
        for k, (c_idx, r_idx) in enumerate(mine[:last]):
            with gradient_sync(model, sync=k == last - 1):
                logps, _, tokens = self.forward_logps(self.examples(c_idx, r_idx), model)
                (logps * coefficients(k).to(logps.dtype)).sum().backward()
            n_tokens += tokens
        return out, pc, pr, n_tokens

    def apply_gradients(self) -> dict:
        """Clip, optimizer and scheduler step; the gradient norms before clipping: `grad_norm`, and under
        ppo `grad_norm/v_head` (the value head is clipped on its own, rpo.ppo)."""
        state = self.state
        policy, head = ppo.parameter_groups(unwrap(state.model))
        norms = {"grad_norm": torch.nn.utils.clip_grad_norm_(policy, self.cfg["max_grad_norm"])}
        if head:
            norms["grad_norm/v_head"] = torch.nn.utils.clip_grad_norm_(head, self.cfg["v_head_max_grad_norm"])
        state.optimizer.step()
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        return {key: float(as_local_tensor(norm)) for key, norm in norms.items()}

    def train_step(self) -> dict:
        started = time.perf_counter()
        lr = current_lr(self.optimizer)  # the lr this step applies (get_last_lr() after it is the next step's)
        row = self.accumulate_gradients()
        norms = self.apply_gradients()
        tokens_per_s = row.pop("tokens") / (time.perf_counter() - started)
        return {"step": self.step, **row, "lr": lr, **norms, "tokens_per_s": tokens_per_s}

    # -- checkpoints (formats, atomicity and the resume checks: rpo.checkpoint) ------------------
    def save_checkpoint(self) -> None:
        checkpoint.save(self.state, self.cfg, self.env, self.device)

    def maybe_resume(self) -> bool:
        return checkpoint.resume(self.state, self.cfg, self.env)

    # -- the run ---------------------------------------------------------------------------------
    def fit(self) -> Path | None:
        cfg = self.cfg
        resumed = self.maybe_resume()
        if "kl" in self.loss.needs:
            kto.prepare_reference(self, resumed)
        self.model.train()
        metrics_path = Path(cfg["checkpoint_dir"]) / "metrics.jsonl"
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        steps_here = 0
        cadence = checkpoint.Cadence(cfg["save_every"], cfg["save_every_minutes"], self.env, self.device)
        with open(metrics_path if self.env.is_main else os.devnull, "a", encoding="utf-8") as metrics, \
                Trackers(cfg, self.step, self.env.is_main) as trackers, \
                tqdm(total=self.total_steps, initial=self.step, desc=f"{cfg['method']} {Path(cfg['out']).name}",
                     disable=None if self.env.is_main else True) as bar:
            while self.step < self.total_steps:
                row = self.train_step()
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                trackers.log(row)  # the live view (report_to); metrics.jsonl above stays the record
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                steps_here += 1
                if cadence.due(self.step) and self.step < self.total_steps:
                    self.save_checkpoint()
                if cfg["stop_after_steps"] and steps_here >= cfg["stop_after_steps"] and self.step < self.total_steps:
                    self.save_checkpoint()
                    return None
        self.save_final(metrics_path, resumed)
        return Path(cfg["out"])

    def save_final(self, metrics_path: Path, resumed: bool) -> None:
        # FSDP: the gathered full weights, not this rank's shards (None: the model's own state)
        model_state = full_state_dicts(self.model)[0] if self.cfg["fsdp"] else None
        model_state = ppo.without_value_head(unwrap(self.model), model_state)  # it is training machinery
        if self.env.is_main:
            cfg, world = self.cfg, self.env.world_size
            with atomic_path(cfg["out"]) as tmp:
                unwrap(self.model).save_pretrained(tmp, state_dict=model_state)
                self.tokenizer.save_pretrained(tmp)
                shutil.copy(metrics_path, tmp / "metrics.jsonl")
                run = {k: v for k, v in cfg.items() if k not in ("stop_after_steps",)}
                write_json(tmp / "run.json", {
                    **run, "truncation": self.truncation, "steps": self.step, "resumed": resumed,
                    "n_records": len(self.records), "world_size": world, "contrast_weights": self.contrast_weights(),
                    "global_batch_size": cfg["batch_size"] * cfg["gradient_accumulation_steps"] * world})
            shutil.rmtree(cfg["checkpoint_dir"], ignore_errors=True)
        barrier(self.env)


def _accumulate(stats: dict, out, pc, pr, paired: bool) -> None:
    for key, value in {"loss": out.loss.detach(), "logps/chosen": pc.detach().mean(), **(out.metrics or {})}.items():
        stats.setdefault(key, []).append(float(value))
    if out.chosen_rewards.numel() == 0 and out.rejected_rewards.numel() == 0:
        return  # sft: no rewards
    cr, rr = out.chosen_rewards.float(), out.rejected_rewards.float()
    if pr.numel():
        stats.setdefault("logps/rejected", []).append(pr.detach().mean().item())
    if cr.numel() and rr.numel():
        stats.setdefault("rewards/chosen", []).append(cr.mean().item())
        stats.setdefault("rewards/rejected", []).append(rr.mean().item())
        # Paired: margin and accuracy of each pair. Unpaired: over all chosen x rejected contrasts.
        diff = cr - rr if paired else (cr[:, None] - rr[None, :]).flatten()
        stats.setdefault("rewards/margins", []).append(diff.mean().item())
        stats.setdefault("rewards/accuracies", []).append((diff > 0).float().mean().item())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train SFT or a preference loss (rpo.train)")
    parser.add_argument("--config", help="YAML mapping of training keys")
    parser.add_argument("overrides", nargs="*", help="key=value pairs that override the config file")
    args = parser.parse_args(argv)
    trainer = Trainer(resolve_config(load_config(args.config, args.overrides)))
    try:
        trainer.fit()
    finally:
        shutdown_distributed(trainer.env)


if __name__ == "__main__":
    import sys

    from rpo.errors import run_cli

    sys.exit(run_cli(main))
