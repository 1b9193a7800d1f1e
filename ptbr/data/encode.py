"""Tokenization work done in worker processes: encode, append EOS, assign each document a split.

Kept free of heavy imports: every (spawned) worker process imports this module.

Split rule: a document goes to validation iff ``xxh64(utf8(text), seed) < val_fraction * 2**64``.
It depends only on the document's content, so the split does not change when inputs are
reordered or the corpus grows, and exact duplicates always land in the same split (no
train/validation leakage through repeated documents).
"""

from __future__ import annotations

import array
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

SPLIT_RULE = "xxh64(utf8(document), seed=split_seed) < val_fraction * 2**64 -> val"

_STATE: dict[str, Any] = {}


def val_threshold(val_fraction: float) -> int:
    return min(int(val_fraction * 2.0**64), 2**64)


def is_val_document(text: str, threshold: int, seed: int) -> bool:
    return threshold > 0 and xxhash.xxh64_intdigest(text.encode("utf-8"), seed) < threshold


@dataclass
class EncodedBatch:
    """Tokens of a batch of documents, EOS appended to each, plus per-document length and split."""

    tokens: np.ndarray
    doc_lens: np.ndarray
    is_val: np.ndarray


def init_worker(
    tokenizer_json: str, eos_id: int, dtype: str, threshold: int, seed: int, single_thread: bool = True
) -> None:
    """Load the tokenizer once per process (also used in-process when workers == 1)."""
    if single_thread:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    from tokenizers import Tokenizer

    np_dtype = np.dtype(dtype)
    typecode = next(c for c in "HILQ" if array.array(c).itemsize == np_dtype.itemsize)
    _STATE.update(
        tok=Tokenizer.from_str(tokenizer_json),
        eos_id=eos_id,
        dtype=np_dtype,
        typecode=typecode,
        threshold=threshold,
        seed=seed,
    )


def encode_batch(texts: list[str]) -> EncodedBatch:
    tok, eos_id = _STATE["tok"], _STATE["eos_id"]
    threshold, seed = _STATE["threshold"], _STATE["seed"]
    encodings = tok.encode_batch_fast(texts, add_special_tokens=False)
    flat = array.array(_STATE["typecode"])  # extending an array from the ids lists is the cheapest copy
    lens = np.empty(len(encodings), dtype=np.int64)
    for i, e in enumerate(encodings):
        ids = e.ids
        flat.extend(ids)
        flat.append(eos_id)
        lens[i] = len(ids) + 1
    tokens = np.frombuffer(flat, dtype=_STATE["dtype"])
    is_val = np.fromiter((is_val_document(t, threshold, seed) for t in texts), dtype=bool, count=len(texts))
    return EncodedBatch(tokens, lens, is_val)


def batched(documents: Iterable[str], max_chars: int = 1 << 20, max_docs: int = 4096) -> Iterator[list[str]]:
    """Group documents into batches of about ``max_chars`` characters."""
    batch: list[str] = []
    chars = 0
    for text in documents:
        batch.append(text)
        chars += len(text)
        if chars >= max_chars or len(batch) >= max_docs:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch
