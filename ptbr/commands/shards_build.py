"""``ptbr shards build``: tokenize a corpus into packed MDS shards (train/val) plus manifest.json.

``--part I/N`` builds one part (a Slurm array task: ``slurm/build_shards.sh``), ``--merge N`` joins them."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from ptbr.data.tokenizer import EOS_TOKEN


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        nargs="+",
        action="extend",
        required=True,
        metavar="PATH",
        help="corpus files or directories (.txt, .jsonl, optionally .gz/.zst; .parquet); repeatable",
    )
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json (from 'ptbr tokenizer train')")
    parser.add_argument("--output", required=True, help="dataset directory (gets train/, val/, manifest.json)")
    parser.add_argument("--seq-len", type=int, required=True, help="model context; samples hold seq_len+1 tokens")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.005,
        help="share of documents (by content hash) in the validation split; 0 = none",
    )
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the document split hash")
    parser.add_argument("--shard-size", default="64mb", help="uncompressed shard size limit (e.g. 64mb)")
    parser.add_argument("--compression", default="zstd", help="MDS shard compression, e.g. zstd, zstd:7, none")
    parser.add_argument(
        "--dtype",
        choices=("auto", "uint16", "uint32"),
        default="auto",
        help="token dtype on disk (auto: uint16 when the vocabulary fits)",
    )
    parser.add_argument("--text-field", default="text", help="jsonl field or parquet column holding the text")
    parser.add_argument(
        "--txt-docs",
        choices=("file", "paragraph", "line"),
        default="file",
        help=".txt documents: whole file, blank-line separated paragraphs, or lines",
    )
    parser.add_argument("--eos-token", default=EOS_TOKEN, help="end-of-document token in the tokenizer")
    parser.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    parser.add_argument(
        "--clean",
        nargs="?",
        const="configs/clean/pt-br.yaml",
        default=None,
        metavar="CONFIG",
        help="clean the corpus first (ptbr corpus clean; default config %(const)s) into "
        "OUTPUT.cleaned/ and build from that; reused while inputs and config are unchanged",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a different dataset in --output")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parts = parser.add_mutually_exclusive_group()
    parts.add_argument(
        "--part", default=None, metavar="I/N", help="build only part I of N (I from 0) into --work; then --merge N"
    )
    parts.add_argument(
        "--merge",
        type=int,
        default=None,
        metavar="N",
        help="join the N finished parts in --work into --output (one dataset, one manifest)",
    )
    parser.add_argument("--work", default=None, help="where the parts live (default: OUTPUT.parts)")


def run(args: argparse.Namespace) -> int:
    from ptbr.data.build import BuildSettings, build_shards, parse_size
    from ptbr.progress import human, human_bytes

    settings = BuildSettings(
        seq_len=args.seq_len,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        text_field=args.text_field,
        txt_docs=args.txt_docs,
        shard_size=parse_size(args.shard_size),
        compression=None if args.compression.lower() in ("", "none") else args.compression,
        dtype=args.dtype,
        eos_token=args.eos_token,
    )
    t0 = time.perf_counter()
    if args.part is not None or args.merge is not None:
        return _parts(args, settings)
    if args.clean:
        from ptbr.clean.config import CleanConfig
        from ptbr.clean.pipeline import clean_once

        cleaned = clean_once(
            args.input,
            str(Path(args.output).with_name(Path(args.output).name + ".cleaned")),
            CleanConfig.load(args.clean),
            workers=args.workers,
            text_field=args.text_field,
            txt_docs=args.txt_docs,
        )
        args.input = [str(cleaned)]  # one .jsonl per input file, field "text"
        settings = dataclasses.replace(settings, text_field="text")
    result = build_shards(
        args.input,
        args.tokenizer,
        args.output,
        settings,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    if result.up_to_date:
        return 0
    m = result.manifest
    seconds = time.perf_counter() - t0
    for name, s in m["splits"].items():
        print(
            f"{name}: {s['samples']} samples x {m['sample_len']} tokens ({human(s['tokens'])} tokens, "
            f"{s['documents']} documents, {s['dropped_tokens']} tail tokens dropped) in {s['shards']} "
            f"shard(s), {human_bytes(s['bytes'])}"
        )
    st = m["stats"]
    print(
        f"read {st['documents']} documents from {st['files']} file(s); invalid UTF-8 sequences replaced: "
        f"{st['invalid_utf8_replaced']}; bad records skipped: {st['bad_records_skipped']}; "
        f"empty documents: {st['empty_documents']}"
    )
    print(
        f"built {result.output} in {seconds:.1f} s ({human(st['tokens'] / max(seconds, 1e-9))} tokens/s), "
        f"dtype {m['dtype']}, dataset {m['dataset_hash'][:16]}"
    )
    return 0


def _parts(args: argparse.Namespace, settings) -> int:
    from ptbr.data.build_parts import build_part, merge_shards
    from ptbr.data.parts import PartSpec, default_work_dir
    from ptbr.errors import PtbrError

    if args.clean:
        raise PtbrError(
            "--clean cannot be combined with --part/--merge: clean in parts first (ptbr corpus clean "
            "--part I/N, then --merge N) and build from its output"
        )
    work = Path(args.work) if args.work else default_work_dir(args.output)
    if args.part is not None:
        build_part(
            args.input,
            args.tokenizer,
            work,
            settings,
            PartSpec.parse(args.part),
            workers=args.workers,
            progress=not args.quiet,
        )
        return 0
    if args.merge < 1:
        raise PtbrError(f"--merge needs the number of parts (>= 1), not {args.merge}")
    rerun = f"ptbr shards build ... --output {args.output}" + (f" --work {args.work}" if args.work else "")
    result = merge_shards(
        args.input, args.tokenizer, args.output, settings, args.merge, work=work, overwrite=args.overwrite, rerun=rerun
    )
    if not result.up_to_date:
        m = result.manifest
        for name, s in m["splits"].items():
            print(
                f"{name}: {s['samples']} samples x {m['sample_len']} tokens, {s['documents']} documents, "
                f"{s['dropped_tokens']} tail tokens dropped, {s['shards']} shard(s) from {args.merge} part(s)"
            )
        print(f"merged {args.merge} part(s) into {result.output}: dataset {m['dataset_hash'][:16]}")
    return 0
