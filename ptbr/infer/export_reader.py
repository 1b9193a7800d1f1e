"""Read an export directory (``ptbr export``) tensor by tensor, rows at a time, as float32 numpy arrays.

The safetensors file is read with ``os.pread`` straight from its header's offsets (no torch, no
memory map): a conversion that streams rows keeps only those rows in memory, and a process that never
imports torch stays small. A ``.pth`` export (``--format rwkv``) needs torch; it is memory-mapped.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ptbr.errors import PtbrError

_ST_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


def is_export_dir(path: Path) -> bool:
    """A directory written by ``ptbr export`` (its config.json names the weights file), not a run directory."""
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        config = json.loads(cfg.read_text())
    except ValueError:
        return False
    return isinstance(config, dict) and "weights" in config and "model" in config


class ExportedWeights:
    """The tensors of an export directory; a tied head (stored once) is read through its alias."""

    def __init__(self, model_dir: str | Path) -> None:
        self.dir = Path(model_dir)
        self.config: dict[str, Any] = json.loads((self.dir / "config.json").read_text())
        self.path = self.dir / self.config.get("weights", "model.safetensors")
        if not self.path.is_file():
            raise PtbrError(f"{self.dir}: {self.path.name} is missing (an incomplete export? run ptbr export again)")
        self.aliases: dict[str, str] = dict(self.config.get("tied") or {})
        self._pth: dict[str, Any] | None = None
        if self.path.suffix == ".safetensors":
            self._entries, self._data_start = self._read_header()
        else:
            import torch

            self._pth = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
            self._entries = {k: {"shape": list(v.shape)} for k, v in self._pth.items()}

    def _read_header(self) -> tuple[dict[str, Any], int]:
        with open(self.path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            try:
                header = json.loads(f.read(n))
            except ValueError:
                raise PtbrError(f"{self.path}: not a safetensors file (unreadable header)") from None
        header.pop("__metadata__", None)
        for name, entry in header.items():
            if entry["dtype"] not in _ST_DTYPES:
                raise PtbrError(f"{self.path}: tensor {name} is {entry['dtype']}; expected F32, F16 or BF16")
        return header, 8 + n

    def _resolve(self, name: str) -> str:
        name = name if name in self._entries else self.aliases.get(name, name)
        if name not in self._entries:
            raise PtbrError(f"{self.path}: tensor {name} is missing (the weights do not match config.json)")
        return name

    def names(self) -> set[str]:
        return set(self._entries) | {a for a, n in self.aliases.items() if n in self._entries}

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[self._resolve(name)]["shape"])

    def read(self, name: str) -> np.ndarray:
        """The whole tensor, float32."""
        shape = self.shape(name)
        rows = shape[0] if shape else 1
        return self.rows(name, 0, rows).reshape(shape)

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) along the first dimension, float32, shape [stop - start, *rest]."""
        key = self._resolve(name)
        shape = tuple(self._entries[key]["shape"])
        rest = shape[1:]
        if self._pth is not None:
            return self._pth[key].reshape(shape or (1,))[start:stop].float().numpy().reshape(-1, *rest)
        entry = self._entries[key]
        dtype = _ST_DTYPES[entry["dtype"]]
        row_bytes = math.prod(rest) * dtype.itemsize
        offset = self._data_start + entry["data_offsets"][0] + start * row_bytes
        count = (stop - start) * row_bytes
        fd = os.open(self.path, os.O_RDONLY)
        try:
            raw = os.pread(fd, count, offset)
        finally:
            os.close(fd)
        if len(raw) != count:
            raise PtbrError(f"{self.path}: truncated (tensor {key} ends past the end of the file)")
        values = np.frombuffer(raw, dtype=dtype)
        if entry["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            values = (values.astype(np.uint32) << 16).view(np.float32)
        return values.astype(np.float32, copy=False).reshape(-1, *rest)

    def row_chunks(self, name: str, max_elements: int) -> Iterator[np.ndarray]:
        """The tensor as consecutive blocks of whole rows, each at most ``max_elements`` (at least one row)."""
        shape = self.shape(name)
        rows = shape[0] if shape else 1
        per_row = max(1, math.prod(shape[1:]))
        step = max(1, max_elements // per_row)
        for start in range(0, rows, step):
            yield self.rows(name, start, min(rows, start + step))
