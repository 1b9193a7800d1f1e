"""Preemption and step-boundary agreement.

SIGUSR1 / SIGTERM only set a flag. Slurm sends SIGTERM (or ``--signal=USR1@T`` earlier) before
killing a job; acting inside the handler would race the training step and the collectives. At every
step boundary the ranks agree (:func:`agree`, one tiny all-reduce on a CPU control group) on whether
any of them was signalled or lost its data source, so that all of them stop at the same step and
save the same checkpoint. A second signal during the save changes nothing, and the save is atomic.

The signal may reach every process of the job at once (Slurm signals the whole step; a terminal
or ``kill -- -PGID`` the whole group): DataLoader workers ignore it (:func:`ignore_stop_signals`)
and are stopped by their rank; launchers run under ``ptbr supervise`` keep it blocked, so only the
ranks act on it (see :mod:`ptbr.train.supervise`).
"""

from __future__ import annotations

import signal
import sys
from multiprocessing import resource_tracker
from typing import Any

from ptbr.errors import STOP_SIGNALS

_early_signum: int | None = None


def catch_early_stop_signals() -> None:
    """Record a stop signal that arrives while the rank is still importing torch and DeepSpeed.

    Called first thing in a rank's entry point (this module imports nothing heavy). Without it a
    signal sent seconds after the job started (a short ``--time`` with ``--signal=B:USR1@lead``, a
    preemption right after a requeue) kills the rank by the default action, and the job exits with
    a signal instead of 75; with it, :class:`StopRequest` takes the signal over and the rank stops
    at its first step boundary."""

    def record(signum: int, frame: Any) -> None:
        global _early_signum
        _early_signum = signum

    for sig in STOP_SIGNALS:
        signal.signal(sig, record)


def _start_resource_tracker() -> None:
    """Start Python's shared-memory resource tracker now, with the stop signals ignored (an ignored
    disposition survives its fork and exec). Slurm signals every process of a step; a tracker killed by
    SIGUSR1 makes the rank's clean exit print tracebacks (the tracker already ignores SIGTERM/SIGINT)."""

    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        resource_tracker.ensure_running()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class StopRequest:
    def __init__(self) -> None:
        _start_resource_tracker()
        self.signum: int | None = None
        self._previous = {}
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        if _early_signum is not None:  # arrived during the imports (catch_early_stop_signals)
            self._handle(_early_signum, None)
        # a supervised launcher blocks the signals (its children inherit the mask): the ranks take them
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            print(
                f"[ptbr] received {signal.Signals(signum).name}: will checkpoint and exit after this step",
                file=sys.stderr,
                flush=True,
            )
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def ignore_stop_signals() -> None:
    """For helper processes (DataLoader workers): the rank handles preemption and stops them."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def agree(stop: bool, fault_code: int, group: Any = None) -> tuple[bool, int]:
    """Collective: (did any rank get a stop signal, the highest fault exit code of any rank or 0)."""
    import torch
    import torch.distributed as tdist

    flags = torch.tensor([int(stop), fault_code], dtype=torch.int64)
    if tdist.is_initialized():
        tdist.all_reduce(flags, op=tdist.ReduceOp.MAX, group=group)
    return bool(flags[0]), int(flags[1])
