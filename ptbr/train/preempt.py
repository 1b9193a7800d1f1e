"""Preemption: SIGUSR1 / SIGTERM only set a flag; ranks agree on it at a step boundary, save, exit.

Slurm sends SIGTERM (or ``--signal=USR1@T`` earlier) before killing a job. Acting inside the
handler would race the training step and the collectives, so the handler only records the signal;
the flag is all-reduced after every optimizer step so that all ranks stop at the same step. A second
signal during the save changes nothing (the flag is already set), and the save itself is atomic.
"""

from __future__ import annotations

import signal
import sys

import torch
import torch.distributed as dist

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later" — the Slurm scripts requeue on it
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous = {}
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            print(f"[ptbr] received {signal.Signals(signum).name}: will checkpoint and exit after this step",
                  file=sys.stderr, flush=True)
        self.signum = signum

    def agreed(self, device: torch.device) -> bool:
        """True on every rank if any rank received a stop signal (one tiny all-reduce)."""
        flag = torch.tensor([1.0 if self.signum is not None else 0.0], device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
