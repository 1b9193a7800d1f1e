"""Language-model loss: cross-entropy in float32, with RWKV-LM's optional L2Wrap."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class L2Wrap(torch.autograd.Function):
    """Identity on the loss; in backward it adds a small gradient pulling each position's largest
    logit towards 0 (1e-4 / (B*T) * max), which keeps RWKV's logits from drifting (RWKV-LM).

    ``factor`` overrides 1e-4 / (B*T) where ``logits`` is one segment of a longer sample (the factor
    belongs to the whole sample)."""

    @staticmethod
    def forward(ctx, loss: torch.Tensor, logits: torch.Tensor, factor: float | None = None) -> torch.Tensor:
        ctx.save_for_backward(logits)
        ctx.factor = factor
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (logits,) = ctx.saved_tensors
        factor = ctx.factor if ctx.factor is not None else 1e-4 / (logits.shape[0] * logits.shape[1])
        maxx, ids = torch.max(logits, -1, keepdim=True)
        glogits = torch.zeros_like(logits)
        glogits.scatter_(-1, ids, maxx * factor)
        return grad_output, glogits, None


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of every position, [B, T], in float32."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, l2wrap: bool = True) -> torch.Tensor:
    """Mean next-token cross-entropy over all positions."""
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    return L2Wrap.apply(loss, logits) if l2wrap else loss
