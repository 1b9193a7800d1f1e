"""What a run directory holds besides checkpoints and metrics: the resolved config and the dataset's tokenizer.

Written by rank 0 when a run starts (also after every resume), so that ``ptbr export`` and ``ptbr generate``
find the tokenizer the model was trained with next to its checkpoints, whatever happens to the dataset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ptbr.data.hashing import sha256_bytes, sha256_file
from ptbr.data.store import open_store
from ptbr.fsutil import atomic_write_bytes, atomic_write_text
from ptbr.log import info

CONFIG = "config.json"
TOKENIZER = "tokenizer.json"


def write_run_files(run_dir: Path, config: dict[str, Any], manifest: dict[str, Any], source: str) -> None:
    """``config.json`` (the config as resolved, no secrets: credentials never enter it) and a verified copy of
    the dataset's tokenizer (skipped when the copy is already the right one)."""
    atomic_write_text(run_dir / CONFIG, json.dumps(config, indent=2) + "\n")
    meta = manifest.get("tokenizer", {})
    target = run_dir / TOKENIZER
    if not meta.get("sha256") or (target.is_file() and sha256_file(target) == meta["sha256"]):
        return
    data = open_store(source).get(meta.get("file", TOKENIZER))
    if data is None or sha256_bytes(data) != meta["sha256"]:
        info(f"warning: {source} has no tokenizer.json matching its manifest; exports will need --tokenizer")
        return
    atomic_write_bytes(target, data)
