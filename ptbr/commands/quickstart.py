"""``ptbr quickstart``: the whole pipeline on this machine (corpus to generated text), reusing finished stages."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", default="quickstart", help="where everything goes (default: ./quickstart)")
    parser.add_argument(
        "--corpus",
        default=None,
        help="your own .txt/.jsonl files (default: Brazilian Portuguese text from Debian packages)",
    )
    parser.add_argument("--config", default="configs/train/quickstart.yaml", help="the training config")
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=8192,
        help="tokenizer vocabulary (the presets use 32000; a few MB of text suit a smaller one)",
    )
    parser.add_argument("--seq-len", type=int, default=256, help="sample length (must match the config)")
    parser.add_argument("--ranks", type=int, default=2, help="gloo ranks (processes) to train with")
    parser.add_argument("--max-tokens", type=int, default=80, help="tokens to generate at the end")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="training config overrides, e.g. train.max_steps=50"
    )


def run(args: argparse.Namespace) -> int:
    from ptbr.quickstart.pipeline import Quickstart, Settings

    settings = Settings(
        work=Path(args.work),
        corpus=Path(args.corpus) if args.corpus else None,
        config=args.config,
        vocab_size=args.vocab_size,
        seq_len=args.seq_len,
        ranks=args.ranks,
        overrides=list(args.overrides),
        max_tokens=args.max_tokens,
    )
    return Quickstart(settings).run()
