"""Where checkpoints live and which of them can be trusted.

Layout under ``RUN_DIR/checkpoints``::

    step_00001000/            DeepSpeed's files for every rank, plus
        ptbr_state.json       progress, data-stream position, config hash, world size, ZeRO stage
        rng/rank_00003.pt     per-rank RNG states
        COMPLETE.json         written last: every file with its size. No marker = incomplete.
    latest                    name of the newest complete checkpoint (tmp + fsync + rename)
    universal/step_.../       DeepSpeed universal conversions made for elastic resumes

A checkpoint counts only if its marker exists and every file it lists still has its recorded
size, so a kill at any moment, or a file truncated later, can never be mistaken for a good one.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptbr.fsutil import atomic_write_text, fsync_dir, fsync_file

MARKER = "COMPLETE.json"
STATE = "ptbr_state.json"
LATEST = "latest"
UNIVERSAL = "universal"
_TAG = re.compile(r"^step_(\d{8})(?:\.(\d+))?$")


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
    names = [p.name for p in path.rglob("*") if p.is_file()]
    if not any(n.endswith("model_states.pt") for n in names):
        issues.append("no model states file")
    for rank in range(world_size):
        if not any(re.search(rf"zero_pp_rank_{rank}_mp_rank_\d+_optim_states\.pt$", n) for n in names):
            issues.append(f"no optimizer state of rank {rank}")
        if not (path / "rng" / f"rank_{rank:05d}.pt").is_file():
            issues.append(f"no RNG state of rank {rank}")
    issues += [f"{p.relative_to(path)} is empty" for p in path.rglob("*") if p.is_file() and p.stat().st_size == 0]
    return issues


def commit(path: Path, world_size: int) -> None:
    """Rank 0, after every rank has written and fsynced: verify, write the marker, move ``latest``."""
    issues = expected_files_present(path, world_size)
    if issues:
        raise RuntimeError(f"checkpoint {path} is incomplete, not committing it: " + "; ".join(issues))
    files = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != MARKER):
        fsync_file(f)
        files[str(f.relative_to(path))] = f.stat().st_size
    for d in {f.parent for f in path.rglob("*")} | {path}:
        fsync_dir(d)
    atomic_write_text(path / MARKER, json.dumps({"files": files}, indent=1) + "\n")
    atomic_write_text(path.parent / LATEST, path.name + "\n")


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


def apply_retention(root: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints, and incomplete leftovers older than the
    newest complete one. The newest complete checkpoint is never deleted. Returns what was removed."""
    root = Path(root)
    ckpts = list_checkpoints(root)
    complete = [c for c in ckpts if not c.problems()]
    if not complete:
        return []
    keep_set = {c.path for c in complete[-max(1, keep):]}
    newest = complete[-1]
    removed = []
    for c in ckpts:
        older = (c.step, c.attempt) < (newest.step, newest.attempt)
        if c.path not in keep_set and older:
            shutil.rmtree(c.path, ignore_errors=True)
            shutil.rmtree(root / UNIVERSAL / c.tag, ignore_errors=True)
            removed.append(c.path)
    return removed
