"""Loss over long samples in segments, the recurrent state carried from one segment to the next.

RWKV is an RNN: the loss of a sample of L tokens equals the loss of its segments of S tokens run
one after the other, each starting from the state (WKV and both token shifts, every layer) the
previous one ended with. With the gradient flowing back through those states (full BPTT) the
parameter gradients are the same as for one pass over L, to float rounding. Each segment runs
under ``torch.utils.checkpoint``: only its inputs (token ids and the incoming state, a few MB) are
kept, and its activations are recomputed in the backward pass, so activation memory is that of one
segment whatever L is. ``bptt="truncated"`` detaches the state between segments (cheaper backward,
no gradient across segment boundaries).

Every rank runs ceil(L / S) segments (L and S come from the config), so ZeRO-3's collective
parameter gathers stay in step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.utils.checkpoint

from ptbr.model.loss import L2Wrap, lm_loss, token_nll

# (token ids [B, S], incoming state or None) -> (logits [B, S, V], outgoing state)
RunSegment = Callable[[torch.Tensor, object], tuple[torch.Tensor, object]]
Bptt = Literal["full", "truncated"]
Reduction = Literal["mean", "none"]


def detach_state(state: list) -> list:
    """The same state cut off from the graph (truncated BPTT)."""
    return [s.map(torch.Tensor.detach) for s in state]


def _segment_nll(
    run: RunSegment, idx: torch.Tensor, targets: torch.Tensor, state: object, l2wrap: bool
) -> tuple[torch.Tensor, object]:
    logits, new_state = run(idx, state)
    nll = token_nll(logits, targets)
    if l2wrap:  # per-token: each position's pull follows its weight in the sample's mean (see L2Wrap)
        nll = L2Wrap.apply(nll, logits)
    return nll, new_state


def sequence_loss(
    run: RunSegment,
    idx: torch.Tensor,
    targets: torch.Tensor,
    *,
    segment_len: int | None = None,
    bptt: Bptt = "full",
    l2wrap: bool = True,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Mean next-token loss of ``idx`` [B, L] (``reduction="none"``: the NLL of every token, [B, L],
    without L2Wrap), computed in segments of ``segment_len`` tokens (None or >= L: one pass)."""
    if bptt not in ("full", "truncated"):
        raise ValueError(f"bptt must be 'full' or 'truncated', got {bptt!r}")
    B, L = idx.shape
    if not segment_len or segment_len >= L:
        logits, _ = run(idx, None)
        if reduction == "mean":
            return lm_loss(logits, targets, l2wrap=l2wrap)
        return token_nll(logits, targets)
    wrap = l2wrap and reduction == "mean"
    recompute = torch.is_grad_enabled()
    state, parts = None, []
    for start in range(0, L, segment_len):
        seg = slice(start, start + segment_len)
        if state is not None and bptt == "truncated":
            state = detach_state(state)
        if recompute:
            nll, state = torch.utils.checkpoint.checkpoint(
                _segment_nll, run, idx[:, seg], targets[:, seg], state, wrap, use_reentrant=False
            )
        else:
            nll, state = _segment_nll(run, idx[:, seg], targets[:, seg], state, wrap)
        parts.append(nll.sum() if reduction == "mean" else nll)
    if reduction == "none":
        return torch.cat(parts, dim=1)
    return torch.stack(parts).sum() / (B * L)
