"""The training loop: config -> data -> model -> DeepSpeed engine -> steps, metrics, evaluation.

Every rank runs the same code. User errors (bad config, missing data, wrong tokenizer) are found
before any compute and raised as one-line :class:`~ptbr.errors.PtbrError`.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ptbr.checkpoint import optim_state
from ptbr.dist import DistEnv
from ptbr.errors import DataError, PtbrError
from ptbr.model import RWKV6
from ptbr.train.config import TrainConfig
from ptbr.train.ds_config import build_ds_config
from ptbr.train.loss import lm_loss
from ptbr.train.metrics import MetricsLogger, device_peak_tflops, format_eta, info, memory_gib
from ptbr.train.optim import WarmupCosine, build_optimizer


class NonFiniteError(PtbrError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""

    exit_code = 3


@dataclass
class Progress:
    """What the run has done so far; saved in checkpoints and restored on resume."""

    step: int = 0  # optimizer steps taken (applied or skipped)
    samples: int = 0  # global training samples consumed
    tokens: int = 0  # global training tokens consumed
    skipped_steps: int = 0
    nonfinite_in_row: int = 0
    epoch: int = 0  # streaming epoch being read
    epoch_samples: int = 0  # global samples consumed in that epoch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_dataset(cfg: TrainConfig, manifest: dict[str, Any]) -> None:
    """Refuse data that cannot work with this model before anything expensive happens."""
    vocab = int(manifest["vocab_size"])
    if vocab > cfg.model.vocab_size:
        raise DataError(f"the shards were tokenized with a {vocab}-token vocabulary but model.vocab_size is "
                        f"{cfg.model.vocab_size}; use a model with vocab_size >= {vocab} or rebuild the shards")
    if int(manifest["seq_len"]) != cfg.data.seq_len:
        raise DataError(f"the shards at {cfg.data.source} hold sequences of {manifest['seq_len']} tokens but "
                        f"data.seq_len is {cfg.data.seq_len}; set data.seq_len={manifest['seq_len']} or rebuild")


class Trainer:
    def __init__(self, cfg: TrainConfig, env: DistEnv, resume: str = "auto", allow_fresh_start: bool = False,
                 allow_config_change: bool = False):
        self.cfg, self.env = cfg, env
        self.resume_mode, self.allow_fresh_start, self.allow_config_change = (
            resume, allow_fresh_start, allow_config_change)
        self.run_dir = Path(cfg.train.run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.resumed_data_state: dict[str, Any] | None = None
        self.last_saved_step = -1  # set by checkpointing.save / load
        self.last_eval_step = -1
        self.device = torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
        self.accum, self.global_batch = cfg.batch.resolve(env.world_size)
        self.progress = Progress()
        self.metrics = MetricsLogger(self.run_dir, env.is_main, cfg.train.tensorboard)
        self.peak_tflops = cfg.train.peak_tflops or device_peak_tflops()
        self.flops_per_token = cfg.model.flops_per_token()

    # ------------------------------------------------------------------ set-up
    def setup_data(self) -> None:
        from ptbr.data import build_dataset, prepare_streaming_env, read_manifest

        cfg = self.cfg
        self.manifest = read_manifest(cfg.data.source)
        check_dataset(cfg, self.manifest)
        prepare_streaming_env()
        common = dict(cache_root=os.path.expanduser(cfg.data.cache_dir), batch_size=cfg.batch.micro_batch_size,
                      num_canonical_nodes=cfg.data.num_canonical_nodes)
        extra = {"predownload": cfg.data.predownload} if cfg.data.predownload else {}
        self.train_ds = build_dataset(cfg.data.source, cfg.data.train_split, shuffle=cfg.data.shuffle,
                                      seed=cfg.train.seed, shuffle_algo=cfg.data.shuffle_algo, **common, **extra)
        self.val_ds = build_dataset(cfg.data.source, cfg.data.val_split, shuffle=False, seed=cfg.train.seed,
                                    **common)

    def make_loader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            self.train_ds, batch_size=self.cfg.batch.micro_batch_size, num_workers=self.cfg.data.num_workers,
            pin_memory=self.device.type == "cuda", drop_last=True,
            persistent_workers=self.cfg.data.num_workers > 0)

    def setup_model(self, load_universal: bool = False) -> None:
        import deepspeed

        cfg = self.cfg
        seed_everything(cfg.train.seed)  # identical initial weights on every rank
        model = RWKV6(cfg.model)
        model.set_wkv_backend(cfg.train.wkv_backend)
        model.gradient_checkpointing = cfg.train.grad_checkpointing
        optimizer = build_optimizer(model, cfg.optim)
        ds_config = build_ds_config(cfg, self.env.world_size, self.device.type == "cuda")
        if load_universal:  # elastic resume: optimizer state re-partitioned for this world size
            ds_config.setdefault("checkpoint", {})["load_universal"] = True
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, config=ds_config,
            lr_scheduler=lambda opt: WarmupCosine(opt, cfg.optim, cfg.train.max_steps))
        self.initial_hparams = optim_state.group_hparams(self.engine)  # as the config defines the groups
        seed_everything(cfg.train.seed + 1000 + self.env.rank)

    def data_state(self) -> dict[str, Any]:
        """Streaming's resume state at this optimizer-step boundary (global samples, any world size)."""
        ds, resumed = self.train_ds, self.resumed_data_state or {}
        # After a resume the stream keeps the first run's layout (streaming takes it from the loaded
        # state, inside the process that iterates), whatever this run's defaults would be.
        return {"epoch": self.progress.epoch, "sample_in_epoch": self.progress.epoch_samples,
                "num_canonical_nodes": resumed.get("num_canonical_nodes") or ds.num_canonical_nodes,
                "shuffle_seed": resumed.get("shuffle_seed", ds.shuffle_seed),
                "initial_physical_nodes": resumed.get("initial_physical_nodes", self.env.num_nodes)}

    # ------------------------------------------------------------------ steps
    def forward_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["input"].to(self.device, non_blocking=True)
        y = batch["target"].to(self.device, non_blocking=True)
        return lm_loss(self.engine(x), y, l2wrap=self.cfg.optim.l2wrap)

    def train_step(self, next_batch) -> tuple[float, float, bool]:
        """One optimizer step (``accum`` micro-batches). Returns (mean local loss, data wait s, applied)."""
        losses, wait = [], 0.0
        inject = self.progress.step in self.cfg.debug.nonfinite_loss_at_steps
        for _ in range(self.accum):
            t0 = time.perf_counter()
            batch = next_batch()
            wait += time.perf_counter() - t0
            loss = self.forward_loss(batch)
            if inject and self.env.is_main:
                loss = loss * float("nan")  # fault injection for the guard tests
            # A non-finite loss makes the gradients non-finite on every rank after the all-reduce;
            # DeepSpeed then discards the update (was_step_applied() is False).
            self.engine.backward(loss)
            self.engine.step()
            losses.append(loss.detach().float())
        applied = bool(self.engine.was_step_applied())
        return float(torch.stack(losses).mean()), wait, applied

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean token NLL over the first ``eval_samples`` validation sequences. Every rank runs the same
        number of equally sized batches (ZeRO-3 gathers parameters collectively); padding slots carry
        weight 0, so the result does not depend on the world size."""
        n = min(self.cfg.train.eval_samples, len(self.val_ds))
        world, rank, mb = self.env.world_size, self.env.rank, self.cfg.batch.micro_batch_size
        per_rank = -(-n // world)
        mine = [rank + world * j for j in range(per_rank)]
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        self.engine.eval()
        for start in range(0, per_rank, mb):
            idx = mine[start:start + mb]
            idx += [idx[-1]] * (mb - len(idx))  # keep every batch the same size
            items = [self.val_ds[i if i < n else 0] for i in idx]
            x = torch.stack([torch.as_tensor(it["input"]) for it in items]).to(self.device)
            y = torch.stack([torch.as_tensor(it["target"]) for it in items]).to(self.device)
            logits = self.engine(x).float()
            nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            nll = nll.view(len(idx), -1).double().sum(-1)
            weight = torch.tensor([1.0 if i < n else 0.0 for i in idx], dtype=torch.float64, device=self.device)
            # the same index may appear twice only as padding; real indices are unique across ranks
            total += torch.stack([(nll * weight).sum(), weight.sum() * y.shape[1]])
        self.engine.train()
        dist.all_reduce(total)
        loss = float(total[0] / total[1])
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": int(total[1])}

    # ------------------------------------------------------------------ loop
    def run(self) -> int:
        from ptbr.train import checkpointing
        from ptbr.train.preempt import PREEMPTED_EXIT_CODE, StopRequest

        cfg, env = self.cfg, self.env
        stop = StopRequest()
        self.setup_data()
        plan = checkpointing.plan_resume(self, self.resume_mode, self.allow_fresh_start, self.allow_config_change)
        self.setup_model(load_universal=bool(plan and plan.elastic))
        if plan:
            checkpointing.load(self, plan)
            self.train_ds.load_state_dict(self.resumed_data_state)  # before the first __iter__
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(cfg.to_yaml_dict(), indent=2) + "\n")
            info(f"world {env.world_size} ({env.launcher}), micro-batch {cfg.batch.micro_batch_size}, "
                 f"grad accum {self.accum}, global batch {self.global_batch} x {cfg.data.seq_len} tokens, "
                 f"ZeRO {cfg.zero.stage}, {cfg.precision}, {cfg.model.num_parameters():,} parameters")
        if plan and plan.elastic:
            checkpointing.save(self)  # from now on a native checkpoint at this world size
        loader = self.make_loader()
        iterator = iter(loader)
        samples_log = self.open_sample_log()
        launch_id = checkpointing.broadcast(time.time_ns())  # tells re-done steps apart after a resume
        micro_global = cfg.batch.micro_batch_size * env.world_size

        def next_batch() -> dict[str, torch.Tensor]:
            nonlocal iterator
            try:
                batch = next(iterator)
            except StopIteration:  # end of epoch: streaming starts the next one on a new iterator
                self.progress.epoch += 1
                self.progress.epoch_samples = 0
                iterator = iter(loader)
                batch = next(iterator)
            self.progress.epoch_samples += micro_global
            if samples_log:
                samples_log.write(json.dumps({"launch": launch_id, "step": self.progress.step,
                                              "ids": [int(i) for i in batch["sample_id"]]}) + "\n")
            return batch

        tokens_per_step = self.global_batch * cfg.data.seq_len
        window = _new_window()
        while self.progress.step < cfg.train.max_steps:
            loss, wait, applied = self.train_step(next_batch)
            p = self.progress
            p.step += 1
            p.samples += self.global_batch
            p.tokens += tokens_per_step
            if applied:
                p.nonfinite_in_row = 0
                if math.isfinite(loss):
                    window["loss"] += loss
                    window["n"] += 1
            else:
                p.skipped_steps += 1
                p.nonfinite_in_row += 1
                if env.is_main:
                    info(f"step {p.step}: non-finite loss or gradient, update skipped "
                         f"({p.nonfinite_in_row} in a row, {p.skipped_steps} in total)")
                if p.nonfinite_in_row >= cfg.train.max_nonfinite_in_row:
                    raise NonFiniteError(self.nonfinite_message())
            window["steps"] += 1
            window["wait"] += wait
            if p.step % cfg.train.log_every == 0 or p.step == cfg.train.max_steps:
                self.log_window(window)
                window = _new_window()
            if stop.agreed(self.device):
                checkpointing.save(self)
                if env.is_main:
                    info(f"preempted: checkpoint of step {p.step} committed, exiting with {PREEMPTED_EXIT_CODE}")
                self.metrics.close()
                return PREEMPTED_EXIT_CODE
            if cfg.train.eval_every and p.step % cfg.train.eval_every == 0 and p.step < cfg.train.max_steps:
                self.log_eval()
            if cfg.train.checkpoint_every and p.step % cfg.train.checkpoint_every == 0:
                checkpointing.save(self)
        if self.last_eval_step != self.progress.step:
            self.log_eval()
        if self.last_saved_step != self.progress.step:
            checkpointing.save(self)
        self.metrics.close()
        stop.restore()
        return 0

    def open_sample_log(self):
        """Per-rank record of the sample ids each step read (debug.record_samples), for the data tests."""
        if not self.cfg.debug.record_samples:
            return None
        d = self.run_dir / "samples"
        d.mkdir(parents=True, exist_ok=True)
        return open(d / f"rank_{self.env.rank:05d}.jsonl", "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def nonfinite_message(self) -> str:
        from ptbr.checkpoint.store import newest_usable

        streak_start = self.progress.step - self.progress.nonfinite_in_row
        good = newest_usable(self.ckpt_root, lambda _msg: None, max_step=streak_start)
        where = (f"the last good checkpoint is {good.path}; resume from it with --resume {good.path}"
                 if good else "no checkpoint was written before the first of them")
        return (f"stopping: {self.progress.nonfinite_in_row} optimizer steps in a row had a non-finite loss or "
                f"gradient (train.max_nonfinite_in_row={self.cfg.train.max_nonfinite_in_row}); {where}, "
                "after lowering optim.lr or checking the data")

    def log_window(self, w: dict[str, Any]) -> None:
        cfg, env, p = self.cfg, self.env, self.progress
        stats = torch.tensor([w["loss"], w["n"], w["wait"]], dtype=torch.float64, device=self.device)
        dist.all_reduce(stats)
        elapsed = max(time.perf_counter() - w["t0"], 1e-9)
        loss = float(stats[0] / stats[1]) if stats[1] > 0 else float("nan")
        tokens = w["steps"] * self.global_batch * cfg.data.seq_len
        tps = tokens / elapsed
        step_time = elapsed / w["steps"]
        record = {
            "kind": "train", "step": p.step, "tokens": p.tokens, "loss": loss,
            "lr": float(self.engine.get_lr()[0]), "grad_norm": _as_float(self.engine.get_global_grad_norm()),
            "tokens_per_s": tps, "tokens_per_s_per_device": tps / env.world_size,
            "step_time_s": step_time, "data_wait_share": float(stats[2]) / env.world_size / elapsed,
            "memory_gib": memory_gib(), "skipped_steps": p.skipped_steps,
            "eta_s": step_time * (cfg.train.max_steps - p.step),
        }
        if self.peak_tflops:
            record["mfu"] = self.flops_per_token * tps / (self.peak_tflops * 1e12 * env.world_size)
        mfu = f" mfu {record['mfu'] * 100:.1f}%" if "mfu" in record else ""
        line = (f"step {p.step}/{cfg.train.max_steps} loss {loss:.4f} lr {record['lr']:.2e} "
                f"gnorm {record['grad_norm']:.3f} tok/s {tps:,.0f} ({tps / env.world_size:,.0f}/dev){mfu} "
                f"data {record['data_wait_share'] * 100:.0f}% mem {record['memory_gib']:.2f}GiB "
                f"eta {format_eta(record['eta_s'])}")
        self.metrics.log(record, line)

    def log_eval(self) -> None:
        result = self.evaluate()
        self.last_eval_step = self.progress.step
        record = {"kind": "eval", "step": self.progress.step, "tokens": self.progress.tokens, **result}
        self.metrics.log(record, f"eval step {self.progress.step}: val_loss {result['val_loss']:.4f} "
                                 f"ppl {result['val_ppl']:.2f} ({result['val_tokens']:,} tokens)")


def _new_window() -> dict[str, Any]:
    """Accumulators for one logging interval: start time, steps, summed finite loss, data wait."""
    return {"t0": time.perf_counter(), "steps": 0, "loss": 0.0, "wait": 0.0, "n": 0}


def _as_float(x: Any) -> float:
    if x is None:
        return float("nan")
    return float(x.item() if isinstance(x, torch.Tensor) else x)
