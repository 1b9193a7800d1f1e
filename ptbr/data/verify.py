"""``ptbr shards verify``: check a dataset (local dir or s3://) end to end and list every problem.

Checks: manifest present and well-formed; remotely, _SUCCESS equal to sha256(manifest.json);
each split's index.json matches the manifest; every shard named in an index exists with the
recorded size and xxh64, decompresses to the recorded raw size and hash, holds the recorded
number of samples of sample_len tokens, and every token id is below the vocabulary size;
sample counts add up; the dataset hash recomputes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import xxhash

from ptbr.data.hashing import sha256_bytes
from ptbr.data.manifest import (
    COLUMN,
    INDEX,
    MANIFEST,
    SUCCESS,
    dataset_hash,
    layout_of,
    parse_manifest,
    stored_file,
    success_matches,
)
from ptbr.data.mds import decompress, read_samples
from ptbr.data.s3 import is_s3
from ptbr.data.store import LocalStore, S3Store
from ptbr.errors import DataError
from ptbr.progress import ProgressBar


@dataclass
class VerifyReport:
    source: str
    problems: list[str] = field(default_factory=list)
    shards: int = 0
    samples: int = 0
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Shard:
    split: str
    entry: dict[str, Any]


def _check_shard(store: LocalStore | S3Store, shard: _Shard, manifest: dict[str, Any]) -> tuple[list[str], int]:
    """Problems of one shard, and its byte size."""
    entry = shard.entry
    zipped = entry.get("zip_data")
    stored = stored_file(entry)
    name = f"{shard.split}/{stored['basename']}"
    data = store.get(name)
    if data is None:
        return [f"{name}: missing"], 0
    problems = []
    if len(data) != stored["bytes"]:
        return [f"{name}: {len(data)} bytes, index says {stored['bytes']} (truncated or replaced)"], len(data)
    want = stored.get("hashes", {}).get("xxh64")
    if want and xxhash.xxh64(data).hexdigest() != want:
        return [f"{name}: content hash mismatch (xxh64 {xxhash.xxh64(data).hexdigest()} != {want}; corrupted)"], len(
            data
        )
    try:
        raw = decompress(data, entry.get("compression")) if zipped else data
    except Exception as exc:
        return [f"{name}: cannot decompress ({exc.__class__.__name__})"], len(data)
    raw_info = entry["raw_data"]
    if len(raw) != raw_info["bytes"]:
        problems.append(f"{name}: decompressed size {len(raw)} != {raw_info['bytes']}")
    want_raw = raw_info.get("hashes", {}).get("xxh64")
    if want_raw and xxhash.xxh64(raw).hexdigest() != want_raw:
        problems.append(f"{name}: decompressed content hash mismatch")
    try:
        samples = read_samples(raw, manifest["sample_len"], manifest["dtype"])
    except ValueError as exc:
        return [*problems, f"{name}: malformed MDS shard ({exc})"], len(data)
    if len(samples) != entry["samples"]:
        problems.append(f"{name}: holds {len(samples)} samples, index says {entry['samples']}")
    if samples.size:
        top = int(samples.max())
        if top >= manifest["vocab_size"]:
            bad = int((samples >= manifest["vocab_size"]).sum())
            problems.append(f"{name}: {bad} token id(s) >= vocab size {manifest['vocab_size']} (max {top})")
    return problems, len(data)


def _check_index(split: str, data: bytes | None, manifest: dict[str, Any], report: VerifyReport) -> list[_Shard]:
    entry = manifest["splits"][split]
    if data is None:
        report.problems.append(f"{split}/{INDEX}: missing")
        return []
    if sha256_bytes(data) != entry.get("index_sha256"):
        report.problems.append(f"{split}/{INDEX}: does not match manifest.json (index_sha256 differs)")
    try:
        shards = json.loads(data)["shards"]
    except (ValueError, KeyError, TypeError):
        report.problems.append(f"{split}/{INDEX}: not a valid MDS index")
        return []
    encoding = f"ndarray:{manifest['dtype']}:{manifest['sample_len']}"
    total = 0
    for s in shards:
        if s.get("column_names") != [COLUMN] or s.get("column_encodings") != [encoding]:
            report.problems.append(
                f"{split}: shard {(s.get('raw_data') or {}).get('basename')} has columns "
                f"{s.get('column_names')} {s.get('column_encodings')}, expected "
                f"[{COLUMN!r}] [{encoding!r}]"
            )
        total += int(s.get("samples", 0))
    if total != entry.get("samples"):
        report.problems.append(f"{split}: indexes hold {total} samples, manifest says {entry.get('samples')}")
    if len(shards) != entry.get("shards"):
        report.problems.append(f"{split}: index lists {len(shards)} shards, manifest says {entry.get('shards')}")
    return [_Shard(split, s) for s in shards]


def verify(source: str, *, jobs: int = 4, progress: bool = True, log: Callable[[str], None] = print) -> VerifyReport:
    """Verify ``source``; problems are collected, not raised (only access errors raise)."""
    store = S3Store(source, max_pool_connections=jobs + 4) if is_s3(source) else LocalStore(source)
    report = VerifyReport(str(store))
    mbytes = store.get(MANIFEST)
    if mbytes is None:
        raise DataError(f"{store}: no {MANIFEST} (not a ptbr dataset, or its build/publish never finished)")
    try:
        manifest = parse_manifest(mbytes, str(store))
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    success = store.get(SUCCESS)
    if success is None and store.remote:
        report.problems.append(f"{SUCCESS}: missing (the publish never committed; re-run 'ptbr shards publish')")
    elif success is not None and not success_matches(success, mbytes):
        report.problems.append(
            f"{SUCCESS}: does not match manifest.json (holds "
            f"{success.decode(errors='replace').strip()[:16]}, manifest hashes to "
            f"{sha256_bytes(mbytes)[:16]})"
        )
    shards: list[_Shard] = []
    index_hashes = {}
    for split in manifest["splits"]:
        data = store.get(f"{split}/{INDEX}")
        index_hashes[split] = sha256_bytes(data) if data is not None else ""
        shards.extend(_check_index(split, data, manifest, report))
    if dataset_hash(layout_of(manifest), index_hashes) != manifest["dataset_hash"]:
        report.problems.append("dataset_hash does not recompute from the manifest and indexes")
    total = sum(stored_file(s.entry)["bytes"] for s in shards)
    with ProgressBar("verify", total, rate_unit="shards", enabled=progress) as bar, ThreadPoolExecutor(jobs) as pool:
        for shard, (problems, size) in zip(shards, pool.map(lambda s: _check_shard(store, s, manifest), shards)):
            report.problems.extend(problems)
            report.shards += 1
            report.bytes += size
            report.samples += int(shard.entry.get("samples", 0))
            bar.update(report.bytes, report.shards)
    return report
