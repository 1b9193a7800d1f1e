"""User-facing errors, and the one table of exit codes and stop signals a job acts on.

A :class:`PtbrError` means "the user asked for something that cannot work" (bad config, missing
file, wrong credentials) or "the environment failed in a way ptbr recognises" (the data source is
gone, the disk is full). The CLI prints its message on one line and exits with its code, without a
traceback; anything else is a bug and keeps its traceback (exit 1).

:data:`EXIT_CODES` is the only place the codes are defined: the error classes below, the training
loop, ``ptbr supervise``, ``ptbr.dist.shutdown``, ``slurm/ptbr_job.sh`` (its ``case`` on the ranks'
code) and the README's table all follow it; ``tests/unit/test_exit_codes.py`` compares the script and
the README with it.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class ExitCode:
    code: int
    meaning: str
    job_action: str  # what a Slurm job script does: "stop", "requeue", "requeue after a delay"
    agreed: bool  # all ranks reach it together (they agreed on it at a step boundary)


EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(0, "done", "stop", agreed=True),
    ExitCode(1, "unexpected error (a bug: the traceback is in the log)", "stop", agreed=False),
    ExitCode(2, "bad configuration, input or checkpoint (one line says which and how to fix it)", "stop", agreed=False),
    ExitCode(
        3,
        "`train.max_nonfinite_in_row` non-finite steps in a row (names the last good checkpoint)",
        "stop",
        agreed=True,
    ),
    ExitCode(65, "a shard is corrupt or missing at the source (named; `ptbr shards verify` it)", "stop", agreed=True),
    ExitCode(
        69,
        "the data source stayed unreachable for the whole retry window; a checkpoint was saved",
        "requeue after a delay",
        agreed=True,
    ),
    ExitCode(
        74, "a checkpoint could not be written (disk full, quota); the partial one was removed", "stop", agreed=True
    ),
    ExitCode(
        75,
        "stopped by a signal (time limit, preemption, `scancel`); a checkpoint was committed",
        "requeue on the time-limit signal; leave SIGTERM to Slurm",
        agreed=True,
    ),
)
EXIT_OK, EXIT_BUG, EXIT_USAGE, EXIT_NONFINITE = 0, 1, 2, 3
EXIT_DATA_CORRUPT, EXIT_SOURCE_UNAVAILABLE, EXIT_CHECKPOINT_WRITE, EXIT_PREEMPTED = 65, 69, 74, 75  # sysexits.h
# Endings every rank reaches together; a crash (1) or a user error found by one rank (2) may leave the
# others elsewhere.
AGREED_EXIT_CODES = frozenset(e.code for e in EXIT_CODES if e.agreed)
REQUEUE_EXIT_CODES = frozenset(e.code for e in EXIT_CODES if e.job_action.startswith("requeue"))
# Signals that ask a rank to checkpoint and stop at the next step (Slurm's preemption and time-limit
# signals; the lead-time signal is configurable in the job scripts, e.g. --signal=B:USR1@600).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PtbrError(Exception):
    """An error caused by input, configuration or environment; the message says how to fix it."""

    exit_code = EXIT_USAGE


class ConfigError(PtbrError):
    """A configuration file or override is invalid; the message names the key."""


class DataError(PtbrError):
    """Corpus, tokenizer or shard problem."""


class CorruptDataError(DataError):
    """A shard at the source is corrupt (hash mismatch) or missing; retrying cannot help."""

    exit_code = EXIT_DATA_CORRUPT


class DataSourceError(DataError):
    """The data source stayed unreachable for the whole retry window; retrying later may help."""

    exit_code = EXIT_SOURCE_UNAVAILABLE


class CheckpointError(PtbrError):
    """A checkpoint is missing, incomplete or incompatible."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, quota, I/O error); nothing committed was lost."""

    exit_code = EXIT_CHECKPOINT_WRITE


class NonFiniteError(PtbrError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""

    exit_code = EXIT_NONFINITE
