"""``ptbr export CKPT OUT_DIR``: a sharded checkpoint -> model.safetensors (or model.pth), config, tokenizer;
``--format gguf``: one model.gguf for llama.cpp (also from an existing export directory)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        metavar="CKPT",
        help="a run directory (its newest complete checkpoint), a checkpoint directory, or a step "
        "number with --run-dir; with --format gguf also an export directory",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="directory to create")
    parser.add_argument(
        "--dtype",
        default=None,
        help="bf16 (default), fp16, or fp32 (the fp32 master weights); --format gguf: f16 (default), f32, bf16 or q8_0",
    )
    parser.add_argument(
        "--format",
        default="safetensors",
        dest="fmt",
        help="safetensors (default), rwkv (one .pth for the rwkv pip runtime) or gguf (one model.gguf for llama.cpp)",
    )
    parser.add_argument("--run-dir", default=None, help="the run directory when CKPT is a step number")
    parser.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the run directory's copy)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--name", default=None, help="gguf: the model card's name (default: ptbr RWKV-6 <size>)")
    parser.add_argument(
        "--license",
        default=None,
        dest="license_",
        metavar="LICENSE",
        help="gguf: the model card's licence, e.g. apache-2.0 (default: unspecified)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ptbr.infer.export_reader import is_export_dir

    dtype = args.dtype or ("f16" if args.fmt == "gguf" else "bf16")
    if args.fmt == "gguf" and is_export_dir(Path(args.checkpoint)):  # converted as it is: no torch in this process
        from ptbr.infer.gguf import export_gguf

        export_gguf(
            args.checkpoint,
            args.out_dir,
            dtype=dtype,
            tokenizer=args.tokenizer,
            overwrite=args.overwrite,
            progress=not args.quiet,
            name=args.name,
            license_=args.license_,
        )
        return 0
    from ptbr.infer.export import export

    export(
        args.checkpoint,
        args.out_dir,
        dtype=dtype,
        fmt=args.fmt,
        run_dir=args.run_dir,
        tokenizer=args.tokenizer,
        overwrite=args.overwrite,
        progress=not args.quiet,
        name=args.name,
        license_=args.license_,
    )
    return 0
