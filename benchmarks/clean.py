"""Corpus cleaning throughput.

MB/s of ``ptbr corpus clean`` (all steps, all cores) on a generated Portuguese-like corpus, against a plain
baseline doing the least any cleaning does: read the documents, NFC, an exact-dedup hash set. The
deduplication's memory and disk at several corpus sizes (and datatrove's MinHash stages beside it) are
``benchmarks/dedup.py``; parts and merges at 1, 2 and 4 parts are ``benchmarks/parts.py``.

    python benchmarks/clean.py [--docs 20000] [--json out/clean.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import print_table, write_report  # noqa: E402


def corpus(root: Path, docs: int) -> Path:
    from ptbr.devtools.sample_text import portuguese_documents

    root.mkdir(parents=True)
    for part in range(2):
        texts = portuguese_documents(docs // 2, seed=part)
        (root / f"part{part}.jsonl").write_text(
            "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
        )
    return root


def baseline(inputs: Path) -> float:
    from ptbr.data.corpus import ReadStats, discover_inputs, iter_documents

    t0 = time.perf_counter()
    seen = set()
    for text in iter_documents(discover_inputs([inputs]), ReadStats()):
        seen.add(hashlib.blake2b(unicodedata.normalize("NFC", text).encode(), digest_size=16).digest())
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from ptbr.clean.config import CleanConfig
    from ptbr.clean.pipeline import clean

    with tempfile.TemporaryDirectory(prefix="ptbr-bench-clean-") as tmp_s:
        tmp = Path(tmp_s)
        inputs = corpus(tmp / "in", args.docs)
        mb = sum(f.stat().st_size for f in inputs.iterdir()) / 1e6
        base_s = baseline(inputs)
        t0 = time.perf_counter()
        report = clean([str(inputs)], str(tmp / "out"), CleanConfig(), workers=args.workers, log=lambda _m: None)
        clean_s = time.perf_counter() - t0
    rows = [
        {"case": "baseline: read + NFC + exact hash", "MB": mb, "seconds": base_s, "MB_per_s": mb / base_s},
        {
            "case": f"ptbr corpus clean, all steps, {args.workers} workers",
            "MB": mb,
            "seconds": clean_s,
            "MB_per_s": mb / clean_s,
            "kept_docs": report.totals("near_dedup")[0],
        },
    ]
    print(f"\ncleaning {args.docs:,} generated documents ({mb:.1f} MB)")
    print_table(rows, ["case", "MB", "seconds", "MB_per_s", "kept_docs"])
    write_report(args.json, "clean", rows)


if __name__ == "__main__":
    main()
