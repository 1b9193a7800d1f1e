"""The single ``ptbr`` command line.

Each subcommand lives in its own module exposing ``configure(parser)`` and ``run(args) -> int``.
Modules are imported only to build their parser; heavy imports (torch, deepspeed, streaming)
happen inside ``run`` so that ``ptbr --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ptbr import __version__
from ptbr.errors import PtbrError

# (command, help, module). Nested groups use a tuple of names.
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (
        ("quickstart",),
        "run the whole pipeline on this machine: corpus, tokenizer, shards, local S3, 2-rank "
        "training, export, generation, evaluation, plot",
        "ptbr.commands.quickstart",
    ),
    (("info",), "show presets, parameter counts and available WKV backends", "ptbr.commands.show_info"),
    (
        ("corpus", "clean"),
        "clean a corpus: encoding repair, language, quality rules, exact and near dedup, report",
        "ptbr.commands.corpus_clean",
    ),
    (("tokenizer", "train"), "train a byte-level BPE tokenizer on a corpus", "ptbr.commands.tokenizer_train"),
    (
        ("shards", "build"),
        "tokenize a corpus into MDS shards (train/val) with a manifest",
        "ptbr.commands.shards_build",
    ),
    (
        ("shards", "publish"),
        "upload built shards to S3, verify them, then commit with _SUCCESS",
        "ptbr.commands.shards_publish",
    ),
    (
        ("shards", "verify"),
        "check shards (local dir or s3://) against their indexes and manifest",
        "ptbr.commands.shards_verify",
    ),
    (("train",), "train a model from a YAML config (any launcher: deepspeed, torchrun, srun)", "ptbr.commands.train"),
    (
        ("export",),
        "turn a sharded checkpoint into single-file weights (safetensors, the rwkv .pth, or GGUF for llama.cpp)",
        "ptbr.commands.export",
    ),
    (("generate",), "continue a prompt with an exported model", "ptbr.commands.generate"),
    (("eval",), "loss, perplexity and bits per byte of an exported model on a dataset split", "ptbr.commands.eval"),
    (
        ("bench",),
        "lm-evaluation-harness benchmarks (Portuguese suite) on exported models, one comparison table",
        "ptbr.commands.bench",
    ),
    (
        ("supervise",),
        "run torchrun / the deepspeed launcher so the job exits with its ranks' code (75 on preemption)",
        "ptbr.commands.supervise",
    ),
    (("plot",), "turn a run directory's metrics into PNG charts", "ptbr.commands.plot"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptbr", description="ptbr: train RWKV-6 language models on Brazilian Portuguese text."
    )
    parser.add_argument("--version", action="version", version=f"ptbr {__version__}")
    root = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for names, help_text, module_name in COMMANDS:
        target = root
        for group in names[:-1]:
            if group not in groups:
                group_parser = root.add_parser(group, help=f"{group} commands")
                groups[group] = group_parser.add_subparsers(dest=f"{group}_command", metavar="COMMAND", required=True)
            target = groups[group]
        sub = target.add_parser(names[-1], help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.configure(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except PtbrError as exc:
        print(f"ptbr: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ptbr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
