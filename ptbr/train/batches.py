"""This rank's training batches, one optimizer step at a time, and the stream position they advance.

All micro-batches of a step are fetched before any compute: a rank whose data source fails can then
tell the others at the step boundary (:func:`ptbr.train.preempt.agree`) instead of leaving them
waiting in a gradient all-reduce, and the position recorded in a checkpoint is always the one before
a step that was not trained on.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from typing import IO

import torch

from ptbr.checkpoint.run_state import Progress
from ptbr.data.faults import classify
from ptbr.errors import PtbrError
from ptbr.train.preempt import ignore_stop_signals

Batch = dict[str, torch.Tensor]


def loader_worker_init(worker_id: int) -> None:
    """DataLoader workers: a preemption signal is for the rank (it saves, then stops them)."""
    ignore_stop_signals()


class BatchStream:
    """This rank's batches, one optimizer step at a time, and the stream position a checkpoint records.

    ``next_step`` fetches every micro-batch of a step before any compute (a data-source failure is then
    reported at the step boundary, not inside a collective); ``commit`` advances the position once the step
    was trained, so an abandoned step is never counted; ``close`` stops the loader workers."""

    def __init__(
        self,
        loader: torch.utils.data.DataLoader,
        progress: Progress,
        micro_global: int,
        source: str,
        sample_log: IO[str] | None = None,
        launch_id: int = 0,
    ) -> None:
        self.loader, self.progress, self.micro_global, self.source = loader, progress, micro_global, source
        self.sample_log, self.launch_id = sample_log, launch_id
        self._iterator = iter(loader)
        self._pending: tuple[int, int] | None = None  # (epoch, epoch_samples) once the fetched step is trained

    def next_step(self, micro_batches: int) -> tuple[list[Batch], float, PtbrError | None]:
        """The micro-batches of the next step, the seconds spent waiting for them, and the data-source
        failure that prevented it. The stream position moves only on :meth:`commit` (the step was
        trained): a step that is abandoned (a fault or a stop agreed by the ranks) is not counted."""
        epoch, samples = self.progress.epoch, self.progress.epoch_samples
        t0 = time.perf_counter()
        batches = []
        try:
            for _ in range(micro_batches):
                try:
                    batch = next(self._iterator)
                except StopIteration:  # end of epoch: streaming starts the next one on a new iterator
                    epoch, samples = epoch + 1, 0
                    self._iterator = iter(self.loader)
                    batch = next(self._iterator)
                samples += self.micro_global
                batches.append(batch)
        except Exception as exc:  # noqa: BLE001 - a data-source failure is reported; anything else raised
            fault = classify(exc, self.source)
            if fault is None:
                raise
            return [], time.perf_counter() - t0, fault
        self._pending = (epoch, samples)
        return batches, time.perf_counter() - t0, None

    def commit(self, step: int, batches: list[Batch]) -> None:
        """The fetched step was trained: advance the stream position; with debug.record_samples, log the
        sample ids this rank trained on at ``step`` (for the data tests)."""
        assert self._pending is not None
        self.progress.epoch, self.progress.epoch_samples = self._pending
        self._pending = None
        if self.sample_log is None:
            return
        for batch in batches:
            self.sample_log.write(
                json.dumps({"launch": self.launch_id, "step": step, "ids": [int(i) for i in batch["sample_id"]]}) + "\n"
            )

    def close(self) -> None:
        """Stop the loader workers now (the rank leaves with os._exit, which would not) and close the log.

        Dropping the iterator asks the workers to finish; one stuck inside streaming (waiting for a
        shard that a failed download left half-prepared) cannot hear it, and ignores SIGTERM: kill it."""
        self._iterator = self.loader = None  # a persistent-workers loader holds the iterator too
        for child in multiprocessing.active_children():
            child.kill()
            child.join(timeout=5)
        if self.sample_log is not None:
            self.sample_log.close()
