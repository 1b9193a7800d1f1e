"""What a checkpoint records about the run besides its tensors: progress and data position."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ptbr.data.hashing import sha256_bytes


@dataclass
class Progress:
    step: int = 0  # optimizer steps taken (applied or skipped)
    samples: int = 0  # global training samples consumed
    tokens: int = 0  # global training tokens consumed
    skipped_steps: int = 0  # updates skipped for any reason (non-finite, fp16 loss-scale overflow)
    nonfinite_in_row: int = 0
    loss_scale_skips: int = 0  # of skipped_steps: fp16 overflows while the loss scale was being lowered
    epoch: int = 0  # streaming epoch being read
    epoch_samples: int = 0  # global samples consumed in that epoch


@dataclass
class RunState:
    """The run at an optimizer-step boundary.

    ``data`` is streaming's resume state (epoch, sample_in_epoch, num_canonical_nodes, shuffle_seed,
    initial_physical_nodes); ``fingerprint`` says what must not change across a resume; the batch
    fields say how the global batch was formed (an elastic resume must keep ``global_batch_size``).
    """

    progress: Progress
    data: dict[str, Any]
    fingerprint: dict[str, str]
    global_batch_size: int
    micro_batch_size: int
    grad_accum: int
    extra: dict[str, Any] = field(default_factory=dict)  # anything else the trainer wants kept

    def to_record(self) -> dict[str, Any]:
        """The ``ptbr_state.json`` fields (progress counters at the top level, as they always were)."""
        return {
            **dataclasses.asdict(self.progress),
            "data": dict(self.data),
            "fingerprint": dict(self.fingerprint),
            "global_batch_size": self.global_batch_size,
            "micro_batch_size": self.micro_batch_size,
            "grad_accum": self.grad_accum,
            **self.extra,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RunState:
        # a counter added after a checkpoint was written starts from its default
        progress = Progress(**{f.name: int(record.get(f.name, f.default)) for f in dataclasses.fields(Progress)})
        return cls(
            progress=progress,
            data=dict(record["data"]),
            fingerprint=dict(record["fingerprint"]),
            global_batch_size=int(record["global_batch_size"]),
            micro_batch_size=int(record.get("micro_batch_size", 0)),
            grad_accum=int(record.get("grad_accum", 0)),
        )


def fingerprint(model_config: dict[str, Any], seq_len: int, manifest: dict[str, Any]) -> dict[str, str]:
    """What must not change across a resume: model shape, sequence length, dataset identity."""
    dataset = manifest.get("dataset_hash") or sha256_bytes(json.dumps(manifest, sort_keys=True).encode())
    model = sha256_bytes(json.dumps(model_config, sort_keys=True).encode())[:16]
    return {"model": model, "seq_len": str(seq_len), "dataset": str(dataset)}
