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
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import Future
from time import sleep
from typing import Any

import numpy as np
import torch
from streaming import StreamingDataset

from ptbr.data.faults import data_error
from ptbr.errors import DataError

try:  # streaming internals used by the fast paths below (tested with mosaicml-streaming 0.13)
    from streaming.base.constant import TICK
    from streaming.base.dataset import _ShardState

    _REMOTE, _LOCAL = int(_ShardState.REMOTE), int(_ShardState.LOCAL)
    _FAST_THREADS = all(hasattr(StreamingDataset, name) for name in ("_prepare_thread", "_ready_thread",
                                                                       "prepare_shard"))
except ImportError:  # another layout: streaming's own (slower) threads, and no memory-mapped reads
    TICK, _REMOTE, _LOCAL, _FAST_THREADS = 0.007, 1, -1, False


def _shards_of(bounds: np.ndarray, sample_ids: np.ndarray) -> np.ndarray:
    """Shard of each sample id (-1 for streaming's padding id -1)."""
    shards = np.searchsorted(bounds, sample_ids, side="right") - 1
    shards[sample_ids < 0] = -1
    return shards


def _first_uses(shards: np.ndarray) -> np.ndarray:
    """Distinct shards in order of first appearance, padding (-1) excluded."""
    uniq, first = np.unique(shards, return_index=True)
    order = uniq[np.argsort(first)]
    return order[order >= 0]


def _window_stop(it: Any, predownload: int | None, start: int) -> int | None:
    """End of the window a background thread may work on (streaming's predownload bound)."""
    stop = it.total if predownload is None else min(it.total, it.yield_index + predownload + 1)
    return stop if start < stop else None


class TokenDataset(StreamingDataset):
    """Samples of ``seq_len + 1`` tokens served as ``{"input", "target", "sample_id"}``."""

    def __init__(self, *, manifest: dict[str, Any], source: str = "", retry_window_s: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source or str(kwargs.get("remote") or kwargs.get("local"))
        self.retry_window_s = retry_window_s
        self.manifest = manifest
        self.seq_len = int(manifest["seq_len"])
        self.vocab_size = int(manifest["vocab_size"])
        self.eos_id = int(manifest["eos_id"])
        self.dataset_hash = str(manifest["dataset_hash"])

    def get_item(self, sample_id: int, retry: int = 7) -> dict[str, Any]:
        shard_id, offset = self.spanner[sample_id]
        view = self._local_view(shard_id)
        if view is None:  # not in the cache yet: streaming's path downloads (and validates) the shard
            try:
                tokens = super().get_item(sample_id, retry)["tokens"]
            except Exception as exc:
                raise self._data_error(exc) from exc
        else:
            if self.cache_limit:  # only eviction reads the access times (LRU)
                self._shard_access_times[shard_id] = time.time_ns()
            tokens = view[offset]
        t = torch.from_numpy(tokens.astype(np.int64))
        return {"input": t[:-1], "target": t[1:], "sample_id": int(sample_id)}

    def _local_view(self, shard_id: int) -> np.ndarray | None:
        """Samples of a cached shard as an (n, sample_len) array over a read-only memory map.

        The MDS reader opens, seeks and closes the shard file for every sample (~0.3 ms); our
        samples have a static size, so a mapping of the decompressed shard serves them directly.
        Used only while streaming marks the shard LOCAL; with a cache_limit (the only case in which
        streaming evicts) the state is checked on every sample and an evicted shard's view dropped.
        """
        views = self.__dict__.setdefault("_views", {})
        view = views.get(shard_id)
        if view is not None and not self.cache_limit:
            return view  # without a cache limit streaming never evicts a shard
        if self._shard_states[shard_id] != _LOCAL:
            views.pop(shard_id, None)
            return None
        if view is None:
            shard = self.shards[shard_id]
            path = os.path.join(shard.dirname, shard.split or "", shard.raw_data.basename)
            try:
                raw = np.memmap(path, dtype=np.uint8, mode="r")
            except (FileNotFoundError, ValueError):
                return None
            n, start = (int(x) for x in raw[:8].view(np.uint32))
            dtype = np.dtype(self.manifest["dtype"])
            sample_len = int(self.manifest["sample_len"])
            if n != shard.samples or start + n * sample_len * dtype.itemsize > len(raw):
                return None
            view = views[shard_id] = np.ndarray((n, sample_len), dtype, buffer=raw, offset=start)
        return view

    # ---------------------------------------------------------------- background threads
    # StreamingDataset runs two threads per epoch that walk the epoch's sample ids one at a time,
    # calling prepare_shard (a file lock) or reading shard states for every sample. With small
    # samples (a few KiB) that costs more than serving the sample. These versions walk the
    # upcoming window (the same predownload bound) with numpy and act once per shard, keeping
    # streaming's semantics: shards are prepared in first-use order, a sample is "ready" when its
    # shard is LOCAL, padding ids (-1) are skipped.

    def _prepare_thread(self, it: Any) -> None:
        if not _FAST_THREADS:
            return super()._prepare_thread(it)
        bounds = self.spanner.shard_bounds
        while True:
            if it.should_exit():
                break
            if it.prepare_index == it.total or it.ready_index == it.total:
                it.prepare_index = it.total
                break
            if self._event.is_set():
                break
            stop = _window_stop(it, self.predownload, it.prepare_index)
            if stop is None:
                sleep(TICK)
                continue
            for shard_id in _first_uses(_shards_of(bounds, it.sample_ids[it.prepare_index:stop])):
                if it.should_exit() or self._event.is_set():
                    break
                self.prepare_shard(int(shard_id), False)
            it.prepare_index = stop
        it.on_exit()

    def _ready_thread(self, it: Any) -> None:
        if not _FAST_THREADS:
            return super()._ready_thread(it)
        bounds = self.spanner.shard_bounds
        while True:
            if it.should_exit() or it.ready_index == it.total or self._event.is_set():
                break
            stop = _window_stop(it, self.predownload, it.ready_index)
            if stop is None:
                sleep(TICK)
                continue
            shards = _shards_of(bounds, it.sample_ids[it.ready_index:stop])
            states = self._shard_states.numpy()[np.maximum(shards, 0)]
            ready = (shards < 0) | (states == _LOCAL)
            n = len(ready) if ready.all() else int(np.argmin(ready))
            if n:
                it.ready_index += n
                continue
            shard_id = int(shards[0])  # the next sample's shard is not local: as streaming does
            if states[0] == _REMOTE:
                self.prepare_shard(shard_id, False)
            while self._shard_states[shard_id] != _LOCAL:
                if self._event.is_set():
                    break
                sleep(TICK)
            it.ready_index += 1
        it.on_exit()

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
        """A background thread's exception: stop the other threads (as streaming does) and keep it for
        :meth:`__iter__` to report, instead of re-raising it inside a Future callback (which only logs
        a traceback)."""
        exc = future.exception()
        if exc is not None:
            self._thread_fault = exc
            self._event.set()

    def _data_error(self, exc: BaseException) -> BaseException:
        err = data_error(exc, self.source, self.retry_window_s)
        return err if err is not None else exc

    def __getstate__(self) -> dict[str, Any]:
        """Memory maps are per process (DataLoader workers started by spawn rebuild them)."""
        parent = getattr(super(), "__getstate__", None)
        state = dict(parent() if parent else self.__dict__)
        state.pop("_views", None)
        return state

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        """Load a resume state; refuses (instead of silently ignoring) when the dataset already ran."""
        epoch = int(obj.get("epoch", 0))
        if epoch < self.next_epoch:
            raise DataError(f"load_state_dict(epoch {epoch}) on a dataset that already iterated epoch "
                            f"{self.next_epoch - 1}: streaming would ignore it; load the state into a freshly "
                            f"built dataset before iterating it")
        super().load_state_dict(obj)
