"""Elastic resume through DeepSpeed's universal checkpoint format.

A ZeRO checkpoint's optimizer state is partitioned for the world size that wrote it; loading it at
another size raises. ``ds_to_universal`` rewrites it as one file per parameter (fp32 weights, Adam
moments), which any world size can load with ``"checkpoint": {"load_universal": true}``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ptbr.checkpoint.layout import MARKER, STATE, UNIVERSAL, Checkpoint
from ptbr.errors import CheckpointError
from ptbr.fsutil import atomic_write_text, replace_directory


def universal_dir(ckpt: Checkpoint) -> Path:
    return ckpt.path.parent / UNIVERSAL / ckpt.tag


def ensure_universal(ckpt: Checkpoint, log) -> Path:
    """Convert ``ckpt`` once (rank 0 only); a finished conversion carries its own marker."""
    out = universal_dir(ckpt)
    if (out / MARKER).is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log(f"converting {ckpt.tag} to DeepSpeed's universal format for a resume at another world size")
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.checkpoint.ds_to_universal",
        "--input_folder",
        str(ckpt.path),
        "--output_folder",
        str(tmp),
        "--inject_missing_state",
        "--num_extract_workers",
        "2",
        "--num_merge_workers",
        "2",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise CheckpointError(f"could not convert {ckpt.path} to the universal format: {tail[0]}")
    for name in (STATE,):
        shutil.copy2(ckpt.path / name, tmp / name)
    (tmp.parent / "latest_universal").unlink(missing_ok=True)  # written by the tool; we keep our own
    replace_directory(tmp, out)
    atomic_write_text(out / MARKER, json.dumps({"converted_from": ckpt.tag}) + "\n")
    log(f"universal conversion done in {time.perf_counter() - t0:.1f} s")
    return out
