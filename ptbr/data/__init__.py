"""Data pipeline: tokenizer, MDS shard building, S3 publishing, verification, streaming reader.

The streaming entry points are re-exported lazily (``from ptbr.data import build_dataset``) so that
importing this package does not import mosaicml-streaming (3-6 s) in processes that never read.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "read_manifest": "ptbr.data.stream",
    "prepare_streaming_env": "ptbr.data.stream",
    "build_dataset": "ptbr.data.stream",
    "dataset_cache_dir": "ptbr.data.stream",
    "TokenDataset": "ptbr.data.token_dataset",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ptbr.data' has no attribute {name!r}")
