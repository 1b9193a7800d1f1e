"""``ptbr corpus clean``: documents in, cleaned documents and a report out.

Order of work, and why:
1. per document, in worker processes (``imap`` keeps the input order): repair, language, quality, and
   for the survivors the exact-dedup key and the MinHash signature. Everything a document's fate
   depends on is computed from it alone, so the parallelism cannot change the result.
2. in this process, in the stable input order (inputs sorted by path, documents in file order): exact
   dedup (a set of 16-byte hashes) and near dedup (MinHash LSH: the index holds signatures, never
   texts). The first of a group is kept.
3. the output goes into a temporary directory that is renamed to ``--output`` only when complete
   (one ``.jsonl`` per input file, ``report.json``); ``--dry-run`` writes nothing but the report.

Deterministic: same inputs + same config -> byte-identical output (fixed MinHash seed, ordered map).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from ptbr.clean import rules
from ptbr.clean.config import CleanConfig
from ptbr.data.corpus import InputFile, ReadStats, discover_inputs, iter_documents
from ptbr.data.hashing import blake2b_128, sha256_bytes
from ptbr.errors import DataError, PtbrError
from ptbr.fsutil import atomic_write_text, replace_directory

STEPS = ("read", "repair", "language", "quality", "exact_dedup", "near_dedup")
EXAMPLES_PER_RULE = 3
EXAMPLE_CHARS = 240


@dataclass
class Verdict:
    """What the per-document stage decided (computed in a worker)."""

    text: str
    rule: str | None  # the rule that dropped it, or None
    step: str | None = None  # the step whose rule dropped it
    key: bytes | None = None  # exact-dedup hash of the normalised text
    signature: Any = None  # datasketch MinHash
    in_bytes: int = 0  # UTF-8 size before repair


@dataclass
class Report:
    config: dict[str, Any]
    key: str | None = None  # inputs + config identity (clean_once reuses a matching output)
    sources: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # source -> step -> counts
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=lambda: defaultdict(list))
    read: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def count(self, source: str, step: str, nbytes: int) -> None:
        c = self.sources.setdefault(source, {}).setdefault(step, {"documents": 0, "bytes": 0})
        c["documents"] += 1
        c["bytes"] += nbytes

    def drop(self, source: str, rule: str, text: str) -> None:
        self.dropped[rule] = self.dropped.get(rule, 0) + 1
        if len(self.examples[rule]) < EXAMPLES_PER_RULE:
            self.examples[rule].append({"source": source, "text": text[:EXAMPLE_CHARS]})

    def totals(self, step: str) -> tuple[int, int]:
        docs = sum(s.get(step, {}).get("documents", 0) for s in self.sources.values())
        nbytes = sum(s.get(step, {}).get("bytes", 0) for s in self.sources.values())
        return docs, nbytes

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "config": self.config, "read": self.read, "seconds": round(self.seconds, 3),
                "steps_kept": {step: dict(zip(("documents", "bytes"), self.totals(step))) for step in STEPS},
                "dropped_by_rule": dict(sorted(self.dropped.items())), "sources": self.sources,
                "examples": dict(sorted(self.examples.items()))}


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
    key = signature = None
    if cfg.exact_dedup.enabled:
        key = blake2b_128(rules.normalized_for_dedup(text).encode())
    if cfg.near_dedup.enabled:
        from datasketch import MinHash

        nd = cfg.near_dedup
        m = MinHash(num_perm=nd.bands * nd.rows, seed=nd.seed)
        m.update_batch(list(rules.shingles(text, nd.ngram)))
        signature = m
    return Verdict(text, None, None, key, signature)


def _judge_tagged(item: tuple[str, str]) -> tuple[str, Verdict]:
    source, text = item
    verdict = judge(text)
    verdict.in_bytes = len(text.encode())
    return source, verdict


# ------------------------------------------------------------------------------- the whole
def _documents(files: list[InputFile], stats: ReadStats, text_field: str, txt_docs: str) -> Iterator[tuple[str, str]]:
    for f in files:
        for text in iter_documents([f], stats, text_field=text_field, txt_docs=txt_docs):
            yield f.rel, text


def clean(inputs: list[str], output: str | None, cfg: CleanConfig, *, workers: int | None = None,
          text_field: str = "text", txt_docs: str = "file", overwrite: bool = False, dry_run: bool = False,
          log: Callable[[str], None] = print, key: str | None = None) -> Report:
    files = sorted(discover_inputs(inputs), key=lambda f: f.rel)
    out = Path(output) if output else None
    if not dry_run:
        if out is None:
            raise PtbrError("--output is required (or --dry-run for the report only)")
        if out.exists() and not overwrite:
            raise PtbrError(f"{out} already exists; pass --overwrite to replace it")
    report = Report(config=cfg.model_dump(), key=key)
    stats = ReadStats()
    t0 = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    tmp = None
    writers: dict[str, Any] = {}
    if not dry_run and out is not None:
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    lsh = pool = None
    if cfg.near_dedup.enabled:
        from datasketch import MinHashLSH

        nd = cfg.near_dedup
        lsh = MinHashLSH(num_perm=nd.bands * nd.rows, params=(nd.bands, nd.rows))
    seen: set[bytes] = set()
    total_bytes = sum(f.size for f in files) or 1
    last = time.monotonic()
    try:
        ctx = get_context("forkserver" if workers > 1 else "fork")
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(cfg,)) if workers > 1 else None
        _use_config(cfg)
        docs = _documents(files, stats, text_field, txt_docs)
        results = pool.imap(_judge_tagged, docs, chunksize=32) if pool else map(_judge_tagged, docs)
        for index, (source, verdict) in enumerate(results):
            text = verdict.text
            report.count(source, "read", verdict.in_bytes)
            rule, step = verdict.rule, verdict.step
            if rule is None and verdict.key is not None:
                if verdict.key in seen:
                    rule, step = "exact_duplicate", "exact_dedup"
                seen.add(verdict.key)
            if rule is None and lsh is not None:
                if lsh.query(verdict.signature):
                    rule, step = "near_duplicate", "near_dedup"
                else:  # the index keeps the band hashes only, not the document
                    lsh.insert(str(index), verdict.signature)
            passed = STEPS[1:] if step is None else STEPS[1:STEPS.index(step)]
            out_bytes = len(text.encode())
            for step in passed:
                report.count(source, step, out_bytes)
            if rule is not None:
                report.drop(source, rule, text)
                continue
            if tmp is not None:
                name = source.rsplit(".", 2)[0] if source.endswith((".gz", ".zst")) else source.rsplit(".", 1)[0]
                w = writers.get(source)
                if w is None:
                    path = tmp / f"{name}.jsonl"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    w = writers[source] = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in finally
                w.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            if time.monotonic() - last > 5:
                last = time.monotonic()
                rate = stats.bytes_read / (time.perf_counter() - t0)
                eta = (total_bytes - stats.bytes_read) / max(rate, 1)
                log(f"clean: {stats.documents:,} documents, {stats.bytes_read / 1e6:,.1f} MB read "
                    f"({rate / 1e6:.2f} MB/s, eta {eta:.0f} s)")
        if pool:
            pool.close()
            pool.join()
            pool = None
        for w in writers.values():
            w.close()
        report.read = stats.to_dict()
        report.seconds = time.perf_counter() - t0
        if stats.invalid_utf8:
            log(f"clean: warning: {stats.invalid_utf8:,} invalid UTF-8 sequences were replaced with U+FFFD (a file in "
                "another encoding? convert it first, e.g. iconv -f latin1 -t utf-8); bad records skipped: "
                f"{stats.bad_records:,}")
        kept = report.totals("near_dedup")[0]
        if stats.documents == 0:
            raise DataError(f"no documents in {', '.join(map(str, inputs))} (supported: .txt, .jsonl, optionally "
                            ".gz or .zst)")
        if kept == 0 and not dry_run:
            top = max(report.dropped, key=report.dropped.get)
            raise DataError(f"every one of the {stats.documents:,} documents was dropped (most by {top}); nothing "
                            "written: check the thresholds with --dry-run and the report's examples")
        if tmp is not None and out is not None:
            atomic_write_text(tmp / "report.json", json.dumps(report.as_dict(), indent=2, ensure_ascii=False) + "\n")
            replace_directory(tmp, out)
            tmp = None
        return report
    finally:
        if pool is not None:  # an error mid-way: stop the workers now
            pool.terminate()
            pool.join()
        for w in writers.values():
            w.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def input_key(inputs: list[str], cfg: CleanConfig) -> str:
    """Identity of a cleaning job: the config and every input file's path, size and modification time."""
    files = sorted(discover_inputs(inputs), key=lambda f: f.rel)
    stamp = [(str(f.path.resolve()), f.size, f.path.stat().st_mtime_ns) for f in files]
    return sha256_bytes(json.dumps([cfg.model_dump(), stamp], sort_keys=True).encode())


def clean_once(inputs: list[str], output: str, cfg: CleanConfig, log: Callable[[str], None] = print,
               **kwargs: Any) -> Path:
    """:func:`clean` unless ``output`` already holds the result of these inputs and config (report key)."""
    key = input_key(inputs, cfg)
    report_path = Path(output) / "report.json"
    if report_path.is_file():
        try:
            if json.loads(report_path.read_text()).get("key") == key:
                log(f"clean: {output} is up to date (same inputs and config); reusing it")
                return Path(output)
        except json.JSONDecodeError:
            pass
    report = clean(inputs, output, cfg, overwrite=True, log=log, key=key, **kwargs)
    print_report(report, log)
    return Path(output)


def print_report(report: Report, write: Callable[[str], None] = print) -> None:
    write(f"{'step':<12} {'documents':>10} {'MB':>9}")
    for step in STEPS:
        docs, nbytes = report.totals(step)
        write(f"{step:<12} {docs:>10,} {nbytes / 1e6:>9.2f}")
    write("dropped by rule: " + (", ".join(f"{k} {v:,}" for k, v in sorted(report.dropped.items())) or "none"))
