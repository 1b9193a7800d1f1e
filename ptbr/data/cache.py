"""The local shard cache: cached files are checked against the published hashes once per job.

Streaming validates a shard's hash when it downloads it, but trusts any file already in its cache:
a bit flip or a truncation on the node-local disk would be read as data. Before a dataset is opened,
the first process of the job on the node checks every cached shard file (size, then xxh64 against
index.json, i.e. the hash recorded at build and verified at publish) and deletes the ones that do
not match; streaming then downloads them again. The other processes of the job wait on a file lock
and skip the work (a marker names the job that checked).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from filelock import FileLock

from ptbr.data.hashing import xxh64_file

LOCK = ".ptbr-cache.lock"
MARKER = ".ptbr-cache-checked"


def _bad(path: Path, entry: dict[str, Any]) -> str | None:
    """Why the cached file does not match its index entry (None: it matches)."""
    size = path.stat().st_size
    if size != int(entry["bytes"]):
        return f"{size} bytes, {entry['bytes']} expected"
    want = (entry.get("hashes") or {}).get("xxh64")
    if want and xxh64_file(path) != want:
        return "xxh64 mismatch"
    return None


def check_cached_shards(
    split_dir: str | Path, index: dict[str, Any], job: str, log: Callable[[str], None]
) -> list[str]:
    """Delete cached shard files of ``split_dir`` that do not match ``index``; once per ``job``."""
    split_dir = Path(split_dir)
    split_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(split_dir / LOCK)):
        marker = split_dir / MARKER
        if marker.is_file() and marker.read_text(encoding="utf-8") == job:
            return []
        files = [
            (split_dir / entry["basename"], entry)
            for shard in index.get("shards", [])
            for entry in (shard.get("raw_data"), shard.get("zip_data"))
            if entry
        ]
        present = [(p, entry) for p, entry in files if p.is_file()]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=4) as pool:
            verdicts = list(pool.map(lambda item: _bad(*item), present))
        removed = []
        for (path, _info), why in zip(present, verdicts):
            if why:
                path.unlink(missing_ok=True)
                removed.append(path.name)
                log(f"cache: removed corrupt cached shard {path} ({why}); it will be downloaded again")
        if present:
            total = sum(p.stat().st_size for p, _ in present if p.exists())
            log(
                f"cache: checked {len(present)} cached shard files ({total / 2**20:.1f} MiB) of {split_dir} in "
                f"{time.perf_counter() - t0:.1f} s, {len(removed)} removed"
            )
        marker.write_text(job, encoding="utf-8")
        return removed
