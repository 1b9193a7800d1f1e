"""``ptbr supervise -- LAUNCHER ...``: run torchrun / the deepspeed launcher so that the job exits with
the ranks' own code (75 after a clean preemption) whatever signal reached the launcher."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "launcher",
        nargs=argparse.REMAINDER,
        metavar="-- LAUNCHER ...",
        help="e.g. -- torchrun --nproc_per_node 8 -m ptbr.train --config configs/train/1b5.yaml",
    )


def run(args: argparse.Namespace) -> int:
    from ptbr.train.supervise import supervise

    command = list(args.launcher)
    if command[:1] == ["--"]:
        command = command[1:]
    return supervise(command)
