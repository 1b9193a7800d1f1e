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

from typing import Any

import numpy as np
import torch
from streaming import StreamingDataset

from ptbr.errors import DataError


class TokenDataset(StreamingDataset):
    """Samples of ``seq_len + 1`` tokens served as ``{"input", "target", "sample_id"}``."""

    def __init__(self, *, manifest: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.manifest = manifest
        self.seq_len = int(manifest["seq_len"])
        self.vocab_size = int(manifest["vocab_size"])
        self.eos_id = int(manifest["eos_id"])
        self.dataset_hash = str(manifest["dataset_hash"])

    def get_item(self, sample_id: int, retry: int = 7) -> dict[str, Any]:
        tokens = super().get_item(sample_id, retry)["tokens"]
        t = torch.from_numpy(tokens.astype(np.int64))
        return {"input": t[:-1], "target": t[1:], "sample_id": int(sample_id)}

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        """Load a resume state; refuses (instead of silently ignoring) when the dataset already ran."""
        epoch = int(obj.get("epoch", 0))
        if epoch < self.next_epoch:
            raise DataError(f"load_state_dict(epoch {epoch}) on a dataset that already iterated epoch "
                            f"{self.next_epoch - 1}: streaming would ignore it; load the state into a freshly "
                            f"built dataset before iterating it")
        super().load_state_dict(obj)
