"""Throughput of ``corpus clean`` and ``shards build`` in 1, 2 and 4 parts (a CPU proxy for N Slurm nodes).

Every part is its own process with one worker, all parts of a run at once (as array tasks on N nodes with
one core each), then the merge. On a machine with fewer cores than parts the parts share them, so the table
also gives the parts' wall time scaled by min(1, cores / parts): what N separate nodes would take. The merge
is serial whatever N: its share is what does not scale. The cleaned output is checked to be identical at
every N.

    python benchmarks/parts.py [--docs 8000] [--parts 1,2,4] [--json out/parts.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import print_table, write_report  # noqa: E402
from benchmarks.dedup import du, make_corpus, run_measured  # noqa: E402

ENV = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_parts(base: list[str], n: int) -> dict[str, Any]:
    """N part processes at once; wall time until the last ends, and each one's CPU seconds."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*base, "--part", f"{i}/{n}", "--workers", "1"],
            cwd=REPO,
            env={**os.environ, **ENV},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    cpu = []
    for p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"part failed: {p.stderr.read()[-2000:] if p.stderr else ''}")
        cpu.append(usage.ru_utime + usage.ru_stime)
    return {"seconds": time.perf_counter() - t0, "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=8000)
    ap.add_argument("--parts", default="1,2,4")
    ap.add_argument("--steps", default="clean,shards", help="clean, shards or both")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ptbr-bench-parts-") as tmp_s:
        tmp = Path(tmp_s)
        make_corpus(tmp / "in", args.docs)
        mb = du(tmp / "in") / 1e6
        run_measured(
            [
                sys.executable,
                "-m",
                "ptbr.cli",
                "tokenizer",
                "train",
                "--input",
                str(tmp / "in"),
                "--output",
                str(tmp / "tok.json"),
                "--vocab-size",
                "4000",
                "--quiet",
            ],
            ENV,
        )
        cleaned: dict[str, bytes] | None = None
        for n in (int(x) for x in args.parts.split(",")):
            steps = {
                "corpus clean": ["corpus", "clean", "--input", str(tmp / "in"), "--output", str(tmp / f"clean-{n}")],
                "shards build": [
                    "shards",
                    "build",
                    "--input",
                    str(tmp / "in"),
                    "--tokenizer",
                    str(tmp / "tok.json"),
                    "--output",
                    str(tmp / f"ds-{n}"),
                    "--seq-len",
                    "512",
                    "--val-fraction",
                    "0.02",
                    "--quiet",
                ],
            }
            for step, cmd in steps.items():
                if {"corpus clean": "clean", "shards build": "shards"}[step] not in args.steps.split(","):
                    continue
                base = [sys.executable, "-m", "ptbr.cli", *cmd]
                parts = run_parts(base, n)
                merge = run_measured([*base, "--merge", str(n)], ENV)
                scaled = parts["seconds"] * min(1.0, cores / n)
                extra = {}
                if step == "shards build":
                    manifest = json.loads((tmp / f"ds-{n}" / "manifest.json").read_text())
                    extra = {
                        "tokens": manifest["stats"]["tokens"],
                        "tokens_per_s_scaled": manifest["stats"]["tokens"] / (scaled + merge["seconds"]),
                        "stored_bytes_per_token": sum(s["bytes"] for s in manifest["splits"].values())
                        / manifest["stats"]["tokens"],
                    }
                rows.append(
                    {
                        "step": step,
                        "parts": n,
                        "MB": mb,
                        "parts_s": parts["seconds"],
                        "parts_cpu_s": sum(parts["cpu"]),
                        "parts_s_scaled": scaled,
                        "merge_s": merge["seconds"],
                        "merge_cpu_s": merge["cpu_s"],
                        "merge_rss_MiB": merge["peak_rss"] / 2**20,
                        "total_s_scaled": scaled + merge["seconds"],
                        "MB_per_s_scaled": mb / (scaled + merge["seconds"]),
                        "MB_per_s_per_part": mb / n / scaled,
                        **extra,
                    }
                )
                print(
                    f"{step}, {n} part(s): parts {parts['seconds']:.1f} s, merge {merge['seconds']:.1f} s", flush=True
                )
            files = {p.name: p.read_bytes() for p in sorted((tmp / f"clean-{n}").glob("*.jsonl"))}
            if cleaned and files != cleaned:
                raise AssertionError(f"the cleaned corpus in {n} parts differs from 1 part")
            cleaned = files
            shutil.rmtree(tmp / f"clean-{n}.parts", ignore_errors=True)
            shutil.rmtree(tmp / f"ds-{n}.parts", ignore_errors=True)
    print(f"\n{args.docs:,} generated documents ({mb:.1f} MB), {cores} core(s); parts run at once, one worker each")
    print_table(
        rows,
        [
            "step",
            "parts",
            "parts_s",
            "parts_cpu_s",
            "parts_s_scaled",
            "merge_s",
            "merge_rss_MiB",
            "MB_per_s_scaled",
            "MB_per_s_per_part",
        ],
    )
    write_report(args.json, "parts", rows, {"docs": args.docs, "cores": cores, "identical_clean_output": True})


if __name__ == "__main__":
    main()
