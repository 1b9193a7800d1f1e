"""``ptbr bench EXPORT [EXPORT ...]``: lm-evaluation-harness tasks on exported models, one comparison table."""

from __future__ import annotations

import argparse
import json


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("exports", nargs="+", metavar="EXPORT", help="directories written by ptbr export")
    parser.add_argument(
        "--tasks", default=None, help="a suite (default: ptbr_core, see README) or task/group names separated by commas"
    )
    parser.add_argument(
        "--limit",
        type=float,
        default=None,
        help="at most N examples per task (a fraction < 1: that share); for quick checks",
    )
    parser.add_argument("--num-fewshot", type=int, default=None, help="examples in the prompt (default: the task's)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto")
    parser.add_argument("--batch-size", type=int, default=8, help="requests scored together")
    parser.add_argument(
        "--include-path",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory of lm-eval task YAML files (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the records as JSON lines instead of the table")


def run(args: argparse.Namespace) -> int:
    from ptbr.errors import PtbrError

    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise PtbrError("ptbr bench needs lm-evaluation-harness: pip install 'ptbr[bench]'") from None
    from ptbr.bench.results import comparison_table
    from ptbr.infer.bench import bench_exports

    if args.limit is not None and args.limit <= 0:
        raise PtbrError(f"--limit must be > 0, got {args.limit:g}")
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    records = bench_exports(
        args.exports,
        args.tasks,
        limit=limit,
        num_fewshot=args.num_fewshot,
        device=args.device,
        batch_size=args.batch_size,
        include=args.include_path,
    )
    if args.json:
        for record in records:
            print(json.dumps(record))
    else:
        print(comparison_table(records, [str(p) for p in args.exports]))
    return 0
