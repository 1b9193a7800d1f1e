"""``ptbr supervise -- LAUNCHER ...``: make a launcher's job end the way its ranks ended.

``torchrun`` and the ``deepspeed`` launcher react to SIGTERM themselves: they kill their ranks after
30 s and exit with 1 (torchrun with a ``SignalException`` traceback), so a preemption that the ranks
handled cleanly (checkpoint committed, exit 75) looks like a failure to Slurm or to a wrapper that
requeues on 75. Under the supervisor

* the launcher starts with the stop signals (SIGTERM, SIGUSR1) *blocked*; the mask is inherited by
  everything it starts, and only the ranks unblock them (:class:`ptbr.train.preempt.StopRequest`),
  so a signal sent to the whole process group, or by Slurm to every process of the step, is acted on
  by the ranks alone;
* a stop signal sent to the supervisor only is forwarded to the ranks it knows (every rank writes its
  pid into the status directory named by ``PTBR_STATUS_DIR``);
* when the launcher has exited, the supervisor exits with the code the ranks reported (0, 75, 69,
  ...) whatever the launcher's own code was; without reports it passes the launcher's code on. Ranks
  whose ending was agreed by all of them exit 0 towards the launcher (see :func:`report`), so that
  torchrun does not print a failure report for a clean preemption.

Under ``srun`` with one task per GPU (the Slurm scripts) the ranks are the tasks and no supervisor
is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from ptbr.errors import AGREED_EXIT_CODES, EXIT_OK, EXIT_PREEMPTED, STOP_SIGNALS
from ptbr.fsutil import atomic_write_text

STATUS_DIR_ENV = "PTBR_STATUS_DIR"


# ------------------------------------------------------------------------------- rank side
def _status_dir() -> Path | None:
    value = os.environ.get(STATUS_DIR_ENV)
    return Path(value) if value else None


def announce(rank: int) -> None:
    """Tell a supervisor (if any) which process is this rank."""
    d = _status_dir()
    if d is not None:
        with contextlib.suppress(OSError):
            (d / f"rank{rank}.pid").write_text(str(os.getpid()))


def report(rank: int, exit_code: int) -> int:
    """Tell a supervisor (if any) how this rank ends; returns the code to exit with.

    An ending all ranks agreed on (``ptbr.errors.AGREED_EXIT_CODES``: done, preempted, an agreed data
    fault or save failure, the non-finite stop) is reported to the supervisor and shown to the launcher
    as 0, so that the launcher shuts down quietly instead of printing its failure report; the
    supervisor exits with the real code. Anything else keeps its code: the launcher must stop the
    other ranks."""
    d = _status_dir()
    if d is None:
        return exit_code
    try:
        atomic_write_text(d / f"rank{rank}.json", json.dumps({"rank": rank, "exit_code": exit_code}))
    except OSError:
        return exit_code
    return 0 if exit_code in AGREED_EXIT_CODES else exit_code


# ------------------------------------------------------------------------------- supervisor side
def _block_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def _rank_pids(d: Path) -> list[int]:
    pids = []
    for f in d.glob("rank*.pid"):
        with contextlib.suppress(OSError, ValueError):
            pids.append(int(f.read_text()))
    return pids


def _reported_codes(d: Path) -> list[int]:
    codes = []
    for f in d.glob("rank*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            codes.append(int(json.loads(f.read_text())["exit_code"]))
    return codes


def exit_code(launcher_code: int, reported: list[int]) -> int:
    """The job's exit code: the ranks' common code; if they disagree, the first failure that is
    not a preemption; without reports, the launcher's (a signal death as 128 + signal)."""
    if reported:
        distinct = sorted(set(reported))
        if len(distinct) == 1:
            return distinct[0]
        failures = [c for c in distinct if c not in (EXIT_OK, EXIT_PREEMPTED)]
        return failures[0] if failures else EXIT_PREEMPTED
    return 128 - launcher_code if launcher_code < 0 else launcher_code


def supervise(command: list[str]) -> int:
    if not command:
        print(
            "ptbr supervise: error: give the launcher command after --, e.g. "
            "ptbr supervise -- torchrun --nproc_per_node 8 -m ptbr.train --config C",
            file=sys.stderr,
        )
        return 2
    status = Path(tempfile.mkdtemp(prefix="ptbr-status-"))
    env = {**os.environ, STATUS_DIR_ENV: str(status)}
    try:
        proc = subprocess.Popen(command, env=env, preexec_fn=_block_stop_signals)  # noqa: PLW1509
    except OSError as exc:
        shutil.rmtree(status, ignore_errors=True)
        print(f"ptbr supervise: error: cannot start {command[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 127

    def forward(signum: int, _frame: object) -> None:
        for pid in _rank_pids(status):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, forward)
    while True:
        try:
            launcher_code = proc.wait()
            break
        except KeyboardInterrupt:  # Ctrl-C reaches the launcher too (same process group); wait for it
            continue
    code = exit_code(launcher_code, _reported_codes(status))
    shutil.rmtree(status, ignore_errors=True)
    return code
