"""``ptbr corpus clean --input DIR... --output DIR``: repair, language, quality, exact and near dedup, report.

``--part I/N`` runs one part (a Slurm array task: ``slurm/clean_corpus.sh``), ``--merge N`` joins them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_CONFIG = "configs/clean/pt-br.yaml"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="files or directories (.txt, .jsonl, optionally .gz/.zst; .parquet)",
    )
    parser.add_argument("--output", default=None, help="directory to write (one .jsonl per input file + report.json)")
    parser.add_argument(
        "--config",
        default=None,
        help=f"cleaning config (default: {DEFAULT_CONFIG} when present, else the same built-in values)",
    )
    parser.add_argument("--dry-run", action="store_true", help="only the report (printed, and --report PATH)")
    parser.add_argument("--report", default=None, help="also write report.json here")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--text-field", default="text", help="jsonl field or parquet column holding the text")
    parser.add_argument("--txt-docs", default="file", choices=["file", "paragraph", "line"])
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parts = parser.add_mutually_exclusive_group()
    parts.add_argument(
        "--part", default=None, metavar="I/N", help="clean only part I of N (I from 0) into --work; then --merge N"
    )
    parts.add_argument(
        "--merge",
        type=int,
        default=None,
        metavar="N",
        help="deduplicate across the N finished parts in --work and write --output",
    )
    parser.add_argument("--work", default=None, help="where the parts live (default: OUTPUT.parts)")
    parser.add_argument(
        "--dedup-memory",
        default="512mb",
        help="memory for a part's deduplication keys before it writes them, and for one slice of "
        "the duplicate search at the merge (e.g. 512mb); the result does not depend on it",
    )
    parser.add_argument(
        "--progress-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a progress line this often (default 5, with --part 30)",
    )


def run(args: argparse.Namespace) -> int:
    from ptbr.clean.config import CleanConfig
    from ptbr.clean.pipeline import clean, clean_part, merge_parts, print_report
    from ptbr.data.build import parse_size
    from ptbr.data.parts import PartSpec

    cfg = CleanConfig.load(args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None))
    common = {"text_field": args.text_field, "txt_docs": args.txt_docs}
    if args.part is not None:
        spec = PartSpec.parse(args.part)
        clean_part(
            args.input,
            args.output,
            cfg,
            spec,
            work=args.work,
            workers=args.workers,
            progress_every=args.progress_every or 30.0,
            memory=parse_size(args.dedup_memory),
            **common,
        )
        return 0
    if args.merge is not None:
        if args.merge < 1:
            from ptbr.errors import PtbrError

            raise PtbrError(f"--merge needs the number of parts (>= 1), not {args.merge}")
        report = merge_parts(
            args.input,
            args.output,
            cfg,
            args.merge,
            work=args.work,
            overwrite=args.overwrite,
            dry_run=args.dry_run,
            memory=parse_size(args.dedup_memory),
            **common,
        )
        if report is None:
            return 0
    else:
        report = clean(
            args.input,
            args.output,
            cfg,
            workers=args.workers,
            overwrite=args.overwrite,
            dry_run=args.dry_run,
            memory=parse_size(args.dedup_memory),
            progress_every=args.progress_every or 5.0,
            **common,
        )
    print_report(report)
    if args.report:
        Path(args.report).write_text(json.dumps(report.as_dict(), indent=2, ensure_ascii=False) + "\n")
    if args.output and not args.dry_run:
        print(
            f"cleaned corpus in {args.output} ({report.totals('near_dedup')[0]:,} documents); report: "
            f"{Path(args.output) / 'report.json'}"
        )
    return 0
