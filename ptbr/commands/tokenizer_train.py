"""``ptbr tokenizer train``: byte-level BPE on .txt/.jsonl corpora (plain, .gz, .zst)."""

from __future__ import annotations

import argparse
import sys

from ptbr.data.tokenizer import EOS_TOKEN, PAD_TOKEN


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        nargs="+",
        action="extend",
        required=True,
        metavar="PATH",
        help="corpus files or directories (.txt, .jsonl, optionally .gz/.zst); repeatable",
    )
    parser.add_argument("--output", required=True, help="tokenizer.json to write")
    parser.add_argument("--vocab-size", type=int, default=32000, help="total vocabulary incl. special tokens")
    parser.add_argument("--min-frequency", type=int, default=2, help="minimum pair count for a merge")
    parser.add_argument(
        "--special-token",
        action="append",
        default=[],
        metavar="TOKEN",
        help=f"extra special token (after {EOS_TOKEN} and {PAD_TOKEN}); repeatable",
    )
    parser.add_argument("--text-field", default="text", help="jsonl field holding the text")
    parser.add_argument(
        "--txt-docs",
        choices=("file", "paragraph", "line"),
        default="file",
        help=".txt documents: whole file, blank-line separated paragraphs, or lines",
    )
    parser.add_argument(
        "--max-bytes",
        type=float,
        default=None,
        help="stop reading after this many raw input bytes (a sample is enough for BPE)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    from ptbr.data.tokenizer import train_tokenizer_from_corpus
    from ptbr.progress import human_bytes

    report = train_tokenizer_from_corpus(
        args.input,
        args.output,
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
        extra_special_tokens=args.special_token,
        text_field=args.text_field,
        txt_docs=args.txt_docs,
        max_bytes=int(args.max_bytes) if args.max_bytes else None,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    tok, stats = report.tokenizer, report.stats
    print(
        f"tokenizer: {args.output} vocab {tok.vocab_size} (eos {tok.eos_token}={tok.eos_id}) sha256 {tok.sha256[:16]}"
    )
    print(
        f"read {stats.documents} documents from {stats.files} file(s), {human_bytes(stats.bytes_read)}; "
        f"invalid UTF-8 sequences replaced: {stats.invalid_utf8}; bad records skipped: {stats.bad_records}"
    )
    for example in stats.bad_record_examples:
        print(f"  skipped {example}", file=sys.stderr)
    if tok.vocab_size < args.vocab_size:
        print(f"note: the corpus supports only {tok.vocab_size} tokens (asked for {args.vocab_size})", file=sys.stderr)
    return 0
