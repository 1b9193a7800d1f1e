"""``ptbr eval MODEL_DIR --data SRC``: loss, perplexity and bits per UTF-8 byte on a dataset split."""

from __future__ import annotations

import argparse
import json


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="a directory written by ptbr export")
    parser.add_argument("--data", required=True, help="a dataset directory or a published s3:// prefix")
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-samples", type=int, default=None, help="the split's first N samples (default: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from ptbr.infer.evaluate import evaluate
    from ptbr.infer.model_io import load_model

    lm = load_model(args.model_dir, args.device)
    result = evaluate(lm, args.data, args.split, args.max_samples, args.batch_size)
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(f"{args.split}: {result.samples} samples, {result.tokens:,} tokens, {result.bytes:,} bytes: loss "
              f"{result.loss:.4f}, perplexity {result.ppl:.2f}, {result.bits_per_byte:.4f} bits per byte")
        print("loss by token position: " + ", ".join(f"{k} {v:.4f}" for k, v in result.loss_by_position.items()))
    return 0
