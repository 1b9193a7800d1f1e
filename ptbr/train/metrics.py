"""Training metrics: one JSON line per record in RUN_DIR/metrics.jsonl, a readable stdout line,
and TensorBoard scalars when the package is installed. Only rank 0 writes."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ptbr.data.progress import fmt_eta

# Dense bf16 peak per device, TFLOP/s (no sparsity), by substring of the CUDA device name.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "A10G": 125.0,
                    "L40S": 362.0, "L4": 121.0, "A6000": 155.0, "V100": 125.0, "B200": 2250.0}


def device_peak_tflops() -> float | None:
    """Peak dense bf16 TFLOP/s of this process's GPU, or None (CPU / unknown card)."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops
    return None


def memory_gib() -> float:
    """CUDA max allocated memory, or the process RSS on CPU, in GiB."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def format_eta(seconds: float) -> str:
    return fmt_eta(seconds) if math.isfinite(seconds) else "?"


class MetricsLogger:
    """Appends records to ``metrics.jsonl`` (kept across resumes) and mirrors them elsewhere."""

    def __init__(self, run_dir: str | Path, enabled: bool, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the run
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:
                self._tb = None

    def log(self, record: dict[str, Any], line: str | None = None) -> None:
        if not self.enabled:
            return
        record = {"time": time.time(), **record}
        assert self._file is not None
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._tb is not None and "step" in record:
            for key, value in record.items():
                if isinstance(value, int | float) and key not in ("step", "time"):
                    self._tb.add_scalar(f"{record.get('kind', 'train')}/{key}", value, record["step"])
                elif isinstance(value, dict):  # e.g. val_loss_by_position: one scalar per bucket
                    for sub, v in value.items():
                        if isinstance(v, int | float):
                            self._tb.add_scalar(f"{record.get('kind', 'train')}/{key}/{sub}", v, record["step"])
        if line:
            print(line, flush=True)

    def close(self) -> None:
        if self._file:
            self._file.close()
        if self._tb:
            self._tb.close()
