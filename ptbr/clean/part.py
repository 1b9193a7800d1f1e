"""One part of ``ptbr corpus clean``: the per-document steps over the part's units, results on disk.

In worker processes (``imap`` keeps the input order): repair, language, quality, and for the survivors
their deduplication keys (:mod:`ptbr.clean.signatures`). Everything a document's fate depends on here is
computed from it alone, so neither the worker count nor the part count changes the result.

The part directory holds ``docs.jsonl`` (the survivors, as the output will hold them), ``keys.bin``
(each survivor's document key and size), ``units.json`` (how many survivors each unit gave), ``sig/`` (the
sorted key runs), ``report.json`` (this part's counts and examples) and, last, ``DONE.json``
(:mod:`ptbr.data.parts`). Nothing is deduplicated yet: that needs every part (:mod:`ptbr.clean.merge`).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from ptbr.clean import rules
from ptbr.clean.config import CleanConfig
from ptbr.clean.report import STEPS, Report
from ptbr.clean.signatures import SignatureWriter, band_names, doc_key, keys_of, spill_docs_for
from ptbr.data.corpus import InputFile, ReadStats, Unit, discover_inputs, iter_units, units_of
from ptbr.data.hashing import sha256_json
from ptbr.data.parts import PartSpec, assign, finish_part, part_is_done, start_part
from ptbr.fsutil import atomic_write_text

CANDIDATE = np.dtype([("doc", "<u8"), ("nbytes", "<u4")])
KEYS_BLOCK = 1 << 16


@dataclass
class Verdict:
    """What the per-document stage decided (computed in a worker)."""

    text: str
    rule: str | None  # the rule that dropped it, or None
    step: str | None = None  # the step whose rule dropped it
    keys: list[int] | None = None  # deduplication keys (signatures.band_names order)
    in_bytes: int = 0  # UTF-8 size before repair


@dataclass
class CleanPlan:
    """The inputs cut into units and the identity of a cleaning job (inputs, config, reader settings)."""

    files: list[InputFile]
    units: list[Unit]
    key: str  # same inputs and config -> same key (the report's "key", whatever the part count)

    def part_key(self, count: int) -> str:
        return sha256_json({"key": self.key, "parts": count, "units": [u.size for u in self.units]})

    def units_for(self, spec: PartSpec) -> list[Unit]:
        owner = assign([u.size for u in self.units], spec.count)
        return [u for u, p in zip(self.units, owner) if p == spec.index]


def make_plan(inputs: list[str], cfg: CleanConfig, text_field: str = "text", txt_docs: str = "file") -> CleanPlan:
    files = sorted(discover_inputs(inputs), key=lambda f: f.rel)
    stamp = [(str(f.path.resolve()), f.size, f.path.stat().st_mtime_ns) for f in files]
    key = sha256_json([cfg.model_dump(), stamp, text_field, txt_docs])
    return CleanPlan(files, units_of(files, text_field), key)


# ------------------------------------------------------------------------------- the per-document stage
_CFG: CleanConfig | None = None


def _use_config(cfg: CleanConfig) -> None:
    global _CFG
    _CFG = cfg


def _init_worker(cfg: CleanConfig) -> None:
    """Pool workers: Ctrl-C is the parent's to handle (it stops the pool); SIGTERM keeps its default action,
    which is how ``Pool.terminate`` stops workers."""

    _use_config(cfg)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def judge(text: str, cfg: CleanConfig | None = None) -> Verdict:
    cfg = cfg or _CFG
    assert cfg is not None
    if cfg.repair.enabled:
        text = rules.repair(text, cfg)
        if not text:
            return Verdict(text, "empty_after_repair", "repair")
    if cfg.language.enabled:
        lang, score = rules.language(text)
        if lang not in cfg.language.keep or score < cfg.language.min_score:
            return Verdict(text, f"language:{lang}" if lang not in cfg.language.keep else "language_score", "language")
    if cfg.quality.enabled:
        failed = rules.quality_failure(text, cfg)
        if failed:
            return Verdict(text, f"quality:{failed}", "quality")
    return Verdict(text, None, None, keys_of(text, cfg))


def _judge_tagged(item: tuple[tuple[int, int], str]) -> tuple[tuple[int, int], Verdict]:
    tag, text = item
    verdict = judge(text)
    verdict.in_bytes = len(text.encode())
    return tag, verdict


def _tagged(
    units: list[Unit], stats: ReadStats, text_field: str, txt_docs: str
) -> Iterator[tuple[tuple[int, int], str]]:
    position, current = 0, -1
    for unit, text in iter_units(units, stats, text_field=text_field, txt_docs=txt_docs):
        if unit.index != current:
            position, current = 0, unit.index
        yield (unit.index, position), text
        position += 1


# ------------------------------------------------------------------------------- the part
def run_part(
    plan: CleanPlan,
    spec: PartSpec,
    work: Path,
    cfg: CleanConfig,
    *,
    workers: int,
    text_field: str = "text",
    txt_docs: str = "file",
    log: Callable[[str], None] = print,
    progress_every: float = 10.0,
    memory: int = 512 << 20,
) -> dict[str, Any]:
    """Clean part ``spec`` into ``work``; returns its DONE record (at once when it is done already)."""
    directory = work / spec.dirname()
    plan_key = plan.part_key(spec.count)
    label = "clean" if spec.count == 1 else f"clean part {spec}"
    done = part_is_done(directory, plan_key)
    if done is not None:
        log(
            f"{label}: done already ({done['documents']:,} documents read, {done['candidates']:,} before "
            "deduplication); nothing to do"
        )
        return done
    start_part(directory)
    units = plan.units_for(spec)
    total = sum(u.size for u in units) or 1
    if spec.count > 1:
        log(f"{label}: {len(units)} of {len(plan.units)} unit(s), {total / 1e6:,.1f} MB, {workers} worker(s)")
    t0 = time.perf_counter()
    report = Report(config=cfg.model_dump(), key=plan.key)
    stats = ReadStats()
    names = band_names(cfg)
    sig = SignatureWriter(directory / "sig", names, spill_docs_for(memory, len(names)))
    counts = {u.index: 0 for u in units}
    sources = {u.index: u.file.rel for u in units}
    candidates, last = 0, time.monotonic()
    keys = np.empty(KEYS_BLOCK, dtype=CANDIDATE)
    pool = None
    with open(directory / "docs.jsonl", "w", encoding="utf-8") as docs_f, open(directory / "keys.bin", "wb") as keys_f:
        try:
            if workers > 1:
                pool = get_context("forkserver").Pool(workers, initializer=_init_worker, initargs=(cfg,))
            _use_config(cfg)
            tagged = _tagged(units, stats, text_field, txt_docs)
            results = pool.imap(_judge_tagged, tagged, chunksize=32) if pool else map(_judge_tagged, tagged)
            for (unit, position), verdict in results:
                source = sources[unit]
                report.count(source, "read", verdict.in_bytes)
                text, step = verdict.text, verdict.step
                out_bytes = len(text.encode())
                for passed in STEPS[1:4] if step is None else STEPS[1 : STEPS.index(step)]:
                    report.count(source, passed, out_bytes)
                if verdict.rule is not None:
                    report.drop(source, verdict.rule, text)
                else:
                    doc = doc_key(unit, position)
                    docs_f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                    keys[candidates % KEYS_BLOCK] = (doc, out_bytes)
                    candidates += 1
                    if candidates % KEYS_BLOCK == 0:
                        keys.tofile(keys_f)
                    sig.add(doc, verdict.keys or [])
                    counts[unit] += 1
                if time.monotonic() - last > progress_every:
                    last = time.monotonic()
                    rate = stats.bytes_read / (time.perf_counter() - t0)
                    log(
                        f"{label}: {stats.documents:,} documents, {stats.bytes_read / 1e6:,.1f} of {total / 1e6:,.1f} "
                        f"MB read ({rate / 1e6:.2f} MB/s, eta {(total - stats.bytes_read) / max(rate, 1):.0f} s)"
                    )
            if pool:
                pool.close()
                pool.join()
                pool = None
        finally:
            if pool is not None:  # an error mid-way: stop the workers now
                pool.terminate()
                pool.join()
        keys[: candidates % KEYS_BLOCK].tofile(keys_f)
    sig.close()
    report.read = stats.to_dict()
    report.seconds = time.perf_counter() - t0
    atomic_write_text(
        directory / "units.json",
        json.dumps([{"unit": u.index, "source": u.file.rel, "candidates": counts[u.index]} for u in units]) + "\n",
    )
    atomic_write_text(directory / "report.json", json.dumps(report.as_dict(), ensure_ascii=False) + "\n")
    record = finish_part(
        directory,
        plan_key,
        spec,
        {
            "documents": stats.documents,
            "candidates": candidates,
            "bytes_read": stats.bytes_read,
            "seconds": round(report.seconds, 3),
            "invalid_utf8": stats.invalid_utf8,
        },
    )
    if spec.count > 1:
        log(
            f"{label}: done in {report.seconds:,.1f} s: {stats.documents:,} documents read, {candidates:,} kept "
            f"before deduplication ({stats.bytes_read / 1e6 / max(report.seconds, 1e-9):.2f} MB/s)"
        )
    return record
