"""Deduplication keys of a document, and the sorted runs a part writes them to.

Every document that survives the per-document steps gets one 64-bit key per *band*: band ``x`` is the
exact-dedup key (a hash of the normalised text), bands ``b00``..``b13`` are the MinHash LSH bands (a hash
of each band's 8 MinHash values). Two documents are duplicates in a band when their keys are equal.
64-bit keys make a false match between two distinct documents unlikely even at scale: about n^2 / 2^65
expected per band, 4e-5 for 40M documents.

A part keeps at most ``spill_docs`` documents' keys in memory (:func:`spill_docs_for`: what fits the
``--dedup-memory`` budget); then every band's (key, document) records are sorted by key and written as one
run file ``sig/<band>-<run>.bin`` (16 bytes a record). Memory therefore does not grow with the part, and
the merge finds duplicates by a sorted merge of the runs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import xxhash

from ptbr.clean import rules
from ptbr.clean.config import CleanConfig

RECORD = np.dtype([("key", "<u8"), ("doc", "<u8")])
EXACT = "x"


def spill_docs_for(memory: int, bands: int) -> int:
    """Documents whose keys fit ``memory``: 8 bytes per band held, ~40 bytes per document to sort a band."""
    return max(1024, memory // (8 * bands + 40))


def band_names(cfg: CleanConfig) -> list[str]:
    names = [EXACT] if cfg.exact_dedup.enabled else []
    if cfg.near_dedup.enabled:
        names += [f"b{b:02d}" for b in range(cfg.near_dedup.bands)]
    return names


def doc_key(unit: int, position: int) -> int:
    """A document's place in the input order: its unit (file or row group) and its position there."""
    return (unit << 32) | position


def keys_of(text: str, cfg: CleanConfig) -> list[int]:
    """The document's key in every band of :func:`band_names`, in that order."""
    keys = []
    if cfg.exact_dedup.enabled:
        digest = hashlib.blake2b(rules.normalized_for_dedup(text).encode(), digest_size=8).digest()
        keys.append(int.from_bytes(digest, "little"))
    if cfg.near_dedup.enabled:
        from datasketch import MinHash

        nd = cfg.near_dedup
        m = MinHash(num_perm=nd.bands * nd.rows, seed=nd.seed)
        m.update_batch(list(rules.shingles(text, nd.ngram)))
        rows = m.hashvalues.astype("<u4").reshape(nd.bands, nd.rows)  # datasketch's values are 32-bit
        keys += [xxhash.xxh3_64_intdigest(rows[b].tobytes()) for b in range(nd.bands)]
    return keys


class SignatureWriter:
    """Collects documents' band keys and writes them as sorted runs, one file per band and run."""

    def __init__(self, directory: Path, names: list[str], spill_docs: int) -> None:
        self.directory, self.names = directory, names
        directory.mkdir(parents=True, exist_ok=True)
        self._keys = np.empty((spill_docs, len(names)), dtype=np.uint64)
        self._docs = np.empty(spill_docs, dtype=np.uint64)
        self._n = 0
        self.runs = 0

    def add(self, doc: int, keys: list[int]) -> None:
        if not self.names:
            return
        self._keys[self._n] = keys
        self._docs[self._n] = doc
        self._n += 1
        if self._n == len(self._docs):
            self._spill()

    def _spill(self) -> None:
        n = self._n
        if n == 0:
            return
        docs = self._docs[:n]
        for j, name in enumerate(self.names):
            column = self._keys[:n, j]
            order = np.argsort(column, kind="stable")  # documents arrive in input order: ties stay ordered
            records = np.empty(n, dtype=RECORD)
            records["key"] = column[order]
            records["doc"] = docs[order]
            records.tofile(self.directory / f"{name}-{self.runs:05d}.bin")
        self.runs += 1
        self._n = 0

    def close(self) -> None:
        self._spill()
