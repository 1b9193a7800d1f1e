"""The bounded-memory deduplication pieces on synthetic keys: sorted runs, the sliced band merge (any slice
count finds the same pairs), and clusters (first document of every connected component kept), checked
against a plain union-find."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from ptbr.clean.dedup import PAIR, cluster_removed, exact_removed, write_pairs
from ptbr.clean.signatures import RECORD, SignatureWriter


def reference_removed(pairs: list[tuple[int, int]]) -> list[int]:
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return sorted(x for x in parent if find(x) != x)


def write_pair_file(path: Path, pairs: list[tuple[int, int]]) -> Path:
    arr = np.array(pairs, dtype=np.uint64).reshape(-1, 2)
    out = np.empty(len(arr), PAIR)
    out["first"], out["other"] = arr[:, 0], arr[:, 1]
    out.tofile(path)
    return path


def test_runs_are_sorted_by_key_then_document_and_spill_at_the_limit(tmp_path):
    w = SignatureWriter(tmp_path / "sig", ["x", "b00"], spill_docs=4)
    rng = random.Random(0)
    docs = list(range(10))
    for d in docs:
        w.add(d, [rng.randrange(3), rng.randrange(2**64)])
    w.close()
    runs = sorted((tmp_path / "sig").glob("x-*.bin"))
    assert [len(np.fromfile(r, RECORD)) for r in runs] == [4, 4, 2]
    for r in runs:
        rec = np.fromfile(r, RECORD)
        assert list(zip(rec["key"], rec["doc"])) == sorted(zip(rec["key"], rec["doc"]))


def test_band_merge_finds_the_same_pairs_with_any_number_of_slices(tmp_path):
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 2**64, 3000, dtype=np.uint64, endpoint=False)
    keys[rng.integers(0, 3000, 900)] = keys[rng.integers(0, 3000, 900)]  # many groups, some large
    runs = []
    for part in range(3):  # three parts, each with two runs, documents increasing across parts
        for run in range(2):
            idx = np.arange(part * 1000 + run * 500, part * 1000 + run * 500 + 500)
            rec = np.empty(len(idx), RECORD)
            order = np.argsort(keys[idx], kind="stable")
            rec["key"], rec["doc"] = keys[idx][order], idx[order]
            path = tmp_path / f"p{part}-{run}.bin"
            rec.tofile(path)
            runs.append(path)
    found = []
    for memory in (1 << 30, 64 * 200, 64 * 7):  # one slice, ~240 slices, ~7000 slices
        with open(tmp_path / "pairs.bin", "wb") as f:
            n = write_pairs(runs, f, memory)
        pairs = np.fromfile(tmp_path / "pairs.bin", PAIR)
        assert n == len(pairs)
        found.append(sorted(zip(pairs["first"].tolist(), pairs["other"].tolist())))
    assert found[0] == found[1] == found[2]
    expected = []  # star of every group from its first document
    for key in np.unique(keys):
        members = np.flatnonzero(keys == key)
        expected += [(int(members[0]), int(m)) for m in members[1:]]
    assert found[0] == sorted(expected)


def test_clusters_keep_the_first_document_of_every_connected_component(tmp_path):
    chain = [(10, 11), (11, 12), (12, 13)]  # a chain: 10 kept although 10 and 13 never met
    crossing = [(20, 25), (21, 25), (21, 22)]  # joined through 25: only 20 kept
    rng = random.Random(3)
    random_graph = [tuple(sorted(rng.sample(range(100, 400), 2))) for _ in range(250)]
    pairs = chain + crossing + random_graph + [(10, 11)]  # a pair seen in two bands
    path = write_pair_file(tmp_path / "near.bin", pairs)
    removed = cluster_removed(path).tolist()
    assert removed == reference_removed(pairs)
    assert {10, 20}.isdisjoint(removed) and {11, 12, 13, 21, 22, 25} <= set(removed)
    assert cluster_removed(write_pair_file(tmp_path / "none.bin", [])).tolist() == []


def test_exact_groups_drop_every_member_but_the_first(tmp_path):
    path = write_pair_file(tmp_path / "x.bin", [(1, 5), (1, 9), (2, 3)])
    assert exact_removed(path).tolist() == [3, 5, 9]
