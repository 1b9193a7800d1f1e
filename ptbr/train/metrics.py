"""Training metrics: one JSON line per record in RUN_DIR/metrics.jsonl, a readable stdout line,
and TensorBoard scalars when the package is installed. Only rank 0 writes."""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptbr.progress import fmt_eta

# Dense bf16 peak per device, TFLOP/s (no sparsity), from the vendors' data sheets. Matched against the CUDA
# device name in this order, first match wins: the specific variants (PCIe, NVL, L40S) before the family,
# and whole words only, so that "L40" is not read as "L4" nor "GH200" as "H200".
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"\bGH200\b", 989.0),
    (r"\bH200 NVL\b", 835.0),
    (r"\bH200\b", 989.0),
    (r"\bH100 PCIe\b", 756.0),
    (r"\bH100 NVL\b", 835.0),
    (r"\bH100\b", 989.0),  # SXM5 (the name carries "80GB HBM3")
    (r"\bB200\b", 2250.0),
    (r"\bA100\b", 312.0),
    (r"\bA10G\b", 125.0),
    (r"\bL40S\b", 362.0),
    (r"\bL40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"\bRTX A6000\b", 155.0),
    (r"\bV100\b", 125.0),  # fp16: V100 has no bf16
)


def peak_tflops_for(device_name: str) -> float | None:
    """Dense bf16 TFLOP/s of the card called ``device_name`` (as torch.cuda.get_device_name says), or None."""
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return tflops
    return None


def device_peak_tflops() -> float | None:
    """Peak dense bf16 TFLOP/s of this process's GPU, or None (CPU / unknown card: set train.peak_tflops)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return peak_tflops_for(torch.cuda.get_device_name())


def memory_gib() -> float:
    """The high-water mark of CUDA memory allocated since the previous call (one logging window), or the
    process RSS on CPU, in GiB. Resetting per window lets a log show memory growing or shrinking (a longer
    segment, an evaluation) instead of repeating the run's all-time peak."""
    import torch

    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        return peak / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


@dataclass
class LogWindow:
    """Accumulators for one logging interval."""

    t0: float = field(default_factory=time.perf_counter)
    steps: int = 0
    loss: float = 0.0  # sum of finite losses of applied steps
    n: int = 0  # how many
    wait: float = 0.0  # seconds waiting for data

    def add(self, loss: float | None, wait: float) -> None:
        """One optimizer step: its loss if the update was applied (a non-finite one is left out), its data wait."""
        if loss is not None and math.isfinite(loss):
            self.loss += loss
            self.n += 1
        self.steps += 1
        self.wait += wait


def as_float(x: Any) -> float:
    """A DeepSpeed scalar (tensor, number or None) as a float (None: nan)."""
    if x is None:
        return float("nan")
    return float(x.item() if hasattr(x, "item") else x)


def train_line(record: dict[str, Any], max_steps: int, world_size: int) -> str:
    """The stdout line of a ``train`` record."""
    tps = record["tokens_per_s"]
    mfu = f" mfu {record['mfu'] * 100:.1f}%" if "mfu" in record else ""
    return (
        f"step {record['step']}/{max_steps} loss {record['loss']:.4f} lr {record['lr']:.2e} "
        f"gnorm {record['grad_norm']:.3f} tok/s {tps:,.0f} ({tps / world_size:,.0f}/dev){mfu} "
        f"data {record['data_wait_share'] * 100:.0f}% mem {record['memory_gib']:.2f}GiB "
        f"eta {format_eta(record['eta_s'])}"
    )


def format_eta(seconds: float) -> str:
    return fmt_eta(seconds) if math.isfinite(seconds) else "?"


class MetricsLogger:
    """Appends records to ``metrics.jsonl`` (kept across resumes) and mirrors them elsewhere."""

    def __init__(self, run_dir: str | Path, enabled: bool, tensorboard: bool = True, mirrors: list | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = None
        self._tb = None
        self.mirrors = list(mirrors or [])  # e.g. ptbr.train.tracking.WandbTracker: log(record), close(code)
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
        for mirror in self.mirrors:
            mirror.log(record)
        if line:
            print(line, flush=True)

    def close(self, exit_code: int = 0) -> None:
        if self._file:
            self._file.close()
        if self._tb:
            self._tb.close()
        for mirror in self.mirrors:
            mirror.close(exit_code)
        self.mirrors = []
