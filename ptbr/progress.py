"""Progress on stderr: a live bar on a terminal, a plain line every few seconds in a log file.

tqdm's carriage-return bar turns into one enormous line in Slurm logs, so non-terminal output gets
one self-contained line per interval instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def _scaled(n: float, base: int, units: tuple[str, ...]) -> str:
    """``n`` in the largest unit that keeps it below ``base`` (whole numbers in the first unit)."""
    for i, unit in enumerate(units):
        if abs(n) < base or i == len(units) - 1:
            return f"{n:.0f}{unit}" if i == 0 else f"{n:.1f}{unit}"
        n /= base
    raise AssertionError("unreachable")


def human(n: float, unit: str = "") -> str:
    return _scaled(n, 1000, tuple(p + unit for p in ("", "k", "M", "G", "T")))


def human_bytes(n: float) -> str:
    return _scaled(n, 1024, (" B", " KiB", " MiB", " GiB", " TiB"))


def fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressBar:
    """Bytes-based progress (for the ETA) with an extra rate, e.g. tokens/s."""

    def __init__(
        self,
        desc: str,
        total_bytes: int,
        *,
        rate_unit: str = "tok",
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float | None = None,
    ) -> None:
        self.desc, self.total, self.rate_unit = desc, max(total_bytes, 1), rate_unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 10.0)
        self.t0 = time.perf_counter()
        self._last = self.t0
        self._shown: tuple[int, int] | None = None
        self.done_bytes = 0
        self.count = 0

    def update(self, done_bytes: int, count: int, *, force: bool = False) -> None:
        self.done_bytes, self.count = done_bytes, count
        now = time.perf_counter()
        if not self.enabled or (not force and now - self._last < self.interval):
            return
        self._last = now
        self._shown = (done_bytes, count)
        line = self.line(now)
        if self.tty:
            self.stream.write("\r" + line.ljust(100)[:150])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.perf_counter()) - self.t0, 1e-9)
        frac = min(self.done_bytes / self.total, 1.0)
        eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        eta_text = fmt_eta(eta) if frac > 0 else "?"
        return (
            f"{self.desc}: {100 * frac:5.1f}% {human_bytes(self.done_bytes)}/{human_bytes(self.total)} "
            f"{human(self.count)} {self.rate_unit} {human(self.count / elapsed)} {self.rate_unit}/s "
            f"elapsed {fmt_eta(elapsed)} ETA {eta_text}"
        )

    def close(self) -> None:
        if self.enabled:
            # a final line only when the terminal shows a bar or a log already has progress lines
            if self._shown != (self.done_bytes, self.count) and (self.tty or self._shown is not None):
                self.update(self.done_bytes, self.count, force=True)
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
