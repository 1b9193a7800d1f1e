"""Parts of a corpus for ``--part I/N`` (one Slurm array task each) and the bookkeeping a merge checks.

Assignment: the corpus's units (files, or row groups of parquet files; see ``corpus.units_of``) keep the
input order and are cut into N contiguous runs of about equal bytes: unit u goes to part
floor(N * (bytes before u + size(u) / 2) / total bytes). Every part computes the same assignment from the
same file list, with no coordination, and part i's documents all come before part i+1's, so the parts
laid end to end are the corpus in input order.

A part writes into ``WORK/part-IIIII-of-NNNNN/`` and, last, ``DONE.json``: the plan key (inputs, settings
and N), its own summary, and every file it wrote with its size. A part whose DONE.json matches the plan
and whose files are intact is done (running it again does nothing); anything else in its directory is
the debris of an interrupted run and is removed when the part starts again. The merge accepts only a
complete set of done parts of one plan (:func:`check_parts`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptbr.errors import DataError
from ptbr.fsutil import atomic_write_text, fsync_dir, fsync_file

DONE = "DONE.json"


@dataclass(frozen=True)
class PartSpec:
    """Part ``index`` (0-based, as Slurm's SLURM_ARRAY_TASK_ID) of ``count``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> PartSpec:
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise DataError(f"--part must look like I/N (e.g. 0/8, I counted from 0), not {text!r}") from None
        if n < 1 or not 0 <= i < n:
            raise DataError(f"--part {text}: needs N >= 1 and 0 <= I < N (I counted from 0, as Slurm array ids)")
        return cls(i, n)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def dirname(self) -> str:
        return f"part-{self.index:05d}-of-{self.count:05d}"


def assign(sizes: Sequence[int], parts: int) -> list[int]:
    """The part of every unit (contiguous, about equal bytes; see the module docstring)."""
    total = sum(sizes)
    if total == 0:  # only empty files: share them out by count
        return [i * parts // len(sizes) for i in range(len(sizes))]
    out, before = [], 0
    for size in sizes:
        out.append(min(parts - 1, int(parts * (before + size / 2) / total)))
        before += size
    return out


def default_work_dir(output: str | Path) -> Path:
    """Where the parts of ``output`` live unless ``--work`` says otherwise: a sibling ``OUTPUT.parts``."""
    out = Path(output)
    return out.with_name(out.name + ".parts")


def part_is_done(directory: Path, plan: str) -> dict[str, Any] | None:
    """The DONE.json record when the part in ``directory`` is complete for ``plan``, else None."""
    record = _read_done(directory)
    if record is None or record.get("plan") != plan or _damage(directory, record):
        return None
    return record


def start_part(directory: Path) -> None:
    """A fresh, empty directory for a part (what an interrupted run left there is removed)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)


def finish_part(directory: Path, plan: str, spec: PartSpec, summary: dict[str, Any]) -> dict[str, Any]:
    """fsync every file of the part, then write DONE.json (the commit point) naming them with their sizes."""
    files = {}
    for f in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != DONE):
        fsync_file(f)
        files[f.relative_to(directory).as_posix()] = f.stat().st_size
    for d in sorted({f.parent for f in directory.rglob("*")} | {directory}):
        fsync_dir(d)
    record = {"plan": plan, "part": spec.index, "parts": spec.count, "files": files, **summary}
    atomic_write_text(directory / DONE, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return record


def check_parts(work: Path, count: int, plan: str, rerun: str, mismatch: Any = None) -> list[dict[str, Any]]:
    """The DONE records of parts 0..count-1 of ``plan`` in ``work``, or a one-line DataError naming the first
    part that is missing, unfinished, damaged or foreign. ``rerun`` completes "run it again with ...";
    ``mismatch(record)`` may explain a foreign part better (e.g. another tokenizer)."""
    records = []
    for i in range(count):
        spec = PartSpec(i, count)
        d = work / spec.dirname()
        if not d.is_dir():
            others = sorted(p.name for p in work.glob("part-*-of-*")) if work.is_dir() else []
            hint = (
                f" (it holds {others[0]} ...: parts of another --part count?)"
                if others and not any(p.endswith(f"-of-{count:05d}") for p in others)
                else ""
            )
            raise DataError(f"part {spec} is missing: no {d}{hint}; run it with {rerun} --part {spec}")
        record = _read_done(d)
        if record is None:
            raise DataError(
                f"part {spec} in {work} is unfinished (no {DONE}: still running, or it was "
                f"interrupted); run it again with {rerun} --part {spec}"
            )
        if record.get("plan") != plan:
            why = (mismatch(record) if mismatch else None) or (
                "was made from other inputs, settings or part count than this merge's"
            )
            raise DataError(f"part {spec} in {work} {why}; remove {d} and run it again with {rerun} --part {spec}")
        damage = _damage(d, record)
        if damage:
            raise DataError(f"part {spec} in {work} is damaged ({damage}); run it again with {rerun} --part {spec}")
        records.append(record)
    return records


def _read_done(directory: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((directory / DONE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _damage(directory: Path, record: dict[str, Any]) -> str | None:
    for name, size in record.get("files", {}).items():
        p = directory / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != size:
            return f"{name} has {p.stat().st_size} bytes, not {size}"
    return None
