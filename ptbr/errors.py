"""User-facing errors and the exit codes a job ends with.

A :class:`PtbrError` means "the user asked for something that cannot work" (bad config, missing
file, wrong credentials) or "the environment failed in a way ptbr recognises" (the data source is
gone, the disk is full). The CLI prints its message on one line and exits with its code, without a
traceback; anything else is a bug and keeps its traceback (exit 1).

Exit codes (what a job script can act on):

====  ==========================================================  ===========================
code  meaning                                                     a Slurm job should
====  ==========================================================  ===========================
0     done                                                        stop
1     unexpected error (a bug; the traceback is in the log)       stop
2     bad configuration, input or checkpoint (one line says why)  stop
3     too many non-finite steps in a row                          stop
65    corrupt or missing data at the source (EX_DATAERR)          stop
69    data source unreachable after retries (EX_UNAVAILABLE)      requeue after a delay
74    checkpoint could not be written, e.g. disk full (EX_IOERR)  stop
75    preempted / signalled; checkpoint committed (EX_TEMPFAIL)   requeue
====  ==========================================================  ===========================
"""

from __future__ import annotations


class PtbrError(Exception):
    """An error caused by input, configuration or environment; the message says how to fix it."""

    exit_code = 2


class ConfigError(PtbrError):
    """A configuration file or override is invalid; the message names the key."""


class DataError(PtbrError):
    """Corpus, tokenizer or shard problem."""


class CorruptDataError(DataError):
    """A shard at the source is corrupt (hash mismatch) or missing; retrying cannot help."""

    exit_code = 65


class DataSourceError(DataError):
    """The data source stayed unreachable for the whole retry window; retrying later may help."""

    exit_code = 69


class CheckpointError(PtbrError):
    """A checkpoint is missing, incomplete or incompatible."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, quota, I/O error); nothing committed was lost."""

    exit_code = 74
