"""``ptbr tokenizer train``: byte-level BPE on .txt/.jsonl corpora (plain, .gz, .zst)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", action="extend", required=True, metavar="PATH",
                        help="corpus files or directories (.txt, .jsonl, optionally .gz/.zst); repeatable")
    parser.add_argument("--output", required=True, help="tokenizer.json to write")
    parser.add_argument("--vocab-size", type=int, default=32000, help="total vocabulary incl. special tokens")
    parser.add_argument("--min-frequency", type=int, default=2, help="minimum pair count for a merge")
    parser.add_argument("--special-token", action="append", default=[], metavar="TOKEN",
                        help="extra special token (after <|endoftext|> and <|padding|>); repeatable")
    parser.add_argument("--text-field", default="text", help="jsonl field holding the text")
    parser.add_argument("--txt-docs", choices=("file", "paragraph", "line"), default="file",
                        help=".txt documents: whole file, blank-line separated paragraphs, or lines")
    parser.add_argument("--max-bytes", type=float, default=None,
                        help="stop reading after this many raw input bytes (a sample is enough for BPE)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    import os
    import sys
    from pathlib import Path

    from ptbr.data.corpus import ReadStats, discover_inputs, iter_documents
    from ptbr.data.progress import Progress, human_bytes
    from ptbr.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_tokenizer
    from ptbr.errors import DataError

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise DataError(f"{out} already exists; pass --overwrite to replace it")
    files = discover_inputs(args.input)
    total = sum(f.size for f in files)
    limit = int(args.max_bytes) if args.max_bytes else None
    stats = ReadStats()
    progress = Progress("tokenizer: reading", min(total, limit or total), rate_unit="docs",
                        enabled=not args.quiet)
    failure: list[BaseException] = []

    def documents():
        try:
            for text in iter_documents(files, stats, text_field=args.text_field, txt_docs=args.txt_docs):
                yield text
                progress.update(stats.bytes_read, stats.documents)
                if limit is not None and stats.bytes_read >= limit:
                    break
        except BaseException as exc:  # surfaces through the Rust trainer as a generic error
            failure.append(exc)
            raise

    try:
        tok = train_tokenizer(documents(), vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                              special_tokens=[*SPECIAL_TOKENS, *args.special_token],
                              show_progress=not args.quiet and sys.stderr.isatty())
    except Exception:
        if failure:
            raise failure[0] from None
        raise
    progress.close()
    if stats.documents == 0:
        raise DataError(f"no documents found in {len(files)} input file(s) (all empty?)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tok.save(str(tmp))
    os.replace(tmp, out)
    _, info = load_tokenizer(out)
    print(f"tokenizer: {out} vocab {info.vocab_size} (eos {info.eos_token}={info.eos_id}) "
          f"sha256 {info.sha256[:16]}")
    print(f"read {stats.documents} documents from {stats.files} file(s), {human_bytes(stats.bytes_read)}; "
          f"invalid UTF-8 sequences replaced: {stats.invalid_utf8}; bad records skipped: {stats.bad_records}")
    for example in stats.bad_record_examples:
        print(f"  skipped {example}", file=sys.stderr)
    if info.vocab_size < args.vocab_size:
        print(f"note: the corpus supports only {info.vocab_size} tokens (asked for {args.vocab_size})",
              file=sys.stderr)
    return 0
