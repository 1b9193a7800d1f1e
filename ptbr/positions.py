"""Loss by token position: does the model use long context?

Positions are bucketed by powers of 4 from 128 (0-128, 128-512, 512-2048, ...) up to the sequence length;
a model that uses its context has a lower loss in the later buckets. Shared by the training evaluation
(``val_loss_by_position`` in metrics.jsonl, drawn by ``ptbr plot``) and ``ptbr eval``.
"""

from __future__ import annotations

import torch

FIRST_EDGE = 128
FACTOR = 4


def bucket_edges(seq_len: int) -> list[tuple[int, int]]:
    """[(start, end), ...] covering positions 0..seq_len-1 (one bucket when seq_len <= 128)."""
    edges, lo, hi = [], 0, FIRST_EDGE
    while lo < seq_len:
        edges.append((lo, min(hi, seq_len)))
        lo, hi = hi, hi * FACTOR
    return edges


def bucket_losses(nll_per_position: torch.Tensor, count: float) -> dict[str, float]:
    """Mean loss per bucket from the summed NLL at every position ([T]) over ``count`` sequences."""
    sums = nll_per_position.double().cpu()
    return {f"{lo}-{hi}": float(sums[lo:hi].sum() / (count * (hi - lo)))
            for lo, hi in bucket_edges(len(sums)) if count > 0}
