"""Shared helpers for benchmark scripts: timing, a plain-text table, and a JSON report."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def time_call(
    fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1, sync: Callable[[], None] | None = None
) -> float:
    """Median wall time of ``fn`` in milliseconds (``sync`` e.g. torch.cuda.synchronize)."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        import os

        import torch

        info["torch"] = torch.__version__
        info["cpu_threads"] = torch.get_num_threads()
        info["cpu_count"] = os.cpu_count()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return info


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.1f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def write_report(
    path: str | Path | None,
    name: str,
    rows: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
    partial: bool = False,
) -> None:
    """The JSON report (``path``) or, without a path, the JSON on stdout. ``partial``: written after a row
    while more are to come (quietly, ``"complete": false``), so that a run cut short by a time limit still
    leaves what it measured; replaced atomically each time."""
    report = {"benchmark": name, "machine": machine_info(), "complete": not partial, "rows": rows, **(extra or {})}
    text = json.dumps(report, indent=2)
    if path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, target)
        if not partial:
            print(f"\nJSON report written to {path}")
    elif not partial:
        print("\n" + text)
