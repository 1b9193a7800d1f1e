"""Saving and resuming a training run with DeepSpeed sharded checkpoints.

Save: every rank writes its shards and RNG state and fsyncs them; after a barrier rank 0 verifies
the set, writes ``ptbr_state.json`` and the COMPLETE marker, then moves ``latest`` (see
:mod:`ptbr.checkpoint.store`). Resume: the newest intact checkpoint, at the same world size
(native, bit-exact) or at another one (through the universal format), with the data stream
continuing at the exact sample where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptbr import __version__
from ptbr.checkpoint import optim_state, store
from ptbr.checkpoint.universal import ensure_universal
from ptbr.data.stream import default_num_canonical_nodes
from ptbr.dist import broadcast, gather
from ptbr.errors import CheckpointError, CheckpointWriteError
from ptbr.fsutil import atomic_write_text, fsync_file
from ptbr.train.loop import Trainer
from ptbr.train.metrics import info
from ptbr.train.state import Progress


@dataclass
class ResumePlan:
    tag: str
    path: Path  # the native checkpoint directory
    load_dir: Path  # the directory holding ``tag`` that DeepSpeed loads from
    state: dict[str, Any]
    elastic: bool


def fingerprint(trainer: Trainer) -> dict[str, str]:
    """What must not change across a resume: model shape, sequence length, dataset identity."""
    cfg, manifest = trainer.cfg, trainer.manifest
    dataset = manifest.get("dataset_hash") or hashlib.sha256(
        json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    model = hashlib.sha256(json.dumps(cfg.model.model_dump(), sort_keys=True).encode()).hexdigest()[:16]
    return {"model": model, "seq_len": str(cfg.data.seq_len), "dataset": str(dataset)}


def _decide(trainer: Trainer, mode: str, allow_fresh_start: bool, allow_config_change: bool) -> ResumePlan | None:
    """Rank 0 only: pick the checkpoint to resume from, or None for a fresh start, or raise."""
    root = trainer.ckpt_root
    existing = store.list_checkpoints(root)
    if mode == "never":
        if any(not c.problems() for c in existing):
            raise CheckpointError(f"{root} already holds checkpoints; --resume never would mix two runs in one "
                                  "directory: choose another train.run_dir or use --resume auto")
        return None
    if mode == "auto":
        ckpt = store.newest_usable(root, info)
        if ckpt is None:
            if not existing:
                return None
            if not allow_fresh_start:
                raise CheckpointError(
                    f"{root} holds {len(existing)} checkpoint(s) but none is complete; refusing to start over. "
                    "Resume one explicitly with --resume PATH, or pass --allow-fresh-start")
            aside = root / f"discarded-{time.strftime('%Y%m%d-%H%M%S')}"
            aside.mkdir(parents=True)
            for c in existing:
                c.path.rename(aside / c.path.name)
            info(f"starting fresh; the incomplete checkpoints were moved to {aside}")
            return None
    else:
        ckpt = store.parse_checkpoint(mode)
        if ckpt is None:
            raise CheckpointError(f"{mode} is not a ptbr checkpoint directory (expected a name like step_00001000)")
        problems = ckpt.problems()
        if problems:
            raise CheckpointError(f"cannot resume from {mode}: " + "; ".join(problems))
    state = ckpt.state()
    saved, now = state["fingerprint"], fingerprint(trainer)
    changed = [k for k in now if saved.get(k) != now[k]]
    if changed and not allow_config_change:
        raise CheckpointError(f"checkpoint {ckpt.tag} was written for a different " + ", ".join(changed) +
                              " (model shape, seq_len and dataset must match); use a new train.run_dir, "
                              "or pass --allow-config-change if this is intended")
    elastic = int(state["world_size"]) != trainer.env.world_size
    if elastic and int(state["global_batch_size"]) != trainer.global_batch:
        raise CheckpointError(
            f"resuming at world size {trainer.env.world_size} (saved at {state['world_size']}) must keep the "
            f"global batch of {state['global_batch_size']} sequences to continue the same data order; set "
            f"batch.global_batch_size={state['global_batch_size']}")
    load_dir = ckpt.path.parent
    if elastic:
        load_dir = ensure_universal(ckpt, info).parent
    return ResumePlan(ckpt.tag, ckpt.path, load_dir, state, elastic)


def plan_resume(trainer: Trainer, mode: str, allow_fresh_start: bool = False,
                allow_config_change: bool = False) -> ResumePlan | None:
    """Collective: rank 0 decides (and converts for elastic resumes), every rank gets the same plan."""
    result: Any = None
    if trainer.env.is_main:
        try:
            result = _decide(trainer, mode, allow_fresh_start, allow_config_change)
        except CheckpointError as exc:
            result = exc
    result = broadcast(result)
    if isinstance(result, CheckpointError):
        raise result
    return result


def load(trainer: Trainer, plan: ResumePlan) -> None:
    """Load weights, fp32 master weights and optimizer state; restore progress, schedule, RNG."""
    t0 = time.perf_counter()
    path, _ = trainer.engine.load_checkpoint(str(plan.load_dir), tag=plan.tag, load_optimizer_states=True,
                                             load_lr_scheduler_states=False)
    if path is None:  # DeepSpeed returns (None, None) instead of raising when it finds nothing
        raise CheckpointError(f"DeepSpeed loaded nothing from {plan.load_dir / plan.tag}")
    s = plan.state
    saved_optim = s.get("optimizer")
    if plan.elastic:  # DeepSpeed's universal load can lose per-group settings (see optim_state)
        expected = saved_optim["groups"] if saved_optim else trainer.initial_hparams
        optim_state.repair(trainer.engine, expected, info if trainer.env.is_main else lambda _m: None)
    trainer.progress = p = Progress(**{f.name: int(s[f.name]) for f in dataclasses.fields(Progress)})
    trainer.resumed_data_state = data = dict(s["data"])
    if not data.get("num_canonical_nodes"):  # written by a version that left streaming's default unresolved
        data["num_canonical_nodes"] = default_num_canonical_nodes(
            trainer.cfg.data.shuffle_algo, int(data.get("initial_physical_nodes") or s["world_size"]))
    trainer.scheduler.load_state_dict(s["scheduler"])
    _verify_optimizer(trainer, plan, saved_optim)
    trainer.last_saved_step = p.step
    rng_file = plan.path / "rng" / f"rank_{trainer.env.rank:05d}.pt"
    if not plan.elastic and rng_file.is_file():
        _set_rng(torch.load(rng_file, weights_only=False))
    kind = f"elastic ({s['world_size']} -> {trainer.env.world_size} ranks)" if plan.elastic else "native"
    seconds = time.perf_counter() - t0
    trainer.metrics.log({"kind": "resume", "step": p.step, "mode": "elastic" if plan.elastic else "native",
                         "checkpoint": str(plan.path), "saved_world_size": int(s["world_size"]),
                         "world_size": trainer.env.world_size, "epoch": p.epoch, "sample_in_epoch": p.epoch_samples,
                         "load_s": seconds})
    if trainer.env.is_main:
        info(f"resumed from {plan.path} at step {p.step} ({kind}), data at epoch {p.epoch} "
             f"sample {p.epoch_samples}; loaded in {seconds:.2f} s")


def _verify_optimizer(trainer: Trainer, plan: ResumePlan, saved: dict[str, Any] | None) -> None:
    """Collective: stop with one line if the loaded optimizer differs from what was saved."""
    if saved is None:
        if trainer.env.is_main:
            info(f"warning: {plan.tag} predates optimizer-state records; the loaded optimizer state is not verified")
        return
    problems = optim_state.verify(trainer.engine, saved, trainer.device)
    merged = list(dict.fromkeys(p for rank_problems in gather(problems) for p in rank_problems))
    if merged:
        kind = "universal (elastic)" if plan.elastic else "native"
        raise CheckpointError(f"the optimizer state after the {kind} load of {plan.path} does not match the "
                              f"checkpoint: {'; '.join(merged[:4])}; not training on it (report this with the "
                              "DeepSpeed version, or resume at the world size that wrote the checkpoint)")


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _own_files(path: Path, rank: int) -> list[Path]:
    mine = [f for f in path.iterdir() if f.is_file() and f"zero_pp_rank_{rank}_" in f.name]
    if rank == 0:
        mine += [f for f in path.iterdir() if f.is_file() and f.name.startswith("mp_rank_")]
    return mine


@contextlib.contextmanager
def _capture_write_errors(engine: Any, errors: list[str]) -> Iterator[None]:
    """Let DeepSpeed finish its save (and its collectives) when one of this rank's file writes fails:
    every write goes through ``engine.checkpoint_engine.save``; a failure is recorded, not raised, so
    that the ranks can agree on the outcome afterwards instead of leaving the others in a barrier."""
    ce = engine.checkpoint_engine
    original = ce.save

    def guarded(state_dict: Any, path: str) -> Any:
        try:
            return original(state_dict, path)
        except Exception as exc:  # noqa: BLE001 - reported collectively by save()
            errors.append(f"{Path(path).name}: {_reason(exc)}")
            return None

    ce.save = guarded
    try:
        yield
    finally:
        del ce.save  # back to the class's method


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split())[:200]


def estimated_bytes(trainer: Trainer) -> int:
    """What the next checkpoint will take: the newest complete one's size, else model + optimizer
    states (weights in the training precision, fp32 master weights and two Adam moments)."""
    newest = store.newest_usable(trainer.ckpt_root, lambda _m: None)
    if newest is not None and (marker := newest.marker()):
        return int(sum(marker["files"].values()))
    weight_bytes = 4 if trainer.cfg.precision == "fp32" else 2
    return trainer.cfg.model.num_parameters() * (weight_bytes + 12)


def newest_committed(trainer: Trainer) -> Path | None:
    ckpt = store.newest_usable(trainer.ckpt_root, lambda _m: None)
    return ckpt.path if ckpt else None


def _write_failure_message(trainer: Trainer, path: Path, errors: list[str]) -> str:
    need = estimated_bytes(trainer)
    free = shutil.disk_usage(trainer.ckpt_root).free if trainer.ckpt_root.exists() else 0
    full = "the filesystem is full: " if free < need or any("No space" in e for e in errors) else ""
    last = newest_committed(trainer)
    return (f"could not write checkpoint {path} ({full}{errors[0]}); a checkpoint needs about "
            f"{need / 2**20:,.1f} MiB and {free / 2**20:,.1f} MiB are free there; the incomplete checkpoint "
            f"was removed; the last committed checkpoint is {last or 'none'}: free space (or lower "
            "train.keep_checkpoints) and run again, --resume auto continues from it")


def save(trainer: Trainer) -> Path:
    """Collective: write, verify and commit a checkpoint of the current step.

    A write that fails on any rank (disk full, quota, I/O error) is agreed on by all ranks: the
    incomplete directory is removed, nothing committed is touched, and every rank raises the same
    one-line :class:`CheckpointWriteError`."""
    env, p = trainer.env, trainer.progress
    root = trainer.ckpt_root
    path = None
    if env.is_main:
        root.mkdir(parents=True, exist_ok=True)
        path = store.new_checkpoint_dir(root, p.step)
        shutil.rmtree(path, ignore_errors=True)  # an incomplete leftover of a killed save
    path = Path(broadcast(str(path)))
    t0 = time.perf_counter()
    errors: list[str] = []
    with _capture_write_errors(trainer.engine, errors):
        trainer.engine.save_checkpoint(str(root), tag=path.name, client_state={}, save_latest=False)
    rng_file = path / "rng" / f"rank_{env.rank:05d}.pt"
    try:
        rng_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(_rng_state(), rng_file)
        for f in [*_own_files(path, env.rank), rng_file]:
            fsync_file(f)
    except (OSError, RuntimeError) as exc:
        errors.append(f"{rng_file.name}: {_reason(exc)}")
    optimizer_summary = optim_state.summarize(trainer.engine, trainer.device)  # collective
    errors = [e for rank_errors in gather(errors) for e in rank_errors]
    if not errors and env.is_main:
        try:
            state = {
                **dataclasses.asdict(p), "data": trainer.data_state(),
                "scheduler": trainer.scheduler.state_dict(), "world_size": env.world_size,
                "zero_stage": trainer.cfg.zero.stage, "precision": trainer.cfg.precision,
                "global_batch_size": trainer.global_batch, "micro_batch_size": trainer.cfg.batch.micro_batch_size,
                "grad_accum": trainer.accum, "fingerprint": fingerprint(trainer), "ptbr_version": __version__,
                "optimizer": optimizer_summary,
                "saved_at": time.time(),
            }
            atomic_write_text(path / store.STATE, json.dumps(state, indent=1) + "\n")
            debug = trainer.cfg.debug  # lets tests kill the job (or signal it again) in the middle of a save
            at = debug.pause_at_steps
            pause = debug.pause_before_commit_s if at is None or p.step in at else 0.0
            if pause:
                info(f"debug: pausing {pause} s before committing {path.name}")
                time.sleep(pause)
            store.commit(path, env.world_size)
        except OSError as exc:
            if store.parse_checkpoint(path).marker() is None:  # not committed: a write failed
                errors.append(f"{exc.filename and Path(exc.filename).name or path.name}: {_reason(exc)}")
            else:  # committed; only the ``latest`` pointer could not be moved (it is a hint)
                info(f"warning: checkpoint {path.name} is committed but {root / store.LATEST} was not updated: "
                     f"{_reason(exc)}")
        except Exception as exc:  # noqa: BLE001 - reported collectively below
            errors.append(f"{type(exc).__name__}: {exc}")
    errors = broadcast(errors)
    if errors:
        message = None
        if env.is_main:
            shutil.rmtree(path, ignore_errors=True)
            message = _write_failure_message(trainer, path, errors)
        raise CheckpointWriteError(broadcast(message))
    if env.is_main:
        removed = store.apply_retention(root, trainer.cfg.train.keep_checkpoints)
        info(f"checkpoint {path.name} committed in {time.perf_counter() - t0:.2f} s"
             + (f", removed {', '.join(r.name for r in removed)}" if removed else ""))
    trainer.last_saved_step = p.step
    return path
