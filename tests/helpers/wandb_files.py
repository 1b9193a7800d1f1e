"""Read what W&B's offline mode wrote: the history rows of a ``run-<id>.wandb`` file (W&B's transaction log,
LevelDB's log format: 32 KiB blocks of chunks with a 7-byte header, after a 7-byte ``:W&B`` file header; each
record a ``wandb_internal_pb2.Record`` protobuf). W&B ships no reader for it any more (``wandb sync`` uploads)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> Iterator[bytes]:
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # the rest of a block too short for a header is padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            yield pending + payload
        elif kind == 0 and length == 0:  # zero padding up to the block's end
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0


def history(path: Path) -> list[dict[str, Any]]:
    """Every history row of one offline run file, in order, as ``{key: value}``."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for payload in _payloads(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.history.item}
            )
    return rows


def offline_runs(wandb_dir: Path) -> list[Path]:
    """The ``run-<id>.wandb`` file of every offline launch under a W&B directory, oldest first."""
    return sorted(wandb_dir.glob("offline-run-*/run-*.wandb"))
