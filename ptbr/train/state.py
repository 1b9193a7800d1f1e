"""What a run has done so far: saved in every checkpoint, restored on resume."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Progress:
    step: int = 0  # optimizer steps taken (applied or skipped)
    samples: int = 0  # global training samples consumed
    tokens: int = 0  # global training tokens consumed
    skipped_steps: int = 0
    nonfinite_in_row: int = 0
    epoch: int = 0  # streaming epoch being read
    epoch_samples: int = 0  # global samples consumed in that epoch
