"""Packing a token stream into fixed-length samples, and the on-disk token dtype.

A sample holds seq_len + 1 consecutive tokens so that (input, target) = (s[:-1], s[1:]) has
length seq_len. Samples do not overlap, documents run across sample boundaries (each ends with
EOS), and the tail shorter than one sample is dropped and counted.
"""

from __future__ import annotations

import numpy as np

from ptbr.errors import DataError

DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


def choose_dtype(vocab_size: int, requested: str = "auto") -> str:
    """The smallest unsigned dtype holding every id below ``vocab_size`` (or check the requested one)."""
    if requested == "auto":
        return "uint16" if vocab_size <= 1 << 16 else "uint32"
    if requested not in DTYPES:
        raise DataError(f"--dtype must be auto, uint16 or uint32, not {requested!r}")
    limit = int(np.iinfo(DTYPES[requested]).max) + 1
    if vocab_size > limit:
        raise DataError(
            f"vocabulary of {vocab_size} tokens does not fit {requested} (max {limit}); "
            f"use --dtype uint32 or --dtype auto"
        )
    return requested


class Packer:
    """Accumulates tokens and hands out complete samples of ``sample_len`` tokens."""

    def __init__(self, sample_len: int, dtype: str) -> None:
        self.sample_len = sample_len
        self.dtype = DTYPES[dtype]
        self._parts: list[np.ndarray] = []
        self._pending = 0
        self.tokens_in = 0
        self.samples_out = 0

    def add(self, tokens: np.ndarray) -> np.ndarray:
        """Append ``tokens``; return the samples completed by them, shape (n, sample_len)."""
        self.tokens_in += len(tokens)
        if len(tokens):
            self._parts.append(tokens)
            self._pending += len(tokens)
        n = self._pending // self.sample_len
        if n == 0:
            return np.empty((0, self.sample_len), self.dtype)
        flat = np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]
        used = n * self.sample_len
        rest = flat[used:]
        self._parts = [rest] if len(rest) else []
        self._pending = len(rest)
        self.samples_out += n
        return flat[:used].astype(self.dtype, copy=False).reshape(n, self.sample_len)

    @property
    def leftover(self) -> int:
        """Tokens that did not fill a sample (dropped at the end of the build)."""
        return self._pending

    def leftover_tokens(self) -> np.ndarray:
        """Those tokens themselves (a part hands them to the merge, which packs the parts' tails together)."""
        if not self._parts:
            return np.empty(0, self.dtype)
        return np.concatenate(self._parts).astype(self.dtype, copy=False)
