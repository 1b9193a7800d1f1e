"""Removing streaming's leaked /dev/shm segments without touching a live job's.

``streaming.base.util.clean_stale_shared_memory()`` unlinks every segment of each prefix in turn
until it meets a free prefix, so on a node where another job (or another dataset of this job)
is running it deletes that job's live segments. Here a segment is stale only if no process maps
it or holds it open: every live StreamingDataset keeps its segments mmapped (CPython's
SharedMemory keeps both the fd and the mapping), so scanning /proc/*/maps and /proc/*/fd finds
them. Only segments owned by this user are considered (Python creates them mode 0600, so only
this user, or root, can be attached to them). The ``locals`` segment of a prefix is removed last,
so a job starting concurrently never picks a prefix that still has other stale segments.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

SHM_DIR = Path("/dev/shm")
STREAMING_NAMES = (
    "locals",
    "barrier",
    "next_epoch",
    "cache_usage",
    "shard_states",
    "shard_access_times",
    "resume",
    "epoch_shape",
    "epoch_data",
)
_PATTERN = re.compile(r"^\d{6}_(" + "|".join(STREAMING_NAMES) + r")$")
# DeepSpeed's CPU shared-memory all-reduce (gloo runs) keeps a 66 MiB buffer per rank that a killed
# job leaves behind; the same "nobody maps it" rule makes it safe to remove.
_DEEPSPEED = re.compile(r"^deepspeed_allreduce_buffer_")


def streaming_segments(shm_dir: Path = SHM_DIR) -> list[str]:
    """Names of streaming's shared-memory segments (and DeepSpeed's CPU all-reduce buffers) owned by
    this user."""
    uid = os.geteuid()
    out = []
    try:
        entries = list(os.scandir(shm_dir))
    except FileNotFoundError:
        return []
    for entry in entries:
        if _PATTERN.match(entry.name) or _DEEPSPEED.match(entry.name):
            try:
                if entry.stat(follow_symlinks=False).st_uid == uid:
                    out.append(entry.name)
            except FileNotFoundError:
                continue
    return sorted(out)


def segments_in_use(shm_dir: Path = SHM_DIR) -> set[str]:
    """Names under ``shm_dir`` that some readable process maps or has open."""
    prefix = str(shm_dir).rstrip("/") + "/"
    used: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
                for line in f:
                    i = line.find(prefix)
                    if i >= 0:
                        used.add(line[i + len(prefix) :].strip().removesuffix(" (deleted)"))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            pass
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except (FileNotFoundError, PermissionError, ProcessLookupError):
                continue
            if target.startswith(prefix):
                used.add(target[len(prefix) :].removesuffix(" (deleted)"))
    return used


def clean_stale_streaming_shm(shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink this user's streaming segments that no process uses; returns the removed names."""
    candidates = streaming_segments(shm_dir)
    if not candidates:
        return []
    in_use = segments_in_use(shm_dir)
    stale = [n for n in candidates if n not in in_use]
    stale.sort(key=lambda n: (n.endswith("_locals"), n))  # each prefix's "locals" last
    removed = []
    for name in stale:
        try:
            os.unlink(shm_dir / name)
            removed.append(name)
        except FileNotFoundError:
            continue
    return removed
