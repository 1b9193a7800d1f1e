"""``ptbr shards verify PATH_OR_S3_URL``: every shard, hash, sample count and token id; exit 1 on problems."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="PATH_OR_S3_URL", help="dataset directory or s3://bucket/prefix")
    parser.add_argument("--jobs", type=int, default=4, help="shards checked in parallel")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    from ptbr.data.verify import verify
    from ptbr.progress import human_bytes

    report = verify(args.source, jobs=args.jobs, progress=not args.quiet)
    if report.ok:
        print(
            f"OK {report.source}: {report.shards} shards, {report.samples} samples, "
            f"{human_bytes(report.bytes)} verified"
        )
        return 0
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)
    print(f"ptbr: error: {report.source}: {len(report.problems)} problem(s) found", file=sys.stderr)
    return 1
