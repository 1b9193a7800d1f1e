"""``ptbr eval MODEL_DIR --data SRC`` (a dataset split) or ``--text FILE`` (documents, each scored on its own):
loss, perplexity and bits per UTF-8 byte."""

from __future__ import annotations

import argparse
import json


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="a directory written by ptbr export")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a dataset directory or a published s3:// prefix")
    source.add_argument(
        "--text",
        action="append",
        metavar="FILE",
        help="documents to score, each on its own after the end-of-document token, as "
        "lm-evaluation-harness's rolling log-likelihood does (.jsonl: one per line's "
        '"text"; any other file: the whole file); repeatable',
    )
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-samples", type=int, default=None, help="the split's first N samples (default: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from ptbr.infer.evaluate import evaluate, evaluate_texts, read_texts
    from ptbr.infer.model_io import load_model

    texts = read_texts(args.text) if args.text else None
    lm = load_model(args.model_dir, args.device)
    result = (
        evaluate_texts(lm, texts)
        if texts is not None
        else evaluate(lm, args.data, args.split, args.max_samples, args.batch_size)
    )
    what = "text" if texts is not None else args.split
    unit = "documents" if texts is not None else "samples"
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(
            f"{what}: {result.samples} {unit}, {result.tokens:,} tokens, {result.bytes:,} bytes: loss "
            f"{result.loss:.4f}, perplexity {result.ppl:.2f}, {result.bits_per_byte:.4f} bits per byte"
        )
        print("loss by token position: " + ", ".join(f"{k} {v:.4f}" for k, v in result.loss_by_position.items()))
    return 0
