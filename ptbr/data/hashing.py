"""File and JSON hashing shared by build, publish, verify and the streaming reader.

xxh64 is what MDS index files record for shards (and what streaming can validate on download);
sha256 names things that must not collide across datasets (tokenizer, manifest, dataset version).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import xxhash

CHUNK = 8 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_digest(path: str | Path, h: Any) -> str:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    return _file_digest(path, hashlib.sha256())


def xxh64_file(path: str | Path) -> str:
    """Same digest as ``streaming.base.hashing.get_hash('xxh64', data)`` on the whole file."""
    return _file_digest(path, xxhash.xxh64())


def xxh3_file(path: str | Path) -> str:
    """Fast content fingerprint of an input file (128-bit, for change detection)."""
    return _file_digest(path, xxhash.xxh3_128())


def blake2b_128(data: bytes) -> bytes:
    """A 16-byte digest for in-memory identity (exact-duplicate keys): fast, and collisions negligible."""
    return hashlib.blake2b(data, digest_size=16).digest()


def canonical_json(obj: Any) -> bytes:
    """Key-sorted compact JSON: the same object always hashes the same."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_json(obj: Any) -> str:
    return sha256_bytes(canonical_json(obj))
