"""The on-disk layout of checkpoints: names, discovery, integrity (read-only).

Layout under ``RUN_DIR/checkpoints``::

    step_00001000/            DeepSpeed's files for every rank (see MODEL_STATES / OPTIM_STATES), plus
        ptbr_state.json       progress, data-stream position, config fingerprint, world size, ZeRO
                              stage, optimizer record (see ptbr.checkpoint.optim_state)
        rng/rank_00003.pt     per-rank RNG states
        COMPLETE.json         written last: every file with its size. No marker = incomplete.
    latest                    name of the newest complete checkpoint (tmp + fsync + rename)
    universal/step_.../       DeepSpeed universal conversions made for elastic resumes

A checkpoint counts only if its marker exists and every file it lists still has its recorded
size, so a kill at any moment, or a file truncated later, can never be mistaken for a good one.
Everything that knows these names is in this module; writing is :class:`ptbr.checkpoint.Checkpointer`'s.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = "COMPLETE.json"
STATE = "ptbr_state.json"
LATEST = "latest"
UNIVERSAL = "universal"
RNG_DIR = "rng"
_TAG = re.compile(r"^step_(\d{8})(?:\.(\d+))?$")
# DeepSpeed's files: model weights (ZeRO-1/2: one file; ZeRO-3: one per rank) and optimizer partitions
MODEL_STATES = re.compile(r"^(?:zero_pp_rank_(\d+)_)?mp_rank_\d+_model_states\.pt$")
OPTIM_STATES = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


def rng_file(path: Path, rank: int) -> Path:
    return path / RNG_DIR / f"rank_{rank:05d}.pt"


def files_of_rank(path: Path, rank: int) -> list[Path]:
    """The files DeepSpeed wrote for ``rank`` in checkpoint directory ``path`` (rank 0 also owns the
    shared ZeRO-1/2 model states)."""
    mine = []
    for f in path.iterdir():
        if not f.is_file():
            continue
        m = MODEL_STATES.match(f.name) or OPTIM_STATES.match(f.name)
        if m and (m.group(1) is not None and int(m.group(1)) == rank or m.group(1) is None and rank == 0):
            mine.append(f)
    return mine


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    attempt: int

    @property
    def tag(self) -> str:
        return self.path.name

    def marker(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / MARKER).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def state(self) -> dict[str, Any]:
        return json.loads((self.path / STATE).read_text(encoding="utf-8"))

    def model_state_files(self) -> list[Path]:
        """DeepSpeed's model-state files, in rank order (one for ZeRO-1/2, one per rank for ZeRO-3)."""
        found = [(int(m.group(1) or 0), f) for f in self.path.iterdir() if (m := MODEL_STATES.match(f.name))]
        return [f for _, f in sorted(found)]

    def optim_state_files(self) -> list[Path]:
        """DeepSpeed's optimizer partitions (fp32 master weights and moments), in rank order."""
        found = [(int(m.group(1)), f) for f in self.path.iterdir() if (m := OPTIM_STATES.match(f.name))]
        return [f for _, f in sorted(found)]

    def problems(self) -> list[str]:
        """Why this checkpoint cannot be used (empty list: it is complete and intact)."""
        marker = self.marker()
        if marker is None:
            return [f"{self.tag} has no {MARKER} (the save did not finish)"]
        issues = []
        for name, size in marker["files"].items():
            f = self.path / name
            if not f.is_file():
                issues.append(f"{self.tag}/{name} is missing")
            elif f.stat().st_size != size:
                issues.append(f"{self.tag}/{name} has {f.stat().st_size} bytes, {size} were written")
        return issues


def tag_for(step: int, attempt: int = 0) -> str:
    return f"step_{step:08d}" + (f".{attempt}" if attempt else "")


def parse_checkpoint(path: str | Path) -> Checkpoint | None:
    """The checkpoint a directory name denotes (``step_00001000`` or ``step_00001000.1``), or None."""
    path = Path(path)
    m = _TAG.match(path.name)
    return Checkpoint(path, int(m.group(1)), int(m.group(2) or 0)) if m else None


def list_checkpoints(root: str | Path) -> list[Checkpoint]:
    """All checkpoint directories, oldest first (complete or not)."""
    root = Path(root)
    found = []
    if root.is_dir():
        for p in root.iterdir():
            ckpt = parse_checkpoint(p)
            if ckpt and p.is_dir():
                found.append(ckpt)
    return sorted(found, key=lambda c: (c.step, c.attempt))


def new_checkpoint_dir(root: str | Path, step: int) -> Path:
    """A fresh directory name for ``step``: reuses the name of an incomplete leftover, never of a
    complete checkpoint (after an elastic resume the same step is saved again at the new size)."""
    root = Path(root)
    attempt = 0
    while True:
        path = root / tag_for(step, attempt)
        if not path.exists() or parse_checkpoint(path).marker() is None:
            return path
        attempt += 1


def expected_files_present(path: Path, world_size: int) -> list[str]:
    """DeepSpeed wrote model states and one optimizer-state file per rank; every file is non-empty."""
    issues = []
    names = [p.name for p in path.iterdir() if p.is_file()]
    if not any(MODEL_STATES.match(n) for n in names):
        issues.append("no model states file")
    ranks = {int(m.group(1)) for n in names if (m := OPTIM_STATES.match(n))}
    for rank in range(world_size):
        if rank not in ranks:
            issues.append(f"no optimizer state of rank {rank}")
        if not rng_file(path, rank).is_file():
            issues.append(f"no RNG state of rank {rank}")
    issues += [f"{p.relative_to(path)} is empty" for p in path.rglob("*") if p.is_file() and p.stat().st_size == 0]
    return issues


def newest_usable(root: str | Path, warn, max_step: int | None = None) -> Checkpoint | None:
    """Newest complete, intact checkpoint (at most ``max_step``); newer unusable ones go to ``warn``."""
    for ckpt in reversed(list_checkpoints(root)):
        if max_step is not None and ckpt.step > max_step:
            continue
        problems = ckpt.problems()
        if not problems:
            return ckpt
        warn(f"skipping checkpoint {ckpt.tag}: " + "; ".join(problems))
    return None


def disk_still_needed(root: str | Path, each_bytes: int, keep: int) -> int:
    """Free bytes the run still needs for its checkpoints: at the peak, ``keep`` complete ones plus the one
    being written; those already on disk take no more (at least one more is always needed)."""
    present = sum(1 for c in list_checkpoints(root) if not c.problems())
    return each_bytes * max(1, keep + 1 - present)
