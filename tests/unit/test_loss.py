"""RWKV-LM's L2Wrap: its extra gradient, and that it follows the loss's scale (fp16 loss scaling, 1/accumulation)."""

from __future__ import annotations

import pytest
import torch

from ptbr.model.loss import lm_loss
from ptbr.model.segments import sequence_loss

B, T, V = 2, 12, 17


def _logits_grad(scale: float, l2wrap: bool = True) -> torch.Tensor:
    torch.manual_seed(0)
    logits = torch.randn(B, T, V, requires_grad=True)
    targets = torch.randint(0, V, (B, T))
    (lm_loss(logits, targets, l2wrap=l2wrap) * scale).backward()
    return logits.grad


def test_l2wrap_adds_rwkv_lm_pull_at_the_largest_logit():
    torch.manual_seed(0)
    logits = torch.randn(B, T, V)
    extra = _logits_grad(1.0) - _logits_grad(1.0, l2wrap=False)
    maxx, ids = logits.max(-1, keepdim=True)
    want = torch.zeros_like(logits).scatter_(-1, ids, maxx * 1e-4 / (B * T))
    torch.testing.assert_close(extra, want, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("scale", [65536.0, 0.25])
def test_l2wrap_gradient_scales_with_the_loss(scale: float):
    """DeepSpeed multiplies the loss by the fp16 loss scale and by 1/accumulation before backward: every part of
    the gradient must scale with it, or the unscaled update carries a pull ``scale`` times too strong."""
    torch.testing.assert_close(_logits_grad(scale), scale * _logits_grad(1.0), rtol=1e-5, atol=1e-9)


def test_l2wrap_in_segments_equals_one_pass():
    """The per-token form used by segmented (long-context) losses gives the one-pass gradient, also scaled."""
    torch.manual_seed(1)
    table = torch.randn(V, V)
    idx, targets = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))

    def grad(segment_len: int | None) -> torch.Tensor:
        weights = table.clone().requires_grad_(True)

        def run(x: torch.Tensor, state: object) -> tuple[torch.Tensor, object]:
            return weights[x], state

        (sequence_loss(run, idx, targets, segment_len=segment_len) * 1024.0).backward()
        return weights.grad

    torch.testing.assert_close(grad(5), grad(None), rtol=1e-5, atol=1e-7)
