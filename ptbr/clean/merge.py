"""The merge of ``ptbr corpus clean``'s parts: deduplication across all of them, then one output.

1. every part must be there, finished and of this plan (``ptbr.data.parts.check_parts``: one line names
   the first that is not);
2. the duplicate pairs of every band and the clusters (:mod:`ptbr.clean.dedup`), on disk in
   ``WORK/merge/``;
3. the filter: the parts' survivors in input order, minus the removed documents, into one ``.jsonl`` per
   input file; the parts' reports folded into one, plus the deduplication steps. The output goes to a
   temporary directory renamed to ``--output`` when complete (``--dry-run``: the report only).

A one-machine ``ptbr corpus clean`` is this with one part, so N parts and one machine give the same files.
Every phase's time and peak memory go to the log and to the report's ``timing``.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ptbr.clean.config import CleanConfig
from ptbr.clean.dedup import REMOVED, RULES, SortedReader, write_all_pairs, write_removed
from ptbr.clean.part import CANDIDATE, KEYS_BLOCK, CleanPlan
from ptbr.clean.report import Report
from ptbr.clean.signatures import band_names
from ptbr.data.parts import PartSpec, check_parts
from ptbr.errors import DataError
from ptbr.fsutil import atomic_write_text, staged_directory

DEFAULT_MEMORY = 512 << 20  # bytes for one slice of the band merge (the dedup's largest buffer)


def peak_rss_reset() -> None:
    """Start a new peak-memory window for this process (Linux: VmHWM is reset by clear_refs 5), after handing
    the heap that earlier phases freed back to the system (glibc), so that a phase is measured on its own."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss() -> int | None:
    """This process's peak resident memory since the last reset, in bytes (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextmanager
def phase(timing: dict[str, Any], name: str, log: Callable[[str], None]) -> Iterator[dict[str, Any]]:
    peak_rss_reset()
    t0, cpu0 = time.perf_counter(), time.process_time()
    info: dict[str, Any] = {}
    yield info
    rss = peak_rss()
    timing[name] = {
        "seconds": round(time.perf_counter() - t0, 3),
        "cpu_s": round(time.process_time() - cpu0, 3),
        "peak_rss_mib": rss and round(rss / 2**20, 1),
        **info,
    }
    extra = "".join(f", {k.replace('_', ' ')} {v:,}" for k, v in info.items())
    log(
        f"clean: {name} in {timing[name]['seconds']:.2f} s ({timing[name]['cpu_s']:.2f} s CPU), peak RSS "
        f"{timing[name]['peak_rss_mib']} MiB{extra}"
    )


def output_name(source: str) -> str:
    """``a/b.jsonl.gz`` -> ``a/b.jsonl``: one output file per input file (two inputs that differ only in
    their extension share it, in input order)."""
    stem = source.rsplit(".", 2)[0] if source.endswith((".gz", ".zst", ".zstd")) else source.rsplit(".", 1)[0]
    return f"{stem}.jsonl"


class _Output:
    """Writes kept lines to the output file of their source, one file open at a time (sources are contiguous
    in input order)."""

    def __init__(self, root: Path | None) -> None:
        self.root, self.name, self.file = root, None, None

    def write(self, source: str, line: str) -> None:
        if self.root is None:
            return
        name = output_name(source)
        if name != self.name:
            self.close()
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file, self.name = open(path, "a", encoding="utf-8"), name  # noqa: SIM115 - closed by close()
        assert self.file is not None
        self.file.write(line)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file, self.name = None, None


def _filter_part(part: Path, removed: SortedReader, out: _Output, report: Report) -> None:
    units = json.loads((part / "units.json").read_text())
    owners = (u["source"] for u in units for _ in range(u["candidates"]))
    with open(part / "keys.bin", "rb") as keys_f, open(part / "docs.jsonl", encoding="utf-8") as docs_f:
        while len(block := np.fromfile(keys_f, dtype=CANDIDATE, count=KEYS_BLOCK)):
            gone = removed.below(int(block["doc"][-1]) + 1)  # every removed document is some part's survivor
            rules = np.zeros(len(block), dtype=np.uint8)
            if len(gone):
                at = np.minimum(np.searchsorted(gone["doc"], block["doc"]), len(gone) - 1)
                hit = gone["doc"][at] == block["doc"]
                rules[hit] = gone["rule"][at[hit]]
            _filter_block(block, rules, docs_f, owners, out, report)


def _filter_block(
    block: np.ndarray, rules: np.ndarray, docs_f: TextIO, owners: Iterator[str], out: _Output, report: Report
) -> None:
    for nbytes, rule in zip(block["nbytes"].tolist(), rules.tolist()):
        line, source = docs_f.readline(), next(owners)
        if rule != 1:
            report.count(source, "exact_dedup", nbytes)
        if rule == 0:
            report.count(source, "near_dedup", nbytes)
            out.write(source, line)
        else:
            name = RULES[rule]
            report.drop(source, name, json.loads(line)["text"] if report.wants_example(name) else "")


def merge(
    plan: CleanPlan,
    count: int,
    work: Path,
    output: Path | None,
    cfg: CleanConfig,
    *,
    dry_run: bool = False,
    memory: int = DEFAULT_MEMORY,
    rerun: str = "ptbr corpus clean ...",
    log: Callable[[str], None] = print,
) -> Report:
    """Deduplicate and filter the ``count`` parts in ``work`` into ``output`` (see the module docstring)."""
    t0 = time.perf_counter()
    records = check_parts(work, count, plan.part_key(count), rerun)
    parts = [work / PartSpec(i, count).dirname() for i in range(count)]
    report = Report(config=cfg.model_dump(), key=plan.key)
    for part in parts:
        report.add(json.loads((part / "report.json").read_text()))
    report.read["files"] = len(plan.files)  # a file read by several parts (row groups) counts once
    report.timing["parts"] = [{"seconds": r["seconds"], "documents": r["documents"]} for r in records]
    if count > 1:
        for r in records:
            log(
                f"clean: part {r['part']}/{count}: {r['documents']:,} documents read, {r['candidates']:,} kept before "
                f"deduplication, {r['seconds']:,.1f} s"
            )
    scratch = work / "merge"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        with phase(report.timing, "pairs", log) as info:
            info.update(write_all_pairs(parts, band_names(cfg), scratch, memory))
        with phase(report.timing, "clusters", log) as info:
            removed_path, counts = write_removed(scratch)
            info.update(counts)
        documents = report.read.get("documents", 0)
        if documents == 0:
            raise DataError(
                f"no documents in the {len(plan.files)} input file(s) (supported: .txt, .jsonl, "
                "optionally .gz or .zst, .parquet)"
            )
        with _staged(output, dry_run) as tmp:
            with phase(report.timing, "filter", log):
                out = _Output(tmp)
                removed = SortedReader(removed_path, REMOVED, "doc")
                try:
                    for part in parts:
                        _filter_part(part, removed, out, report)
                finally:
                    out.close()
            _check_result(report, documents, dry_run, log)
            report.seconds = sum(r["seconds"] for r in records) + time.perf_counter() - t0
            if tmp is not None:
                text = json.dumps(report.as_dict(), indent=2, ensure_ascii=False) + "\n"
                atomic_write_text(tmp / "report.json", text)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report


@contextmanager
def _staged(output: Path | None, dry_run: bool) -> Iterator[Path | None]:
    if dry_run or output is None:
        yield None
        return
    with staged_directory(output) as tmp:
        yield tmp


def _check_result(report: Report, documents: int, dry_run: bool, log: Callable[[str], None]) -> None:
    invalid = report.read.get("invalid_utf8_replaced", 0)
    if invalid:
        log(
            f"clean: warning: {invalid:,} invalid UTF-8 sequences were replaced with U+FFFD (a file in "
            "another encoding? convert it first, e.g. iconv -f latin1 -t utf-8); bad records skipped: "
            f"{report.read.get('bad_records_skipped', 0):,}"
        )
    if report.totals("near_dedup")[0] == 0 and not dry_run:
        top = max(report.dropped, key=report.dropped.get)  # type: ignore[arg-type]
        raise DataError(
            f"every one of the {documents:,} documents was dropped (most by {top}); nothing "
            "written: check the thresholds with --dry-run and the report's examples"
        )
