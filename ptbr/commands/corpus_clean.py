"""``ptbr corpus clean --input DIR... --output DIR``: repair, language, quality, exact and near dedup, report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_CONFIG = "configs/clean/pt-br.yaml"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH", help="files or directories (.txt, .jsonl)")
    parser.add_argument("--output", default=None, help="directory to write (one .jsonl per input file + report.json)")
    parser.add_argument("--config", default=None,
                        help=f"cleaning config (default: {DEFAULT_CONFIG} when present, else the same built-in values)")
    parser.add_argument("--dry-run", action="store_true", help="only the report (printed, and --report PATH)")
    parser.add_argument("--report", default=None, help="also write report.json here")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--txt-docs", default="file", choices=["file", "paragraph", "line"])
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")


def run(args: argparse.Namespace) -> int:
    from ptbr.clean.config import CleanConfig
    from ptbr.clean.pipeline import clean, print_report

    cfg = CleanConfig.load(args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None))
    report = clean(args.input, args.output, cfg, workers=args.workers, text_field=args.text_field,
                   txt_docs=args.txt_docs, overwrite=args.overwrite, dry_run=args.dry_run)
    print_report(report)
    if args.report:
        Path(args.report).write_text(json.dumps(report.as_dict(), indent=2, ensure_ascii=False) + "\n")
    if args.output and not args.dry_run:
        print(f"cleaned corpus in {args.output} ({report.totals('near_dedup')[0]:,} documents); report: "
              f"{Path(args.output) / 'report.json'}")
    return 0
