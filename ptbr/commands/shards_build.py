"""``ptbr shards build``: tokenize a corpus into packed MDS shards (train/val) plus manifest.json."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from ptbr.data.tokenizer import EOS_TOKEN


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", action="extend", required=True, metavar="PATH",
                        help="corpus files or directories (.txt, .jsonl, optionally .gz/.zst); repeatable")
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json (from 'ptbr tokenizer train')")
    parser.add_argument("--output", required=True, help="dataset directory (gets train/, val/, manifest.json)")
    parser.add_argument("--seq-len", type=int, required=True, help="model context; samples hold seq_len+1 tokens")
    parser.add_argument("--val-fraction", type=float, default=0.005,
                        help="share of documents (by content hash) in the validation split; 0 = none")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the document split hash")
    parser.add_argument("--shard-size", default="64mb", help="uncompressed shard size limit (e.g. 64mb)")
    parser.add_argument("--compression", default="zstd", help="MDS shard compression, e.g. zstd, zstd:7, none")
    parser.add_argument("--dtype", choices=("auto", "uint16", "uint32"), default="auto",
                        help="token dtype on disk (auto: uint16 when the vocabulary fits)")
    parser.add_argument("--text-field", default="text", help="jsonl field holding the text")
    parser.add_argument("--txt-docs", choices=("file", "paragraph", "line"), default="file",
                        help=".txt documents: whole file, blank-line separated paragraphs, or lines")
    parser.add_argument("--eos-token", default=EOS_TOKEN, help="end-of-document token in the tokenizer")
    parser.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    parser.add_argument("--clean", nargs="?", const="configs/clean/pt-br.yaml", default=None, metavar="CONFIG",
                        help="clean the corpus first (ptbr corpus clean; default config %(const)s) into "
                             "OUTPUT.cleaned/ and build from that; reused while inputs and config are unchanged")
    parser.add_argument("--overwrite", action="store_true", help="replace a different dataset in --output")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    from ptbr.data.build import BuildSettings, build_shards, parse_size
    from ptbr.progress import human, human_bytes

    settings = BuildSettings(
        seq_len=args.seq_len, val_fraction=args.val_fraction, split_seed=args.split_seed,
        text_field=args.text_field, txt_docs=args.txt_docs, shard_size=parse_size(args.shard_size),
        compression=None if args.compression.lower() in ("", "none") else args.compression,
        dtype=args.dtype, eos_token=args.eos_token)
    t0 = time.perf_counter()
    if args.clean:
        from ptbr.clean.config import CleanConfig
        from ptbr.clean.pipeline import clean_once

        cleaned = clean_once(args.input, str(Path(args.output).with_name(Path(args.output).name + ".cleaned")),
                             CleanConfig.load(args.clean), workers=args.workers, text_field=args.text_field,
                             txt_docs=args.txt_docs)
        args.input = [str(cleaned)]  # one .jsonl per input file, field "text"
        settings = dataclasses.replace(settings, text_field="text")
    result = build_shards(args.input, args.tokenizer, args.output, settings, workers=args.workers,
                          overwrite=args.overwrite, progress=not args.quiet)
    if result.up_to_date:
        return 0
    m = result.manifest
    seconds = time.perf_counter() - t0
    for name, s in m["splits"].items():
        print(f"{name}: {s['samples']} samples x {m['sample_len']} tokens ({human(s['tokens'])} tokens, "
              f"{s['documents']} documents, {s['dropped_tokens']} tail tokens dropped) in {s['shards']} "
              f"shard(s), {human_bytes(s['bytes'])}")
    st = m["stats"]
    print(f"read {st['documents']} documents from {st['files']} file(s); invalid UTF-8 sequences replaced: "
          f"{st['invalid_utf8_replaced']}; bad records skipped: {st['bad_records_skipped']}; "
          f"empty documents: {st['empty_documents']}")
    print(f"built {result.output} in {seconds:.1f} s ({human(st['tokens'] / max(seconds, 1e-9))} tokens/s), "
          f"dtype {m['dtype']}, dataset {m['dataset_hash'][:16]}")
    return 0
