"""Exact + near deduplication at scale: ptbr's parts and merge against datatrove's four MinHash stages.

Both run on the same generated corpus (Portuguese-like documents, 5 % exact copies with other case and
spacing, 5 % near copies with one word changed, spread over 8 .jsonl files) at several sizes. Every stage
runs in its own process; the table gives its wall time, its peak RSS (the largest of its processes) and
the bytes it leaves on disk.

ptbr:       part (read, exact key, MinHash, signatures on disk; the other cleaning steps switched off)
            -> merge: band merge (duplicate pairs) -> clusters -> filter (its phases, from the merge log)
datatrove:  signatures -> buckets -> clusters -> filter (MinhashDedup*, 14 x 8, 5-grams, 64-bit xxhash,
            its Portuguese word tokenizer), run by its LocalPipelineExecutor

    python benchmarks/dedup.py --sizes 5000,50000,500000 [--datatrove-python PY] [--json out/dedup.json]

datatrove needs huggingface_hub >= 1.6, which the ptbr environment cannot hold (transformers 4.x pins
< 1.0): install it in a separate venv (`python -m venv dt && dt/bin/pip install datatrove spacy regex`)
and pass its interpreter with --datatrove-python.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FILES = 8


# ------------------------------------------------------------------------------------------- the corpus
def make_corpus(root: Path, docs: int, seed: int = 0) -> dict[str, int]:
    """``docs`` documents over FILES .jsonl files; returns how many copies of each kind were planted."""
    sys.path.insert(0, str(REPO))
    from ptbr.devtools.sample_text import portuguese_document

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = [open(root / f"part-{i:02d}.jsonl", "w", encoding="utf-8") for i in range(FILES)]  # noqa: SIM115
    made: list[str] = []
    planted = {"exact": 0, "near": 0}
    for i in range(docs):
        r = rng.random()
        if made and r < 0.05:
            text = "  " + rng.choice(made).upper()
            planted["exact"] += 1
        elif made and r < 0.10:
            words = rng.choice(made).split(" ")
            words[rng.randrange(len(words))] = "palavra"
            text = " ".join(words)
            planted["near"] += 1
        else:
            text = portuguese_document(rng, min_sentences=4, max_sentences=12)
            if len(made) < 100_000:
                made.append(text)
            else:
                made[rng.randrange(len(made))] = text
        out[i * FILES // docs].write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    for f in out:
        f.close()
    return planted


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd``: wall seconds, CPU seconds and the peak RSS of its largest process (it, or a child it waited
    for), from wait4's resource usage of this one child."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, **(env or {})}, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return {
        "seconds": seconds,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss": usage.ru_maxrss * 1024,
        "stdout": stdout,
        "stderr": stderr,
    }


# ------------------------------------------------------------------------------------------- datatrove
def datatrove_stage(stage: str, corpus: Path, work: Path, tasks: int, workers: int) -> None:
    """One datatrove stage in this process (run under an interpreter that has datatrove)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    cfg = MinhashConfig(
        n_grams=5, num_buckets=14, hashes_per_bucket=8, seed=1, hash_config=HashConfig(precision=64, hash_fc="xxhash")
    )

    def reader():
        return JsonlReader(str(corpus), glob_pattern="*.jsonl", compression=None)

    if stage == "signatures":
        pipeline = [reader(), MinhashDedupSignature(str(work / "sigs"), config=cfg, language="por")]
        n, w = tasks, workers
    elif stage == "buckets":
        pipeline, n, w = [MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=cfg)], 14, workers
    elif stage == "clusters":
        pipeline, n, w = [MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=cfg)], 1, 1
    else:
        pipeline = [
            reader(),
            MinhashDedupFilter(str(work / "remove")),
            JsonlWriter(str(work / "out"), compression=None),
        ]
        n, w = tasks, workers
    LocalPipelineExecutor(pipeline, tasks=n, workers=w, logging_dir=str(work / "logs" / stage)).run()


def count_lines(path: Path) -> int:
    return sum(sum(1 for _ in open(f, encoding="utf-8")) for f in sorted(path.rglob("*.jsonl")))


def run_datatrove(python: str, corpus: Path, work: Path, workers: int) -> list[dict[str, Any]]:
    rows = []
    for stage in ("signatures", "buckets", "clusters", "filter"):
        r = run_measured(
            [
                python,
                __file__,
                "--datatrove-stage",
                stage,
                "--corpus",
                str(corpus),
                "--work",
                str(work),
                "--workers",
                str(workers),
            ]
        )
        disk = {"signatures": "sigs", "buckets": "buckets", "clusters": "remove", "filter": "out"}[stage]
        rows.append(
            {
                "tool": "datatrove",
                "stage": stage,
                "seconds": r["seconds"],
                "cpu_s": r["cpu_s"],
                "peak_rss": r["peak_rss"],
                "disk": du(work / disk),
            }
        )
    rows[-1]["kept"] = count_lines(work / "out")
    return rows


# ------------------------------------------------------------------------------------------- the cluster step alone
def cluster_inputs(root: Path, docs: int, pairs: int, seed: int = 0) -> None:
    """The same random duplicate pairs among ``docs`` documents in both formats: datatrove's 14 .dups files
    ((file, doc, file, doc) as 4 uint32) and ptbr's pairs file ((first, other) as 2 uint64)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a = rng.integers(0, docs, pairs, dtype=np.uint64)
    b = rng.integers(0, docs, pairs, dtype=np.uint64)
    a, b = np.minimum(a, b), np.maximum(a, b)
    keep = a != b
    a, b = a[keep], b[keep]
    (root / "dt").mkdir(parents=True, exist_ok=True)
    for band, idx in enumerate(np.array_split(np.arange(len(a)), 14)):
        rec = np.zeros((len(idx), 4), dtype="<u4")
        rec[:, 0], rec[:, 1], rec[:, 2], rec[:, 3] = a[idx] >> 20, a[idx] & 0xFFFFF, b[idx] >> 20, b[idx] & 0xFFFFF
        rec.tofile(root / "dt" / f"{band:05d}_00.dups")
    out = np.empty(len(a), dtype=[("first", "<u8"), ("other", "<u8")])
    out["first"], out["other"] = a, b
    out.tofile(root / "pairs-near.bin")


def cluster_stage(tool: str, root: Path) -> None:
    if tool == "ptbr":
        from ptbr.clean.dedup import cluster_removed

        print(len(cluster_removed(root / "pairs-near.bin")))
        return
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import MinhashDedupCluster

    LocalPipelineExecutor(
        [MinhashDedupCluster(str(root / "dt"), str(root / "dt-remove"))],
        tasks=1,
        workers=1,
        logging_dir=str(root / "dt-logs"),
    ).run()


def run_clusters(python: str | None, root: Path, docs: int, pairs: int) -> list[dict[str, Any]]:
    cluster_inputs(root, docs, pairs)
    rows = []
    for tool, py in (("ptbr", sys.executable), ("datatrove", python)):
        if py is None:
            continue
        r = run_measured([py, __file__, "--cluster-stage", tool, "--work", str(root)], {"PYTHONPATH": str(REPO)})
        rows.append(
            {
                "tool": tool,
                "stage": f"clusters of {pairs:,} pairs",
                "seconds": r["seconds"],
                "cpu_s": r["cpu_s"],
                "peak_rss": r["peak_rss"],
            }
        )
    return rows


# ------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5000,50000,500000")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--datatrove-python", default=None, help="interpreter with datatrove installed")
    ap.add_argument("--skip-ptbr", action="store_true")
    ap.add_argument("--memory", default="512mb", help="ptbr's --dedup-memory (a small one shows the bound)")
    ap.add_argument("--keep", default=None, help="keep the corpora and work directories here")
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--cluster-pairs",
        type=int,
        default=0,
        help="also time the cluster step alone on this many random pairs among 10x as many documents",
    )
    ap.add_argument("--datatrove-stage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cluster-stage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.datatrove_stage:
        datatrove_stage(args.datatrove_stage, Path(args.corpus), Path(args.work), FILES, 1)
        return
    if args.cluster_stage:
        cluster_stage(args.cluster_stage, Path(args.work))
        return

    sys.path.insert(0, str(REPO))
    from benchmarks.common import print_table, write_report

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ptbr-bench-dedup-"))
    rows: list[dict[str, Any]] = []
    try:
        if args.cluster_pairs:
            found = run_clusters(args.datatrove_python, root / "clusters", 10 * args.cluster_pairs, args.cluster_pairs)
            for r in found:
                r["rss_MiB"] = r["peak_rss"] / 2**20
            rows += found
            print_table(found, ["tool", "stage", "seconds", "cpu_s", "rss_MiB"])
        for size in (int(s) for s in args.sizes.split(",") if s):
            corpus = root / f"corpus-{size}"
            if not corpus.is_dir():
                planted = make_corpus(corpus, size)
                (root / f"planted-{size}.json").write_text(json.dumps(planted))
            planted = json.loads((root / f"planted-{size}.json").read_text())
            mb = du(corpus) / 1e6
            found: list[dict[str, Any]] = []
            if not args.skip_ptbr:
                found += [{"docs": size, **r} for r in run_ptbr(corpus, root / f"ptbr-{size}", args.memory)]
            if args.datatrove_python:
                work = root / f"dt-{size}"
                shutil.rmtree(work, ignore_errors=True)
                found += [{"docs": size, **r} for r in run_datatrove(args.datatrove_python, corpus, work, args.workers)]
            for r in found:
                r["MB"] = mb
                r["rss_MiB"] = r["peak_rss"] / 2**20 if r.get("peak_rss") else None
                r["disk_B_per_doc"] = r["disk"] / size
                r["planted_dups"] = planted["exact"] + planted["near"]
            rows += found
            print(
                f"\n{size:,} documents ({mb:.1f} MB), {planted['exact']:,} exact and {planted['near']:,} near "
                "copies planted"
            )
            print_table(found, ["tool", "stage", "seconds", "cpu_s", "rss_MiB", "disk_B_per_doc", "kept"])
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    write_report(args.json, "dedup", rows, {"workers": args.workers, "memory": args.memory})


DEDUP_ONLY = "repair: {enabled: false}\nlanguage: {enabled: false}\nquality: {enabled: false}\n"
PHASE = re.compile(r"clean: (\w+) in ([\d.]+) s \(([\d.]+) s CPU\), peak RSS ([\d.]+) MiB")


def run_ptbr(corpus: Path, work: Path, memory: str) -> list[dict[str, Any]]:
    """One part (in-process, one worker: its CPU time is the work) and the merge, as two processes."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "dedup.yaml").write_text(DEDUP_ONLY)
    base = [
        sys.executable,
        "-m",
        "ptbr.cli",
        "corpus",
        "clean",
        "--config",
        str(work / "dedup.yaml"),
        "--input",
        str(corpus),
        "--output",
        str(work / "out"),
        "--dedup-memory",
        memory,
    ]
    env = {"PYTHONPATH": str(REPO)}
    part = run_measured([*base, "--part", "0/1", "--workers", "1"], env)
    part_dir = work / "out.parts" / "part-00000-of-00001"
    sig_bytes = du(part_dir / "sig") + (part_dir / "keys.bin").stat().st_size
    rows = [
        {
            "tool": "ptbr",
            "stage": "part: signatures",
            "seconds": part["seconds"],
            "cpu_s": part["cpu_s"],
            "peak_rss": part["peak_rss"],
            "disk": sig_bytes,
            "candidates_disk": (part_dir / "docs.jsonl").stat().st_size,
        }
    ]
    merge = run_measured([*base, "--merge", "1"], env)
    out = merge["stdout"] + merge["stderr"]
    pairs = sum(int(x.replace(",", "")) for x in re.findall(r"(?:exact|near) pairs ([\d,]+)", out))
    for name, seconds, cpu, rss in PHASE.findall(out):
        rows.append(
            {
                "tool": "ptbr",
                "stage": f"merge: {name}",
                "seconds": float(seconds),
                "cpu_s": float(cpu),
                "peak_rss": float(rss) * 2**20,
                "disk": pairs * 16 if name == "pairs" else 0,
            }
        )
    rows.append(
        {
            "tool": "ptbr",
            "stage": "merge (process)",
            "seconds": merge["seconds"],
            "cpu_s": merge["cpu_s"],
            "peak_rss": merge["peak_rss"],
            "disk": du(work / "out"),
            "kept": count_lines(work / "out"),
        }
    )
    return rows


if __name__ == "__main__":
    main()
