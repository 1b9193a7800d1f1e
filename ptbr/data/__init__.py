"""The data pipeline, in four phases. Each module belongs to one; a phase uses only its own modules and the
shared ones (``manifest``, ``hashing``, ``store``, ``s3``).

=========  =====================================================================================
phase      modules
=========  =====================================================================================
build      ``tokenizer`` (byte-level BPE: train, load, the facts shards depend on), ``corpus``
           (input discovery and reading), ``encode`` (tokenizer worker processes, content-hash split),
           ``packing`` (samples of seq_len + 1 tokens), ``build`` (``ptbr shards build``: MDS shards +
           manifest, atomic and idempotent)
publish    ``publish`` (``ptbr shards publish``: verified upload, ``_SUCCESS`` last), ``s3`` (boto3
           clients, endpoint handling), ``store`` (read a dataset by relative path, local or s3://)
check      ``verify`` (``ptbr shards verify``: every shard against its hashes and the vocabulary),
           ``mds`` (MDS shards read without streaming), ``cache`` (cached shards re-checked once per job)
read       ``stream`` (:func:`build_dataset`: one source or a weighted mixture, the one constructor),
           ``mixture`` (a mixture's common manifest), ``token_dataset`` (the StreamingDataset of samples),
           ``streaming_env`` (streaming made safe under any launcher), ``shm`` (stale shared memory),
           ``shm_prefix`` (shared-memory names safe between concurrent jobs), ``streaming_import``
           (streaming without its bundled dataset classes), ``faults`` (download retries, one-line
           data-source errors)
shared     ``manifest`` (manifest.json, ``_SUCCESS``, dataset identity, :func:`read_manifest`),
           ``hashing`` (sha256 / xxh64 of bytes, files and JSON)
=========  =====================================================================================

The read entry points are re-exported lazily (``from ptbr.data import build_dataset``) so that
importing this package does not import mosaicml-streaming (3-6 s) in processes that never read; when a
process does, it skips streaming's bundled dataset classes (:mod:`ptbr.data.streaming_import`).
"""

from __future__ import annotations

import importlib
from typing import Any

from ptbr.data.streaming_import import defer_bundled_datasets

defer_bundled_datasets()

_LAZY = {
    "read_manifest": "ptbr.data.manifest",
    "prepare_streaming_env": "ptbr.data.streaming_env",
    "build_dataset": "ptbr.data.stream",
    "dataset_cache_dir": "ptbr.data.stream",
    "TokenDataset": "ptbr.data.token_dataset",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ptbr.data' has no attribute {name!r}")
