"""TokenDataset: a StreamingDataset whose items are (input, target) int64 tensors plus the sample id.

Resuming exactly (mosaicml-streaming semantics, kept as is):

* save: ``state = ds.state_dict(num_samples, from_beginning=False)`` on rank 0, where
  ``num_samples`` is the number of samples the whole job (all ranks) consumed in this run of the
  current epoch, i.e. steps * global batch size; store it with the checkpoint;
* resume: build a **fresh** dataset with the same ``num_canonical_nodes`` and seed (the state
  carries them) and a constant global batch, call ``ds.load_state_dict(state)`` on every rank
  **before** the first ``iter()``; iteration then continues with the next unseen sample.

Streaming silently ignores ``load_state_dict`` on a dataset that already started an epoch (its
state looks stale and the epoch restarts from sample 0). ``TokenDataset.load_state_dict`` raises
instead, so a resume can never quietly replay data.

Streaming's methods overridden: ``get_item`` (to shape the item), ``__iter__`` and ``on_exception`` (to
report a failed download instead of ending the epoch early, and to count the failed thread's exit),
``prepare_shard`` (to release a shard whose download failed), ``load_state_dict``. The last three fixes
touch streaming 0.13's internals (shard states, cache lock, the epoch's ``_Iterator``): the version is pinned
(pyproject) and ``tests/unit/test_data_build.py`` holds each behaviour, so an upgrade that changes them
fails there, not in a job. Stock streaming
delivers 11-120 MB/s of tokens per process here (``python benchmarks/data.py --only stream-stock``), over
100x what one GPU rank consumes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch
from streaming import StreamingDataset

from ptbr.data.faults import data_error
from ptbr.errors import DataError


class TokenDataset(StreamingDataset):
    """Samples of ``seq_len + 1`` tokens served as ``{"input", "target", "sample_id"}``."""

    def __init__(
        self, *, manifest: dict[str, Any], source: str = "", retry_window_s: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.source = source or str(kwargs.get("remote") or kwargs.get("local"))
        self.retry_window_s = retry_window_s
        self.manifest = manifest
        self.seq_len = int(manifest["seq_len"])
        self.vocab_size = int(manifest["vocab_size"])
        self.eos_id = int(manifest["eos_id"])
        self.dataset_hash = str(manifest["dataset_hash"])
        self._thread_fault: BaseException | None = None

    def get_item(self, sample_id: int, retry: int = 7) -> dict[str, Any]:
        try:
            tokens = super().get_item(sample_id, retry)["tokens"]
        except Exception as exc:  # a download that failed for good: one line saying what and where
            raise self._data_error(exc) from exc
        t = torch.from_numpy(tokens.astype(np.int64))
        return {"input": t[:-1], "target": t[1:], "sample_id": int(sample_id)}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Streaming's iterator; a download that failed for good (here or in a background thread)
        surfaces as a one-line DataSourceError / CorruptDataError.

        When one of streaming's download threads fails, streaming 0.13 ends the epoch's iteration as
        if it were complete (and leaves the shard PREPARING, so the next epoch would wait on it for
        ever): here that is an error, never a silent end of epoch."""
        self._thread_fault = None
        try:
            yield from super().__iter__()
        except Exception as exc:
            raise self._data_error(self._thread_fault or exc) from exc
        if self._thread_fault is not None:
            raise self._data_error(self._thread_fault)

    def on_exception(self, future: Future) -> None:
        """A background thread's exception: keep it for :meth:`__iter__` to report. Streaming's own
        handler stops the other threads, then re-raises inside the Future's callback, where it would
        only be logged as a traceback: that re-raise is dropped.

        The thread died without counting its exit, and streaming's end of epoch (``_Iterator.exit``)
        waits for both threads to count theirs: it would wait for ever. Count it here."""
        exc = future.exception()
        if exc is not None:
            self._thread_fault = exc
            iterator = getattr(self, "_iterator", None)
            if iterator is not None:
                iterator.on_exit()
            with contextlib.suppress(BaseException):
                super().on_exception(future)

    def prepare_shard(self, shard_id: int, blocking: bool = True) -> None:
        """Streaming's download of one shard; one that fails hands the shard back instead of leaving it
        PREPARING. Streaming 0.13 leaves it PREPARING, and every other reader of that shard on the node
        (another rank, a loader worker) would wait for it for ever: a rank then hangs while the one that
        saw the error waits for it at the step boundary. Handed back (REMOTE), the next reader downloads
        the shard itself and gets the same error, or the shard, if the fault has passed."""
        try:
            super().prepare_shard(shard_id, blocking)
        except Exception:
            self._release_failed_shard(shard_id)
            raise

    def _release_failed_shard(self, shard_id: int) -> None:
        """PREPARING -> REMOTE, under streaming's cache lock. Only the process that set PREPARING reaches
        here with an exception (a waiter only sleeps), so no download of another process is cut off."""
        from streaming.base.dataset import _ShardState

        lock = self._cache_filelock
        with lock:
            if self._shard_states[shard_id] == _ShardState.PREPARING:
                self._shard_states[shard_id] = _ShardState.REMOTE

    def _data_error(self, exc: BaseException) -> BaseException:
        err = data_error(exc, self.source, self.retry_window_s)
        return err if err is not None else exc

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        """Load a resume state; refuses (instead of silently ignoring) when the dataset already ran."""
        epoch = int(obj.get("epoch", 0))
        if epoch < self.next_epoch:
            raise DataError(
                f"load_state_dict(epoch {epoch}) on a dataset that already iterated epoch "
                f"{self.next_epoch - 1} (streaming would ignore it): load it into a fresh dataset"
            )
        super().load_state_dict(obj)
