"""Entry point shared by ``ptbr train`` and ``python -m ptbr.train`` (any launcher)."""

from __future__ import annotations

import argparse
import sys
import traceback


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training YAML, e.g. configs/train/1b5.yaml")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=3e-4 train.max_steps=100"
    )
    parser.add_argument(
        "--resume",
        default="auto",
        metavar="auto|never|PATH",
        help="auto (default): continue from the newest complete checkpoint in the run directory, "
        "if any; never: start fresh (refused if the run directory holds checkpoints); "
        "PATH: resume from that checkpoint directory",
    )
    parser.add_argument(
        "--allow-fresh-start",
        action="store_true",
        help="start over although the run directory holds only incomplete checkpoints "
        "(they are moved aside, not deleted)",
    )
    # the deepspeed launcher appends --local_rank=N; LOCAL_RANK in the environment says the same
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume although the model shape, seq_len or dataset differ from the checkpoint",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config, data, node count, resume decision, memory and disk, print a "
        "table and exit (no process group, no model); the Slurm scripts run it first",
    )
    parser.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="with --dry-run: ranks to plan for (default: $SLURM_NTASKS or $WORLD_SIZE or 1)",
    )
    parser.add_argument(
        "--nodes", type=int, default=None, help="with --dry-run: nodes to plan for (default: $SLURM_NNODES or 1)"
    )
    parser.add_argument(
        "--tokens-per-s",
        type=float,
        default=None,
        help="with --dry-run: global throughput for the time estimate (default: the run's last)",
    )


def run(args: argparse.Namespace) -> int:
    """Load the config, join the process group, train; exit through ``dist.shutdown``."""
    from ptbr.train.preempt import catch_early_stop_signals

    catch_early_stop_signals()  # before the heavy imports: a signal during them must not kill the rank

    from ptbr import dist
    from ptbr.errors import PtbrError
    from ptbr.train import supervise
    from ptbr.train.config import TrainConfig
    from ptbr.train.preempt import StopRequest

    env = dist.detect()
    supervise.announce(env.rank)
    stop = StopRequest()  # from the start: a preemption during set-up is honoured at the first step
    try:
        cfg = TrainConfig.load(args.config, args.overrides)
    except PtbrError as exc:
        if env.is_main:
            print(f"ptbr: error: {exc}", file=sys.stderr)
        return supervise.report(env.rank, exc.exit_code)
    if args.dry_run:
        from ptbr.train import dry_run

        try:
            return dry_run.run(
                cfg,
                world_size=args.world_size,
                nodes=args.nodes,
                tokens_per_s=args.tokens_per_s,
                resume=args.resume,
                allow_fresh_start=args.allow_fresh_start,
                allow_config_change=args.allow_config_change,
            )
        except PtbrError as exc:
            print(f"ptbr: error: {exc}", file=sys.stderr)
            return exc.exit_code
    code = 0
    try:
        env = dist.setup(cfg.train.collective_timeout_s)  # refuses, on every rank, two ranks on one GPU
        from ptbr.train.loop import Trainer

        code = Trainer(
            cfg,
            env,
            resume=args.resume,
            allow_fresh_start=args.allow_fresh_start,
            allow_config_change=args.allow_config_change,
            stop=stop,
        ).run()
    except PtbrError as exc:
        if env.is_main:
            print(f"ptbr: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except BaseException:
        traceback.print_exc()
        code = 1
    dist.shutdown(code, exit_as=supervise.report(env.rank, code))
    return code  # not reached: shutdown exits the process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ptbr.train", description="Train an RWKV-6 model.")
    add_arguments(parser)
    return run(parser.parse_args(argv))
