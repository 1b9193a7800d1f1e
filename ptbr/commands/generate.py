"""``ptbr generate MODEL_DIR --prompt TEXT``: continue a prompt with an exported model, streamed to stdout."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="a directory written by ptbr export")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--presence-penalty", type=float, default=0.0)
    parser.add_argument("--frequency-penalty", type=float, default=0.0)
    parser.add_argument("--stop", action="append", default=[], help="stop at this text (repeatable)")
    parser.add_argument("--seed", type=int, default=None, help="the same seed gives the same text")
    parser.add_argument(
        "--ignore-eos", action="store_true", help="keep generating past the end-of-document token (default: stop there)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto")
    parser.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=1 << 20,
        help="refuse longer prompts (prefill time and memory grow with the prompt)",
    )


def run(args: argparse.Namespace) -> int:
    from ptbr.infer.generate import SamplingSettings
    from ptbr.infer.generate import run as generate
    from ptbr.infer.model_io import load_model

    settings = SamplingSettings(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        stop=tuple(args.stop),
        seed=args.seed,
        ignore_eos=args.ignore_eos,
        max_prompt_tokens=args.max_prompt_tokens,
    )
    settings.check()
    lm = load_model(args.model_dir, args.device)

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    write(args.prompt)
    generate(lm, args.prompt, settings, write)
    write("\n")
    return 0
