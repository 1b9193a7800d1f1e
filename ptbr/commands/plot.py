"""``ptbr plot RUN_DIR``: PNG charts of loss, lr, throughput and validation loss."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a training run directory (holds metrics.jsonl)")
    parser.add_argument("--out", default=None, help="output directory (default: RUN_DIR/plots)")


def run(args: argparse.Namespace) -> int:
    from ptbr.train.plots import plot_run

    for path in plot_run(args.run_dir, args.out):
        print(path)
    return 0
