"""Data-source faults while training: retried where a retry helps, one clear line where it does not.

Retrying is streaming's own (``download_retry`` attempts with exponential backoff: 1, 2, 4, ... s)
around botocore's adaptive retry mode; :func:`download_attempts` turns the configured retry window
into an attempt count, and :func:`install_retry_logging` turns streaming's per-attempt debug record
into one log line per retry. When the retries are exhausted the exception that surfaces (in the
rank, in a streaming background thread, or in a DataLoader worker, whose exceptions reach the rank
as text) is turned into a one-line :class:`~ptbr.errors.DataSourceError` (unreachable: exit 69) or
:class:`~ptbr.errors.CorruptDataError` (hash mismatch or missing object at the source: exit 65).
"""

from __future__ import annotations

import logging
import math
import re
import sys

from ptbr.data.s3 import safe_endpoint
from ptbr.errors import CorruptDataError, DataError, DataSourceError, PtbrError

_UNREACHABLE = re.compile(
    r"EndpointConnectionError|ConnectTimeoutError|ReadTimeoutError|ConnectionClosedError|"
    r"Could not connect to the endpoint URL|Connection (?:refused|reset|aborted)|timed out|"
    r"SlowDown|ServiceUnavailable|InternalError|\b50[0234]\b",
    re.IGNORECASE,
)
_CHECKSUM = re.compile(r"Checksum failure: (\S+)")
_NOT_FOUND = re.compile(r"Object (\S+) not found|NoSuchKey|\b404\b")
_CREDENTIALS = re.compile(r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|ExpiredToken|\b403\b")
_OUR_LINE = re.compile(r"ptbr\.errors\.(DataSourceError|CorruptDataError|DataError): (.*)")
_STREAMING_RETRY = re.compile(r"Attempt (\d+)/(\d+) failed with: (.*)", re.DOTALL)


def download_attempts(window_s: float) -> int:
    """Attempts whose backoff sleeps (streaming: 1, 2, 4, ... s) add up to at least ``window_s``."""
    if window_s <= 0:
        return 1
    return 1 + max(1, math.ceil(math.log2(window_s + 1)))


def retry_bound_s(window_s: float, timeout_s: float) -> float:
    """An upper bound on how long one shard download may keep a rank busy (sleeps with jitter,
    every attempt timing out, botocore's own three tries of each)."""
    n = download_attempts(window_s)
    return (2 ** (n - 1) - 1) + 0.5 * n + n * 3 * (timeout_s + 60.0)


class _RetryLine(logging.Handler):
    """streaming logs each failed attempt at debug level; show it as one line per retry."""

    def emit(self, record: logging.LogRecord) -> None:
        m = _STREAMING_RETRY.match(record.getMessage())
        if not m:
            return
        attempt, total, what = m.groups()
        if attempt == total:
            return  # the final failure is reported by the run itself
        what = " ".join(what.split())[:300]
        print(
            f"[ptbr] data source: shard download attempt {attempt} of {total} failed ({what}); retrying",
            file=sys.stderr,
            flush=True,
        )


def install_retry_logging() -> None:
    """Idempotent; inherited by forked DataLoader workers."""
    logger = logging.getLogger("streaming.base.util")
    if not any(isinstance(h, _RetryLine) for h in logger.handlers):
        logger.addHandler(_RetryLine(level=logging.DEBUG))
        logger.setLevel(logging.DEBUG)


# ---------------------------------------------------------------------------------- classification
def _text(exc: BaseException) -> str:
    parts, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


def classify(exc: BaseException, source: str = "the data source") -> PtbrError | None:
    """The one-line error for a data-source failure, or None if ``exc`` is something else."""
    text = _text(exc)
    ours = _OUR_LINE.findall(text)
    if isinstance(exc, PtbrError) and not ours:
        return exc if isinstance(exc, DataError) else None
    if ours:  # raised by a DataLoader worker: the message carries the worker's traceback as text
        kind, line = ours[-1]
        cls = {"DataSourceError": DataSourceError, "CorruptDataError": CorruptDataError}.get(kind, DataError)
        return cls(line.strip())
    if m := _CHECKSUM.search(text):
        name = m.group(1).rsplit("/", 1)[-1]
        return CorruptDataError(
            f"shard {name} of {source} does not match the hash recorded when it was published "
            "(corrupt at the source): republish the dataset with 'ptbr shards publish' and check "
            f"it with 'ptbr shards verify {source}'"
        )
    if _CREDENTIALS.search(text):
        return DataError(
            f"{source} refused the credentials ({safe_endpoint()}): check AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY or the AWS profile of the job"
        )
    if isinstance(exc, FileNotFoundError) or "No such file or directory" in text:  # a directory source
        name = getattr(exc, "filename", None) or "a shard"
        return CorruptDataError(
            f"{name} is missing at {source} although its index lists it: rebuild or republish "
            f"the dataset, or run 'ptbr shards verify {source}'"
        )
    if m := _NOT_FOUND.search(text):
        what = m.group(1) or "a shard"
        return CorruptDataError(
            f"{what} is missing at {source} although its index lists it: republish the "
            f"dataset, or run 'ptbr shards verify {source}'"
        )
    if _UNREACHABLE.search(text) or isinstance(exc, ConnectionError | TimeoutError):
        detail = " ".join(str(exc).split())[:300]
        return DataSourceError(f"{source} is unreachable at {safe_endpoint()}: {detail}")
    return None


def data_error(exc: BaseException, source: str, window_s: float) -> PtbrError | None:
    """:func:`classify`, with the retry window named in the unreachable case."""
    err = classify(exc, source)
    if isinstance(err, DataSourceError) and "after retrying" not in str(err):
        err = DataSourceError(f"{err} (after retrying for data.download_retry_s={window_s:g} s)")
    return err
