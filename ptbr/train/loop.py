"""The training loop: config -> data -> model -> DeepSpeed engine -> steps, metrics, evaluation.

Every rank runs the same code. User errors (bad config, missing data, wrong tokenizer, unwritable
directories) are found before any compute and raised as one-line :class:`~ptbr.errors.PtbrError`.
At every step boundary the ranks agree on stopping (a preemption signal, a data source that failed
for good) so that all of them save the same checkpoint and leave with the same exit code.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as tdist

from ptbr import dist
from ptbr.checkpoint import Checkpointer, Progress, RunState, fingerprint, optim_state
from ptbr.checkpoint.layout import disk_still_needed
from ptbr.data.faults import retry_bound_s
from ptbr.data.stream import check_canonical_nodes, default_num_canonical_nodes
from ptbr.dist import DistEnv
from ptbr.errors import (
    EXIT_PREEMPTED,
    ConfigError,
    CorruptDataError,
    DataError,
    DataSourceError,
    NonFiniteError,
    PtbrError,
)
from ptbr.fsutil import writable_problem
from ptbr.log import info
from ptbr.model import RWKV6, count_parameters
from ptbr.train.batches import BatchStream, loader_worker_init
from ptbr.train.bench import TrainingBench
from ptbr.train.config import TrainConfig
from ptbr.train.ds_config import build_ds_config
from ptbr.train.evaluation import Evaluator
from ptbr.train.metrics import LogWindow, MetricsLogger, as_float, device_peak_tflops, memory_gib, train_line
from ptbr.train.node_counts import NodePlan
from ptbr.train.optim import WarmupCosine, build_optimizer
from ptbr.train.preempt import StopRequest, agree
from ptbr.train.run_files import write_run_files

_FAULTS = {CorruptDataError.exit_code: CorruptDataError, DataSourceError.exit_code: DataSourceError}


StepOutcome = Literal["applied", "loss_scale", "nonfinite"]


def step_outcome(applied: bool, loss_finite: bool, scale: float | None, min_scale: float) -> StepOutcome:
    """What became of an optimizer step's update.

    Under fp16's dynamic loss scale DeepSpeed skips a step whose scaled gradients overflowed and halves the
    scale; at the start of a run that happens several times in a row while the scale comes down from its
    initial 2^16: the scaler at work, not divergence. Only a skip with a non-finite loss (on any rank), or an
    overflow at the smallest allowed scale, is a non-finite step for ``train.max_nonfinite_in_row``."""
    if applied:
        return "applied"
    if scale is not None and loss_finite and scale > min_scale:
        return "loss_scale"
    return "nonfinite"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_dataset(cfg: TrainConfig, manifest: dict[str, Any]) -> None:
    """Refuse data that cannot work with this model before anything expensive happens."""
    vocab = int(manifest["vocab_size"])
    if vocab > cfg.model.vocab_size:
        raise DataError(
            f"the shards were tokenized with a {vocab}-token vocabulary but model.vocab_size is "
            f"{cfg.model.vocab_size}; use a model with vocab_size >= {vocab} or rebuild the shards"
        )
    if int(manifest["seq_len"]) != cfg.data.seq_len:
        raise DataError(
            f"the shards at {cfg.data.source} hold sequences of {manifest['seq_len']} tokens but "
            f"data.seq_len is {cfg.data.seq_len}; set data.seq_len={manifest['seq_len']} or rebuild"
        )
    eos = manifest.get("eos_id")
    if cfg.model.reset_state_at_eos and cfg.model.eos_id is not None and eos is not None and cfg.model.eos_id != eos:
        raise DataError(
            f"model.eos_id is {cfg.model.eos_id} but the shards at {cfg.data.source} end documents "
            f"with token {eos}; remove model.eos_id (it is read from the dataset) or set it to {eos}"
        )


def with_dataset_eos(cfg: TrainConfig, manifest: dict[str, Any]) -> TrainConfig:
    """reset_state_at_eos needs the end-of-document id: the dataset's, unless the config names it."""
    if not cfg.model.reset_state_at_eos or cfg.model.eos_id is not None:
        return cfg
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"eos_id": int(manifest["eos_id"])})})


class Trainer:
    """One rank's training run: data, model and engine, the step loop, and how the run ends.

    ``run`` sets up (data and validation samples through :class:`~ptbr.train.evaluation.Evaluator`, the resume
    plan and engine through :class:`~ptbr.checkpoint.Checkpointer`), then loops: fetch a step's batches
    (:class:`~ptbr.train.batches.BatchStream`), agree with every rank on stopping (a signal, a data fault),
    train, count (the non-finite guard), and log, evaluate or save when due. It returns the exit code every
    rank agreed on (``ptbr.errors.EXIT_CODES``) or raises a one-line :class:`~ptbr.errors.PtbrError`.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        env: DistEnv,
        resume: str = "auto",
        allow_fresh_start: bool = False,
        allow_config_change: bool = False,
        stop: StopRequest | None = None,
    ):
        self.cfg, self.env = cfg, env
        self.stop = stop or StopRequest()
        self.stream: BatchStream | None = None
        self.resume_mode, self.allow_fresh_start, self.allow_config_change = (
            resume,
            allow_fresh_start,
            allow_config_change,
        )
        self.run_dir = Path(cfg.train.run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.resumed_data_state: dict[str, Any] | None = None
        self.last_eval_step = -1
        self.last_bench_step = -1
        self.bench_clock = time.perf_counter()  # training time since the last benchmark (its overhead's base)
        self.device = torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
        self.accum, self.global_batch = cfg.batch.resolve(env.world_size)
        self.progress = Progress()
        self.peak_tflops = cfg.train.peak_tflops or device_peak_tflops()
        self.flops_per_token = cfg.model.flops_per_token()
        # One rank may retry a download while the others wait at the step boundary: that wait may last
        # the whole retry window, longer than a training collective should ever take.
        self.control = dist.control_group(
            cfg.train.collective_timeout_s + retry_bound_s(cfg.data.download_retry_s, cfg.data.download_timeout_s)
        )
        self.check_writable()
        self.metrics = MetricsLogger(self.run_dir, env.is_main, cfg.train.tensorboard, self.open_trackers())
        self.bench = TrainingBench(cfg, env.is_main, self.control, self.device) if cfg.train.bench_every else None
        weight_bytes = 4 if cfg.precision == "fp32" else 2
        self.checkpointer = Checkpointer(
            self.ckpt_root,
            env,
            keep=cfg.train.keep_checkpoints,
            device=self.device,
            zero_stage=cfg.zero.stage,
            precision=cfg.precision,
            model_bytes=count_parameters(cfg.model) * (weight_bytes + 12),
            pause_before_commit_s=cfg.debug.pause_before_commit_s,
            pause_at_steps=cfg.debug.pause_at_steps,
        )

    # ------------------------------------------------------------------ set-up
    def check_writable(self) -> None:
        """Collective: the run and cache directories must take files on every rank, before any work."""
        cfg = self.cfg
        mine = [
            f"{key}={path} cannot be written ({why}); point it at a writable directory"
            for key, path in (("train.run_dir", cfg.train.run_dir), ("data.cache_dir", cfg.data.cache_path()))
            if (why := writable_problem(path))
        ]
        problems = [p for rank_problems in dist.gather(mine, self.control) for p in rank_problems]
        if problems:
            raise ConfigError(problems[0])

    def open_trackers(self) -> list:
        """Collective: rank 0's W&B run (train.wandb); a failure to start it stops every rank with its line."""
        settings, tracker, problem = self.cfg.train.wandb, [], None
        if settings.mode != "disabled" and self.env.is_main:
            from ptbr.train.tracking import WandbTracker

            try:
                tracker = [WandbTracker(settings, self.run_dir, self.cfg.to_yaml_dict())]
            except ConfigError as exc:
                problem = str(exc)
            except Exception as exc:  # noqa: BLE001 - W&B's own errors (login, network): one line for the user
                problem = f"train.wandb: W&B could not start ({type(exc).__name__}: {exc})"
        problems = [p for p in dist.gather(problem, self.control) if p]
        if problems:
            raise ConfigError(problems[0])
        return tracker

    def setup_data(self) -> None:
        """Collective: the training stream (one source or the weighted mixture) and the validation samples of
        every source, after checking that the data suits the model."""
        from ptbr.data import build_dataset, prepare_streaming_env
        from ptbr.data.mixture import read_mixture

        cfg = self.cfg
        specs = cfg.data.mixture()
        self.manifest = read_mixture(specs)
        check_dataset(cfg, self.manifest)
        self.cfg = cfg = with_dataset_eos(cfg, self.manifest)
        prepare_streaming_env()
        common = dict(
            cache_root=cfg.data.cache_path(),
            batch_size=cfg.batch.micro_batch_size,
            num_canonical_nodes=cfg.data.num_canonical_nodes,
            download_retry_s=cfg.data.download_retry_s,
            download_timeout_s=cfg.data.download_timeout_s,
        )
        extra = {"predownload": cfg.data.predownload} if cfg.data.predownload else {}
        self.train_ds = build_dataset(
            specs,
            cfg.data.train_split,
            manifest=self.manifest,
            shuffle=cfg.data.shuffle,
            seed=cfg.train.seed,
            shuffle_algo=cfg.data.shuffle_algo,
            **common,
            **extra,
        )
        # validation per source (a mixture reports each source's loss and the pooled one)
        self.evaluator = Evaluator(
            self.env, self.device, cfg.batch.micro_batch_size, cfg.train.eval_samples, cfg.train.segment_len, self.agree
        )
        for spec in specs:
            val_ds = build_dataset(spec.source, cfg.data.val_split, shuffle=False, seed=cfg.train.seed, **common)
            self.evaluator.add_source(spec.label(), val_ds, spec.source)

    def make_loader(self) -> torch.utils.data.DataLoader:
        workers = self.cfg.data.num_workers
        return torch.utils.data.DataLoader(
            self.train_ds,
            batch_size=self.cfg.batch.micro_batch_size,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=workers > 0,
            worker_init_fn=loader_worker_init if workers > 0 else None,
        )

    def setup_model(self, load_universal: bool = False, fresh: bool = False) -> None:
        import deepspeed

        cfg = self.cfg
        seed_everything(cfg.train.seed)  # identical initial weights on every rank
        model = RWKV6(cfg.model)
        if fresh and cfg.train.init_from:  # e.g. a long-context stage continuing a shorter run's weights
            from ptbr.model.weights import load_weights_into

            load_weights_into(model, cfg.train.init_from)
            info(f"initial weights from {cfg.train.init_from}")
        model.set_wkv_backend(cfg.train.wkv_backend)
        model.gradient_checkpointing = cfg.train.grad_checkpointing
        model.checkpoint_reentrant = cfg.zero.stage == 3
        optimizer = build_optimizer(model, cfg.optim, self.device, offload=cfg.zero.offload_optimizer)
        ds_config = build_ds_config(cfg, self.accum, self.global_batch, self.device.type == "cuda")
        self.min_loss_scale = float(ds_config["fp16"].get("min_loss_scale", 1))
        if load_universal:  # elastic resume: optimizer state re-partitioned for this world size
            ds_config.setdefault("checkpoint", {})["load_universal"] = True
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            config=ds_config,
            lr_scheduler=lambda opt: WarmupCosine(opt, cfg.optim, cfg.train.max_steps),
        )
        self.initial_hparams = optim_state.group_hparams(self.engine)  # as the config defines the groups
        seed_everything(cfg.train.seed + 1000 + self.env.rank)

    def data_state(self) -> dict[str, Any]:
        """Streaming's resume state at this optimizer-step boundary (global samples, any world size)."""
        ds, resumed = self.train_ds, self.resumed_data_state or {}
        # After a resume the stream keeps the first run's layout (streaming takes it from the loaded
        # state, inside the process that iterates), whatever this run's defaults would be.
        return {
            "epoch": self.progress.epoch,
            "sample_in_epoch": self.progress.epoch_samples,
            "num_canonical_nodes": resumed.get("num_canonical_nodes") or ds.num_canonical_nodes,
            "shuffle_seed": resumed.get("shuffle_seed", ds.shuffle_seed),
            "initial_physical_nodes": resumed.get("initial_physical_nodes", self.env.num_nodes),
        }

    def run_state(self) -> RunState:
        # the model config and the data identity travel with the checkpoint (ptbr export reads them)
        extra = {
            "model": self.cfg.model.model_dump(),
            "dataset_hash": self.manifest["dataset_hash"],
            "tokenizer_sha256": self.manifest.get("tokenizer", {}).get("sha256"),
        }
        return RunState(
            self.progress,
            self.data_state(),
            self.fingerprint(),
            self.global_batch,
            self.cfg.batch.micro_batch_size,
            self.accum,
            extra,
        )

    def fingerprint(self) -> dict[str, str]:
        return fingerprint(self.cfg.model.shape(), self.cfg.data.seq_len, self.manifest)

    def save(self) -> Path:
        return self.checkpointer.save(self.run_state())

    def resume(self) -> bool:
        """Collective: pick the checkpoint to continue from, build the engine, load it. False: a fresh run."""
        plan = self.checkpointer.plan(
            self.resume_mode,
            fingerprint=self.fingerprint(),
            global_batch_size=self.global_batch,
            allow_fresh_start=self.allow_fresh_start,
            allow_config_change=self.allow_config_change,
        )
        # the stream keeps the canonical node count of the run's start: this node count must work with it
        data = dict(plan.record["data"]) if plan else {}
        if plan and not data.get("num_canonical_nodes"):  # written by a version that left it unresolved
            data["num_canonical_nodes"] = default_num_canonical_nodes(
                self.cfg.data.shuffle_algo, int(data.get("initial_physical_nodes") or plan.record["world_size"])
            )
        ncn = int(data.get("num_canonical_nodes") or self.train_ds.num_canonical_nodes)
        NodePlan(
            ncn, self.cfg.batch.global_batch_size, self.cfg.batch.micro_batch_size, self.env.local_world_size
        ).check(self.env.num_nodes)
        check_canonical_nodes(ncn, self.env.num_nodes, self.train_ds.num_samples)
        self.setup_model(load_universal=bool(plan and plan.elastic), fresh=plan is None)
        self.checkpointer.engine = self.engine
        if plan is None:
            return False
        t0 = time.perf_counter()
        state = self.checkpointer.load(plan)
        self.progress = p = state.progress
        self.resumed_data_state = data
        self.train_ds.load_state_dict(data)  # before the first __iter__
        self.metrics.log(
            {
                "kind": "resume",
                "step": p.step,
                "mode": "elastic" if plan.elastic else "native",
                "checkpoint": str(plan.path),
                "saved_world_size": int(plan.record["world_size"]),
                "world_size": self.env.world_size,
                "epoch": p.epoch,
                "sample_in_epoch": p.epoch_samples,
                "load_s": time.perf_counter() - t0,
            }
        )
        if plan.elastic:
            self.save()  # from now on a native checkpoint at this world size
        return True

    def open_batch_stream(self) -> BatchStream:
        sample_log = None
        if self.cfg.debug.record_samples:  # per-rank sample ids of every step, for the data tests
            d = self.run_dir / "samples"
            d.mkdir(parents=True, exist_ok=True)
            sample_log = open(d / f"rank_{self.env.rank:05d}.jsonl", "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        launch_id = dist.broadcast(time.time_ns())  # tells re-done steps apart after a resume
        return BatchStream(
            self.make_loader(),
            self.progress,
            self.cfg.batch.micro_batch_size * self.env.world_size,
            self.cfg.data.source,
            sample_log,
            launch_id,
        )

    # ------------------------------------------------------------------ steps
    def forward_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["input"].to(self.device, non_blocking=True)
        y = batch["target"].to(self.device, non_blocking=True)
        t = self.cfg.train
        return self.engine(x, targets=y, segment_len=t.segment_len, bptt=t.bptt, l2wrap=self.cfg.optim.l2wrap)

    def train_step(self, batches: list[dict[str, torch.Tensor]]) -> tuple[float, StepOutcome]:
        """One optimizer step over ``accum`` micro-batches. Returns (mean local loss, what became of the update)."""
        losses = []
        scale = optim_state.loss_scale(self.engine)  # fp16: the scale this step's gradients are multiplied by
        inject = self.progress.step in self.cfg.debug.nonfinite_loss_at_steps
        for batch in batches:
            loss = self.forward_loss(batch)
            if inject and self.env.is_main:
                loss = loss * float("nan")  # fault injection for the guard tests
            # A non-finite loss makes the gradients non-finite on every rank after the all-reduce;
            # DeepSpeed then discards the update (was_step_applied() is False).
            self.engine.backward(loss)
            self.engine.step()
            losses.append(loss.detach().float())
        loss = float(torch.stack(losses).mean())
        applied = bool(self.engine.was_step_applied())  # the same on every rank
        finite = torch.tensor([int(math.isfinite(loss))], dtype=torch.int64)
        if not applied and tdist.is_initialized():  # every rank is here: agree on whether any loss was bad
            tdist.all_reduce(finite, op=tdist.ReduceOp.MIN, group=self.control)
        self.step_scale = scale
        return loss, step_outcome(applied, bool(finite), scale, self.min_loss_scale)

    def agree(self, stop: bool, fault: PtbrError | None) -> tuple[bool, PtbrError | None]:
        """Collective: whether any rank was signalled, and the worst data fault of any rank (the same
        error, with the failing rank's message, on every rank)."""
        stop, code = agree(stop, fault.exit_code if fault else 0, self.control)
        if not code:
            return stop, None
        reports = dist.gather((fault.exit_code, str(fault)) if fault else None, self.control)
        message = next(msg for c, msg in (r for r in reports if r) if c == code)
        return stop, _FAULTS.get(code, DataError)(message)

    # ------------------------------------------------------------------ loop
    def run(self) -> int:
        code = 1
        try:
            code = self._run()
            return code
        except PtbrError as exc:
            code = exc.exit_code
            raise
        finally:
            if self.stream is not None:
                self.stream.close()  # stops the loader workers before the process exits
            self.metrics.close(code)
            self.stop.restore()

    def _run(self) -> int:
        cfg = self.cfg
        self.setup_data()
        self.resume()
        self.announce()
        if self.bench is not None:  # after announce: the run directory holds the dataset's tokenizer now
            self.bench.prepare(self.run_dir, int(self.manifest.get("eos_id") or 0))
            self.bench_clock = time.perf_counter()
        self.stream = stream = self.open_batch_stream()
        window = LogWindow()
        while self.progress.step < cfg.train.max_steps:
            batches, wait, fault = stream.next_step(self.accum)
            stop_now, fault = self.agree(self.stop.requested, fault)
            if fault:
                self.stop_on_fault(fault)
            if stop_now:
                return self.stop_preempted()
            loss, outcome = self.train_step(batches)
            stream.commit(self.progress.step, batches)
            window = self.after_step(loss, outcome, wait, window)
        if self.last_eval_step != self.progress.step:
            self.log_eval()
        if self.bench is not None and self.last_bench_step != self.progress.step:
            self.log_bench()
        if self.checkpointer.last_saved_step != self.progress.step:
            self.save()
        return 0

    def after_step(self, loss: float, outcome: StepOutcome, wait: float, window: LogWindow) -> LogWindow:
        """Counters, the non-finite guard, and what is due at this step: a log line, an evaluation, a save."""
        cfg = self.cfg
        self.account(loss, outcome, wait, window)
        step = self.progress.step
        if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
            self.log_window(window)
            window = LogWindow()
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.max_steps:
            self.log_eval()
        if self.bench is not None and step % cfg.train.bench_every == 0 and step < cfg.train.max_steps:
            self.log_bench()
        if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
            self.save()
        return window

    def announce(self) -> None:
        cfg, env = self.cfg, self.env
        if not env.is_main:
            return
        write_run_files(self.run_dir, cfg.to_yaml_dict(), self.manifest, cfg.data.source)
        self.metrics.log(
            {
                "kind": "start",
                "step": self.progress.step,
                "world_size": env.world_size,
                "launcher": env.launcher,
                "num_nodes": env.num_nodes,
                "zero_stage": cfg.zero.stage,
                "precision": cfg.precision,
                "parameters": count_parameters(cfg.model),
                "micro_batch_size": cfg.batch.micro_batch_size,
                "grad_accum": self.accum,
                "global_batch_size": self.global_batch,
                "seq_len": cfg.data.seq_len,
            }
        )
        info(
            f"world {env.world_size} ({env.launcher}), micro-batch {cfg.batch.micro_batch_size}, "
            f"grad accum {self.accum}, global batch {self.global_batch} x {cfg.data.seq_len} tokens, "
            f"ZeRO {cfg.zero.stage}, {cfg.precision}, {count_parameters(cfg.model):,} parameters"
        )
        each = self.checkpointer.estimated_bytes()
        need = disk_still_needed(self.ckpt_root, each, cfg.train.keep_checkpoints)
        free = shutil.disk_usage(self.run_dir).free
        if free < need:  # the same rule as the dry run: keep_checkpoints complete ones plus the one being written
            info(
                f"warning: {self.run_dir} has {free / 2**30:.2f} GiB free, below the {need / 2**30:.2f} GiB its "
                f"checkpoints will take ({each / 2**30:.2f} GiB each, train.keep_checkpoints="
                f"{cfg.train.keep_checkpoints} plus one being written); a save that does not fit ends the run (74)"
            )

    def account(self, loss: float, outcome: StepOutcome, wait: float, window: LogWindow) -> None:
        """Progress counters and the non-finite guard after one optimizer step."""
        p = self.progress
        p.step += 1
        p.samples += self.global_batch
        p.tokens += self.global_batch * self.cfg.data.seq_len
        window.add(loss if outcome == "applied" else None, wait)
        if outcome == "applied":
            p.nonfinite_in_row = 0
        elif outcome == "loss_scale":  # fp16: DeepSpeed lowered the loss scale and skipped; not a bad step
            p.skipped_steps += 1
            p.loss_scale_skips += 1
            if self.env.is_main:
                info(
                    f"step {p.step}: fp16 gradients overflowed at loss scale {self.step_scale:g}; update skipped "
                    f"and the scale lowered ({p.loss_scale_skips} such steps in total)"
                )
        else:
            p.skipped_steps += 1
            p.nonfinite_in_row += 1
            if self.env.is_main:
                info(
                    f"step {p.step}: non-finite loss or gradient, update skipped "
                    f"({p.nonfinite_in_row} in a row, {p.skipped_steps} in total)"
                )
            if p.nonfinite_in_row >= self.cfg.train.max_nonfinite_in_row:
                raise NonFiniteError(self.nonfinite_message())

    def stop_preempted(self) -> int:
        if self.checkpointer.last_saved_step != self.progress.step:
            self.save()
        newest = self.checkpointer.newest()
        self.metrics.log(
            {
                "kind": "preempt",
                "step": self.progress.step,
                "tokens": self.progress.tokens,
                "checkpoint": str(newest.path) if newest else None,
            }
        )
        for mirror in self.metrics.mirrors:
            mirror.preempting()
        if self.env.is_main:
            info(f"preempted: checkpoint of step {self.progress.step} committed, exiting with {EXIT_PREEMPTED}")
        return EXIT_PREEMPTED

    def stop_on_fault(self, fault: PtbrError) -> None:
        """A data source failed for good on some rank: save what the run holds (saving needs no data),
        then end with the fault's exit code and one line naming the failure and the resume point."""
        try:
            if self.checkpointer.last_saved_step != self.progress.step:
                self.save()
            saved = f"step {self.progress.step} is saved in {self.checkpointer.newest().path}"
        except PtbrError as exc:
            last = self.checkpointer.newest()
            saved = f"no checkpoint could be written ({exc}); the last committed one is {last.path if last else 'none'}"
        raise type(fault)(f"{fault}; {saved}; the run continues from there with --resume auto")

    def nonfinite_message(self) -> str:
        streak_start = self.progress.step - self.progress.nonfinite_in_row
        good = self.checkpointer.newest(max_step=streak_start)
        where = (
            f"the last good checkpoint is {good.path}; resume from it with --resume {good.path}"
            if good
            else "no checkpoint was written before the first of them"
        )
        return (
            f"stopping: {self.progress.nonfinite_in_row} optimizer steps in a row had a non-finite loss or "
            f"gradient (train.max_nonfinite_in_row={self.cfg.train.max_nonfinite_in_row}); {where}, "
            "after lowering optim.lr or checking the data"
        )

    def log_window(self, w: LogWindow) -> None:
        cfg, env, p = self.cfg, self.env, self.progress
        stats = torch.tensor([w.loss, w.n, w.wait], dtype=torch.float64, device=self.device)
        tdist.all_reduce(stats)
        elapsed = max(time.perf_counter() - w.t0, 1e-9)
        loss = float(stats[0] / stats[1]) if stats[1] > 0 else float("nan")
        tokens = w.steps * self.global_batch * cfg.data.seq_len
        tps = tokens / elapsed
        step_time = elapsed / w.steps
        record = {
            "kind": "train",
            "step": p.step,
            "tokens": p.tokens,
            "loss": loss,
            "lr": float(self.engine.get_lr()[0]),
            "grad_norm": as_float(self.engine.get_global_grad_norm()),
            "tokens_per_s": tps,
            "tokens_per_s_per_device": tps / env.world_size,
            "step_time_s": step_time,
            "data_wait_share": float(stats[2]) / env.world_size / elapsed,
            "memory_gib": memory_gib(),
            "skipped_steps": p.skipped_steps,
            "eta_s": step_time * (cfg.train.max_steps - p.step),
        }
        if cfg.precision == "fp16":
            record.update(loss_scale=optim_state.loss_scale(self.engine), loss_scale_skips=p.loss_scale_skips)
        if self.peak_tflops:
            record["mfu"] = self.flops_per_token * tps / (self.peak_tflops * 1e12 * env.world_size)
        line = train_line(record, cfg.train.max_steps, env.world_size)
        self.metrics.log(record, line)

    def log_eval(self) -> None:
        result = self.evaluator.evaluate(self.engine)
        self.last_eval_step = self.progress.step
        record = {"kind": "eval", "step": self.progress.step, "tokens": self.progress.tokens, **result}
        per_source = "".join(
            f", {k[len('val_loss_') :]} {v:.4f}"
            for k, v in result.items()
            if k.startswith("val_loss_") and isinstance(v, float)
        )
        self.metrics.log(
            record,
            f"eval step {self.progress.step}: val_loss {result['val_loss']:.4f} "
            f"ppl {result['val_ppl']:.2f} ({result['val_tokens']:,} tokens{per_source})",
        )

    def log_bench(self) -> None:
        """train.bench_every: the benchmark record, with its cost as a share of the training time since the last."""
        trained_s = time.perf_counter() - self.bench_clock
        record = self.bench.run(self.engine, self.progress.step, self.progress.tokens)
        self.last_bench_step = self.progress.step
        self.bench_clock = time.perf_counter()
        if record is None:
            return
        record["train_seconds"] = trained_s
        record["overhead"] = record["seconds"] / max(trained_s, 1e-9)
        scores = ", ".join(f"{k} {v:.4f}" for k, v in record["scores"].items())
        self.metrics.log(
            record,
            f"bench step {self.progress.step}: {scores} ({record['seconds']:.1f} s, "
            f"{record['overhead'] * 100:.1f}% of the training time since the last)",
        )
