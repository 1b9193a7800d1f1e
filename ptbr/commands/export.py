"""``ptbr export CKPT OUT_DIR``: a sharded checkpoint -> model.safetensors (or model.pth), config, tokenizer."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT",
                        help="a run directory (its newest complete checkpoint), a checkpoint directory, or a step "
                             "number with --run-dir")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="directory to create")
    parser.add_argument("--dtype", default="bf16", help="bf16 (default), fp16, or fp32 (the fp32 master weights)")
    parser.add_argument("--format", default="safetensors", dest="fmt",
                        help="safetensors (default) or rwkv (one .pth for the rwkv pip runtime)")
    parser.add_argument("--run-dir", default=None, help="the run directory when CKPT is a step number")
    parser.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the run directory's copy)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    from ptbr.infer.export import export

    export(args.checkpoint, args.out_dir, dtype=args.dtype, fmt=args.fmt, run_dir=args.run_dir,
           tokenizer=args.tokenizer, overwrite=args.overwrite, progress=not args.quiet)
    return 0
