"""Language-model loss: cross-entropy in float32, with RWKV-LM's optional L2Wrap, and loss by position.

Loss by token position answers "does the model use long context?": positions are bucketed by powers of 4
from 128 (0-128, 128-512, 512-2048, ...; from seq_len / 4 below 512 tokens) up to the sequence length; a model
that uses its context has a lower loss in the later buckets. Shared by the training evaluation
(``val_loss_by_position`` in metrics.jsonl, drawn by ``ptbr plot``) and ``ptbr eval``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class L2Wrap(torch.autograd.Function):
    """Identity on the loss; in backward it adds a small gradient pulling each position's largest
    logit towards 0, which keeps RWKV's logits from drifting (RWKV-LM).

    The pull at a position is ``1e-4 * max_logit`` times that position's weight in the loss as backward
    sees it: ``grad_output / (B*T)`` for a mean over ``logits``' positions (a scalar ``loss``), or
    ``grad_output[b, t]`` for per-token losses (one segment of a longer sample, ``ptbr.model.segments``).
    At an unscaled loss this is RWKV-LM's ``1e-4 / (B*T) * max``; under DeepSpeed's fp16 loss scale and its
    1/accumulation factor it scales with the loss, as the gradient of a real penalty term would (RWKV-LM
    ignores ``grad_output``, which under a loss scale of 2^16 makes the pull 65536x too strong)."""

    @staticmethod
    def forward(ctx, loss: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(logits)
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (logits,) = ctx.saved_tensors
        if grad_output.dim() == 0:  # a mean over every position
            weight = grad_output.float() / (logits.shape[0] * logits.shape[1])
        else:  # per-token losses [B, T]
            weight = grad_output.float().unsqueeze(-1)
        maxx, ids = torch.max(logits, -1, keepdim=True)
        glogits = torch.zeros_like(logits)
        glogits.scatter_(-1, ids, (maxx.float() * 1e-4 * weight).to(logits.dtype))
        return grad_output, glogits


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of every position, [B, T], in float32."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, l2wrap: bool = True) -> torch.Tensor:
    """Mean next-token cross-entropy over all positions."""
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    return L2Wrap.apply(loss, logits) if l2wrap else loss


# ------------------------------------------------------------------------------ loss by position
FIRST_EDGE = 128
FACTOR = 4


def bucket_edges(seq_len: int) -> list[tuple[int, int]]:
    """[(start, end), ...] covering positions 0..seq_len-1: powers of 4 from 128; below 512 tokens from seq_len / 4
    (at least 2), so that a short context still has an early and a late bucket to compare."""
    edges, lo, hi = [], 0, min(FIRST_EDGE, max(2, seq_len // FACTOR))
    while lo < seq_len:
        edges.append((lo, min(hi, seq_len)))
        lo, hi = hi, hi * FACTOR
    return edges


def bucket_losses(nll_per_position: torch.Tensor, count: float) -> dict[str, float]:
    """Mean loss per bucket from the summed NLL at every position ([T]) over ``count`` sequences."""
    sums = nll_per_position.double().cpu()
    return {
        f"{lo}-{hi}": float(sums[lo:hi].sum() / (count * (hi - lo))) for lo, hi in bucket_edges(len(sums)) if count > 0
    }
