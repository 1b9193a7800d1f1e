"""One way to write a log line: stderr, prefixed, flushed (readable in a multi-rank job log)."""

from __future__ import annotations

import sys


def info(message: str) -> None:
    print(f"[ptbr] {message}", file=sys.stderr, flush=True)
