"""Duplicates across all parts, in bounded memory: sorted merge per band, clusters, the documents to drop.

1. **Pairs** (per band): the parts' sorted runs are merged slice by slice of the 64-bit key space, each
   slice small enough for the memory budget; within a slice, records with equal keys form a group and each
   member is paired with the group's first document (a star, so a group of g documents gives g - 1 pairs).
   Memory: one slice plus a 64 KiB buffer per run, whatever the corpus size.
2. **Clusters**: the connected components of the near-duplicate pairs (a union-find over the documents
   that occur in a pair, never all documents: 16 bytes each), with the pairs streamed from disk. Every
   component's root is its first document in input order; every other member is dropped
   (``near_duplicate``). Exact-key groups are cliques, so their non-first members are simply the second
   elements of the exact pairs (``exact_duplicate``, which takes precedence).
3. The result is ``removed.bin``: sorted (document, rule) records, read back in order by the filter.

Why the first of each cluster, not the first of each band group: a chain A~B, B~C with A and C not
similar is one cluster, and only A is kept. This is the connected-components rule of datatrove and
FineWeb; it is a function of the pairs alone, so it can be computed from disk after all parts have
finished, and it equals the one-machine result whatever the number of parts. (The greedy rule, "drop a
document that shares a band with an earlier kept one", keeps C, but needs a sequential sweep over the
corpus with every band group's state in memory.)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ptbr.clean.signatures import EXACT, RECORD

PAIR = np.dtype([("first", "<u8"), ("other", "<u8")])
REMOVED = np.dtype([("doc", "<u8"), ("rule", "u1")])
RULES = {1: "exact_duplicate", 2: "near_duplicate"}
READ_BLOCK = 4096  # records buffered per run file (64 KiB)
RECORD_COST = 96  # bytes of memory per record in a slice (records, sort order, sorted copies, masks)
PAIR_CHUNK = 1 << 18  # pairs read at a time by the cluster step (4 MB, ~30 MB with temporaries)


class SortedReader:
    """Reads a file of records sorted by ``field`` in pieces: everything below a bound, then the next.

    The file is opened only to refill the buffer, so thousands of runs (parts x runs per part) never hold
    thousands of open files."""

    def __init__(self, path: Path, dtype: np.dtype, field: str, block: int = READ_BLOCK) -> None:
        self.path, self.dtype, self.field, self.block = path, dtype, field, block
        self._offset = 0
        self._buf = np.empty(0, dtype)

    def _refill(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            self._buf = np.fromfile(f, dtype=self.dtype, count=self.block)
        self._offset += self._buf.nbytes

    def below(self, bound: int | None) -> np.ndarray:
        """The records whose ``field`` < ``bound`` (all that remain when ``bound`` is None)."""
        pieces = []
        while True:
            if len(self._buf) == 0:
                self._refill()
                if len(self._buf) == 0:
                    break
            cut = len(self._buf) if bound is None else int(np.searchsorted(self._buf[self.field], np.uint64(bound)))
            pieces.append(self._buf[:cut])
            self._buf = self._buf[cut:]
            if len(self._buf):
                break
        return np.concatenate(pieces) if pieces else np.empty(0, self.dtype)


def band_runs(parts: list[Path], band: str) -> list[Path]:
    return [run for part in parts for run in sorted((part / "sig").glob(f"{band}-*.bin"))]


def write_pairs(runs: list[Path], out: BinaryIO, memory: int) -> int:
    """Merge one band's runs; write a (first, other) pair for every document that is not the first of its key
    group. Returns the number of pairs."""
    total = sum(p.stat().st_size for p in runs) // RECORD.itemsize
    block = max(256, min(READ_BLOCK, memory // (4 * RECORD.itemsize * max(len(runs), 1))))  # buffers <= 1/4
    slices = max(1, math.ceil(total * RECORD_COST / memory))
    width = -(-(1 << 64) // slices)
    readers = [SortedReader(p, RECORD, "key", block) for p in runs]
    pairs = 0
    for s in range(slices):
        bound = None if s == slices - 1 else (s + 1) * width
        chunk = np.concatenate([r.below(bound) for r in readers]) if readers else np.empty(0, RECORD)
        if len(chunk) < 2:
            continue
        order = np.lexsort((chunk["doc"], chunk["key"]))
        keys, docs = chunk["key"][order], chunk["doc"][order]
        del chunk, order
        starts = np.empty(len(keys), dtype=bool)
        starts[0] = True
        np.not_equal(keys[1:], keys[:-1], out=starts[1:])
        first = np.maximum.accumulate(np.where(starts, np.arange(len(keys)), 0))
        dup = ~starts
        found = np.empty(int(dup.sum()), dtype=PAIR)
        found["first"] = docs[first[dup]]
        found["other"] = docs[dup]
        found.tofile(out)
        pairs += len(found)
    return pairs


def _chunks(path: Path, dtype: np.dtype, count: int = PAIR_CHUNK) -> Iterator[np.ndarray]:
    with open(path, "rb") as f:
        while len(block := np.fromfile(f, dtype=dtype, count=count)):
            yield block


def _unique_docs(path: Path) -> np.ndarray:
    """Sorted distinct documents of a pairs file (memory: about twice their number)."""
    nodes = np.empty(0, np.uint64)
    pending: list[np.ndarray] = []
    size = 0
    for block in _chunks(path, PAIR):
        pending.append(np.unique(np.concatenate([block["first"], block["other"]])))
        size += len(pending[-1])
        if size > 2 * len(nodes) + PAIR_CHUNK:
            nodes = np.unique(np.concatenate([nodes, *pending]))
            pending, size = [], 0
    return np.unique(np.concatenate([nodes, *pending])) if pending else nodes


def _roots(parent: np.ndarray, x: np.ndarray) -> np.ndarray:
    r = parent[x]
    while True:
        up = parent[r]
        if np.array_equal(up, r):
            return r
        r = up


def cluster_removed(pairs: Path) -> np.ndarray:
    """Sorted documents that are not the first of their connected component in the pairs graph."""
    nodes = _unique_docs(pairs)
    if len(nodes) == 0:
        return nodes
    parent = np.arange(len(nodes), dtype=np.int64)  # nodes are sorted: index order is input order
    while True:  # hook the larger root under the smaller, until no pair joins two trees
        changed = False
        for block in _chunks(pairs, PAIR):
            a = np.searchsorted(nodes, block["first"])
            b = np.searchsorted(nodes, block["other"])
            ra, rb = _roots(parent, a), _roots(parent, b)
            join = ra != rb
            if join.any():
                changed = True
                np.minimum.at(parent, np.maximum(ra, rb)[join], np.minimum(ra, rb)[join])
        while not np.array_equal(up := parent[parent], parent):  # path compression
            parent = up
        if not changed:
            break
    return nodes[parent != np.arange(len(nodes))]


def exact_removed(pairs: Path) -> np.ndarray:
    """Exact groups are cliques: every second element of a pair is a non-first member."""
    found = [np.unique(block["other"]) for block in _chunks(pairs, PAIR)]
    return np.unique(np.concatenate(found)) if found else np.empty(0, np.uint64)


def removed_records(exact: np.ndarray, near: np.ndarray) -> np.ndarray:
    """(document, rule) sorted by document; a document in both is an exact duplicate."""
    near = near[~np.isin(near, exact, assume_unique=True)]
    out = np.empty(len(exact) + len(near), dtype=REMOVED)
    out["doc"] = np.concatenate([exact, near])
    out["rule"] = np.concatenate([np.full(len(exact), 1, np.uint8), np.full(len(near), 2, np.uint8)])
    return out[np.argsort(out["doc"], kind="stable")]


def write_all_pairs(parts: list[Path], bands: list[str], work: Path, memory: int) -> dict[str, int]:
    """Step 1 for every band: ``pairs-exact.bin`` and ``pairs-near.bin`` in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    counts = {"exact_pairs": 0, "near_pairs": 0}
    with open(work / "pairs-exact.bin", "wb") as fx, open(work / "pairs-near.bin", "wb") as fn:
        for band in bands:
            n = write_pairs(band_runs(parts, band), fx if band == EXACT else fn, memory)
            counts["exact_pairs" if band == EXACT else "near_pairs"] += n
    return counts


def write_removed(work: Path) -> tuple[Path, dict[str, int]]:
    """Steps 2 and 3: ``removed.bin`` from the pairs files in ``work``."""
    records = removed_records(exact_removed(work / "pairs-exact.bin"), cluster_removed(work / "pairs-near.bin"))
    path = work / "removed.bin"
    records.tofile(path)
    return path, {"exact_removed": int((records["rule"] == 1).sum()), "near_removed": int((records["rule"] == 2).sum())}
