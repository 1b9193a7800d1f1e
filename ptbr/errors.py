"""User-facing errors.

A :class:`PtbrError` means "the user asked for something that cannot work" (bad config, missing
file, wrong credentials). The CLI prints its message on one line and exits non-zero without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PtbrError(Exception):
    """An error caused by input, configuration or environment; the message says how to fix it."""

    exit_code = 2


class ConfigError(PtbrError):
    """A configuration file or override is invalid; the message names the key."""


class DataError(PtbrError):
    """Corpus, tokenizer or shard problem."""


class CheckpointError(PtbrError):
    """A checkpoint is missing, incomplete or incompatible."""
