"""The Checkpointer: the one owner of saving, committing, choosing and loading checkpoints.

Save (collective): every rank writes its DeepSpeed files and RNG state and fsyncs them; a write
that fails anywhere (disk full, quota) is agreed on by all ranks, the partial directory removed and
one :class:`~ptbr.errors.CheckpointWriteError` raised everywhere. Otherwise rank 0 writes
``ptbr_state.json`` (the :class:`RunState`, the scheduler, the optimizer record of
:mod:`ptbr.checkpoint.optim_state`), verifies the file set, writes ``COMPLETE.json`` and only then
moves ``latest``. Resume: :meth:`Checkpointer.plan` picks the newest intact checkpoint (rank 0
decides, all ranks get the same plan; elastic plans are converted to DeepSpeed's universal format
once), :meth:`Checkpointer.load` restores it and checks the optimizer against the record.

The Checkpointer is built from plain values (directory, ranks, engine, retention); the file names
it uses are those of :mod:`ptbr.checkpoint.layout`, whose read-only views (``complete()``,
``Checkpoint.model_state_files()``) are what an exporter reads.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptbr import __version__
from ptbr.checkpoint import layout, optim_state
from ptbr.checkpoint.run_state import RunState
from ptbr.checkpoint.universal import ensure_universal
from ptbr.dist import DistEnv, broadcast, gather
from ptbr.errors import CheckpointError, CheckpointWriteError
from ptbr.fsutil import atomic_write_text, fsync_dir, fsync_file
from ptbr.log import info

Log = Callable[[str], None]


@dataclass
class ResumePlan:
    tag: str
    path: Path  # the native checkpoint directory
    load_dir: Path  # the directory holding ``tag`` that DeepSpeed loads from
    record: dict[str, Any]  # its ptbr_state.json
    elastic: bool  # saved at another world size: loaded through the universal format


# ----------------------------------------------------------------------------------- resume policy
def decide(
    root: Path,
    mode: str,
    *,
    fingerprint: dict[str, str],
    world_size: int,
    global_batch_size: int,
    allow_fresh_start: bool = False,
    allow_config_change: bool = False,
    log: Log = info,
    dry_run: bool = False,
) -> ResumePlan | None:
    """Which checkpoint a run resumes from (None: a fresh start), or a one-line CheckpointError.

    ``mode`` is ``auto`` (the newest intact checkpoint, newer broken ones skipped with a warning),
    ``never`` (refused if the directory holds complete checkpoints) or a checkpoint directory. An
    elastic plan (another world size) is returned unconverted (``load_dir`` is the native one). With
    ``dry_run`` nothing on disk changes (incomplete checkpoints are not moved aside)."""
    existing = layout.list_checkpoints(root)
    if mode == "never":
        if any(not c.problems() for c in existing):
            raise CheckpointError(
                f"{root} already holds checkpoints; --resume never would mix two runs in one "
                "directory: choose another train.run_dir or use --resume auto"
            )
        return None
    if mode == "auto":
        ckpt = layout.newest_usable(root, log)
        if ckpt is None:
            if not existing:
                return None
            if not allow_fresh_start:
                raise CheckpointError(
                    f"{root} holds {len(existing)} checkpoint(s) but none is complete; refusing to start over. "
                    "Resume one explicitly with --resume PATH, or pass --allow-fresh-start"
                )
            if dry_run:
                return None
            aside = root / f"discarded-{time.strftime('%Y%m%d-%H%M%S')}"
            aside.mkdir(parents=True)
            for c in existing:
                c.path.rename(aside / c.path.name)
            log(f"starting fresh; the incomplete checkpoints were moved to {aside}")
            return None
    else:
        ckpt = layout.parse_checkpoint(mode)
        if ckpt is None:
            raise CheckpointError(f"{mode} is not a ptbr checkpoint directory (expected a name like step_00001000)")
        problems = ckpt.problems()
        if problems:
            raise CheckpointError(f"cannot resume from {mode}: " + "; ".join(problems))
    record = ckpt.state()
    saved = record["fingerprint"]
    changed = [k for k in fingerprint if saved.get(k) != fingerprint[k]]
    if changed and not allow_config_change:
        raise CheckpointError(
            f"checkpoint {ckpt.tag} was written for a different {', '.join(changed)} (they must "
            "match); use a new train.run_dir, or --allow-config-change if it is on purpose"
        )
    elastic = int(record["world_size"]) != world_size
    if elastic and int(record["global_batch_size"]) != global_batch_size:
        batch = record["global_batch_size"]
        raise CheckpointError(
            f"a resume at world size {world_size} (saved at {record['world_size']}) keeps the data "
            f"order only with the same global batch: set batch.global_batch_size={batch}"
        )
    return ResumePlan(ckpt.tag, ckpt.path, ckpt.path.parent, record, elastic)


# ----------------------------------------------------------------------------------- commit, retention
def commit(path: Path, world_size: int) -> None:
    """Rank 0, after every rank has written and fsynced: verify, write the marker, move ``latest``."""
    issues = layout.expected_files_present(path, world_size)
    if issues:
        raise RuntimeError(f"checkpoint {path} is incomplete, not committing it: " + "; ".join(issues))
    files = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != layout.MARKER):
        fsync_file(f)
        files[str(f.relative_to(path))] = f.stat().st_size
    for d in {f.parent for f in path.rglob("*")} | {path}:
        fsync_dir(d)
    atomic_write_text(path / layout.MARKER, json.dumps({"files": files}, indent=1) + "\n")
    atomic_write_text(path.parent / layout.LATEST, path.name + "\n")


def apply_retention(root: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints, and incomplete leftovers older than the
    newest complete one. The newest complete checkpoint is never deleted. Returns what was removed."""
    root = Path(root)
    ckpts = layout.list_checkpoints(root)
    complete = [c for c in ckpts if not c.problems()]
    if not complete:
        return []
    keep_set = {c.path for c in complete[-max(1, keep) :]}
    newest = complete[-1]
    removed = []
    for c in ckpts:
        older = (c.step, c.attempt) < (newest.step, newest.attempt)
        if c.path not in keep_set and older:
            shutil.rmtree(c.path, ignore_errors=True)
            shutil.rmtree(root / layout.UNIVERSAL / c.tag, ignore_errors=True)
            removed.append(c.path)
    return removed


# ----------------------------------------------------------------------------------- the checkpointer
class Checkpointer:
    """The only owner of a run's checkpoints directory: it saves, finds, commits, retains and loads them.

    The trainer hands it plain values (a :class:`RunState`) and the DeepSpeed engine, never itself. ``save``
    and ``load`` are collective (every rank writes or reads its shards; the ranks agree on a failed write);
    ``plan`` decides what a resume continues from (native, or elastic through the universal format) and
    refuses what cannot work; ``complete``, ``newest`` and ``estimated_bytes`` only read.
    """

    def __init__(
        self,
        root: str | Path,
        env: DistEnv,
        *,
        engine: Any = None,
        keep: int = 3,
        device: torch.device | None = None,
        zero_stage: int | None = None,
        precision: str = "",
        model_bytes: int = 0,
        pause_before_commit_s: float = 0.0,
        pause_at_steps: list[int] | None = None,
    ) -> None:
        """``engine`` may be attached later (``plan`` does not need it; ``save`` / ``load`` do).
        ``model_bytes``: parameters x (weight + 12 optimizer) bytes, the size estimate before the first save.
        ``pause_*``: fault injection for the tests (sleep before a commit)."""
        self.root, self.env, self.keep = Path(root), env, keep
        self.device = device or torch.device("cpu")
        self.zero_stage, self.precision, self.model_bytes = zero_stage, precision, model_bytes
        self.pause_before_commit_s, self.pause_at_steps = pause_before_commit_s, pause_at_steps
        self.engine = engine
        self.last_saved_step = -1

    # ------------------------------------------------------------------ read-only views
    def complete(self) -> list[layout.Checkpoint]:
        """Complete, intact checkpoints, oldest first (also while a run is writing new ones)."""
        return [c for c in layout.list_checkpoints(self.root) if not c.problems()]

    def newest(self, max_step: int | None = None) -> layout.Checkpoint | None:
        return layout.newest_usable(self.root, lambda _m: None, max_step=max_step)

    def estimated_bytes(self) -> int:
        """What the next checkpoint will take: the newest complete one's size, else ``model_bytes``."""
        newest = self.newest()
        if newest is not None and (marker := newest.marker()):
            return int(sum(marker["files"].values()))
        return self.model_bytes

    # ------------------------------------------------------------------ resume
    def plan(
        self,
        mode: str,
        *,
        fingerprint: dict[str, str],
        global_batch_size: int,
        allow_fresh_start: bool = False,
        allow_config_change: bool = False,
    ) -> ResumePlan | None:
        """Collective: rank 0 decides (and converts an elastic plan once), every rank gets the same plan."""
        result: Any = None
        if self.env.is_main:
            try:
                result = decide(
                    self.root,
                    mode,
                    fingerprint=fingerprint,
                    world_size=self.env.world_size,
                    global_batch_size=global_batch_size,
                    allow_fresh_start=allow_fresh_start,
                    allow_config_change=allow_config_change,
                )
                if result is not None and result.elastic:
                    result.load_dir = self._universal(layout.parse_checkpoint(result.path)).parent
            except CheckpointError as exc:
                result = exc
        result = broadcast(result)
        if isinstance(result, CheckpointError):
            raise result
        return result

    def _universal(self, ckpt: layout.Checkpoint) -> Path:
        return ensure_universal(ckpt, info)

    def load(self, plan: ResumePlan) -> RunState:
        """Collective: weights, fp32 master weights, optimizer state (checked against the record), the
        scheduler and, at the same world size, every rank's RNG state."""
        engine, record = self.engine, plan.record
        before = optim_state.group_hparams(engine)  # the groups as the config defines them
        t0 = time.perf_counter()
        path, _ = engine.load_checkpoint(
            str(plan.load_dir), tag=plan.tag, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if path is None:  # DeepSpeed returns (None, None) instead of raising when it finds nothing
            raise CheckpointError(f"DeepSpeed loaded nothing from {plan.load_dir / plan.tag}")
        saved_optim = record.get("optimizer")
        if plan.elastic:  # DeepSpeed's universal load can lose per-group settings (see optim_state)
            optim_state.repair(
                engine, saved_optim["groups"] if saved_optim else before, info if self.env.is_main else lambda _m: None
            )
        engine.lr_scheduler.load_state_dict(record["scheduler"])
        self._verify_optimizer(plan, saved_optim)
        rng = layout.rng_file(plan.path, self.env.rank)
        if not plan.elastic and rng.is_file():
            _set_rng(torch.load(rng, weights_only=False))
        state = RunState.from_record(record)
        self.last_saved_step = state.progress.step
        if self.env.is_main:
            p = state.progress
            kind = f"elastic ({record['world_size']} -> {self.env.world_size} ranks)" if plan.elastic else "native"
            info(
                f"resumed from {plan.path} at step {p.step} ({kind}), data at epoch {p.epoch} "
                f"sample {p.epoch_samples}; loaded in {time.perf_counter() - t0:.2f} s"
            )
        return state

    def _verify_optimizer(self, plan: ResumePlan, saved: dict[str, Any] | None) -> None:
        """Collective: stop with one line if the loaded optimizer differs from what was saved."""
        if saved is None:
            if self.env.is_main:
                info(
                    f"warning: {plan.tag} predates optimizer-state records; the loaded optimizer state is not verified"
                )
            return
        problems = optim_state.verify(self.engine, saved, self.device)
        merged = list(dict.fromkeys(p for rank_problems in gather(problems) for p in rank_problems))
        if merged:
            kind = "universal (elastic)" if plan.elastic else "native"
            raise CheckpointError(
                f"the optimizer state after the {kind} load of {plan.path} does not match the "
                f"checkpoint: {'; '.join(merged[:4])}; not training on it (resume at its world size)"
            )

    # ------------------------------------------------------------------ save
    def save(self, state: RunState) -> Path:
        """Collective: write, verify and commit a checkpoint of ``state``'s step. Returns its directory."""
        env, step = self.env, state.progress.step
        path = None
        if env.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            path = layout.new_checkpoint_dir(self.root, step)
            shutil.rmtree(path, ignore_errors=True)  # an incomplete leftover of a killed save
        path = Path(broadcast(str(path)))
        t0 = time.perf_counter()
        errors = self._write_rank_files(path)
        optimizer_summary = optim_state.summarize(self.engine, self.device)  # collective
        errors = [e for rank_errors in gather(errors) for e in rank_errors]  # also the barrier before commit
        if not errors and env.is_main:
            errors = self._commit(path, state, optimizer_summary)
        errors = broadcast(errors)
        if errors:
            message = None
            if env.is_main:
                shutil.rmtree(path, ignore_errors=True)
                message = self._write_failure_message(path, errors)
            raise CheckpointWriteError(broadcast(message))
        if env.is_main:
            removed = apply_retention(self.root, self.keep)
            info(
                f"checkpoint {path.name} committed in {time.perf_counter() - t0:.2f} s"
                + (f", removed {', '.join(r.name for r in removed)}" if removed else "")
            )
        self.last_saved_step = step
        return path

    def _write_rank_files(self, path: Path) -> list[str]:
        """This rank's DeepSpeed files and RNG state, fsynced; the writes that failed."""
        errors: list[str] = []
        with _capture_write_errors(self.engine, errors):
            self.engine.save_checkpoint(str(self.root), tag=path.name, client_state={}, save_latest=False)
        rng = layout.rng_file(path, self.env.rank)
        try:
            rng.parent.mkdir(parents=True, exist_ok=True)
            torch.save(_rng_state(), rng)
            for f in [*layout.files_of_rank(path, self.env.rank), rng]:
                fsync_file(f)
        except (OSError, RuntimeError) as exc:
            errors.append(f"{rng.name}: {_reason(exc)}")
        return errors

    def _commit(self, path: Path, state: RunState, optimizer_summary: dict[str, Any]) -> list[str]:
        """Rank 0: the state file, the checks and the marker; the writes that failed."""
        record = {
            **state.to_record(),
            "scheduler": self.engine.lr_scheduler.state_dict(),
            "world_size": self.env.world_size,
            "zero_stage": self.zero_stage,
            "precision": self.precision,
            "ptbr_version": __version__,
            "optimizer": optimizer_summary,
            "saved_at": time.time(),
        }
        try:
            atomic_write_text(path / layout.STATE, json.dumps(record, indent=1) + "\n")
            at = self.pause_at_steps
            if self.pause_before_commit_s and (at is None or state.progress.step in at):
                info(f"debug: pausing {self.pause_before_commit_s} s before committing {path.name}")
                time.sleep(self.pause_before_commit_s)
            commit(path, self.env.world_size)
        except OSError as exc:
            if layout.parse_checkpoint(path).marker() is None:  # not committed: a write failed
                return [f"{exc.filename and Path(exc.filename).name or path.name}: {_reason(exc)}"]
            info(
                f"warning: checkpoint {path.name} is committed but {self.root / layout.LATEST} was not updated: "
                f"{_reason(exc)}"
            )  # ``latest`` is a hint; discovery does not depend on it
        except Exception as exc:  # noqa: BLE001 - reported collectively
            return [f"{type(exc).__name__}: {exc}"]
        return []

    def _write_failure_message(self, path: Path, errors: list[str]) -> str:
        need = self.estimated_bytes()
        free = shutil.disk_usage(self.root).free if self.root.exists() else 0
        full = "the filesystem is full: " if free < need or any("No space" in e for e in errors) else ""
        last = self.newest()
        return (
            f"could not write checkpoint {path} ({full}{errors[0]}); a checkpoint needs about "
            f"{need / 2**20:,.1f} MiB and {free / 2**20:,.1f} MiB are free there; the incomplete checkpoint "
            f"was removed; the last committed checkpoint is {last.path if last else 'none'}: free space (or "
            "lower train.keep_checkpoints) and run again, --resume auto continues from it"
        )


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
