"""Model helpers for tests."""

from __future__ import annotations

import torch

from ptbr.model import RWKV6


def randomize_(model: RWKV6, seed: int = 0) -> RWKV6:
    """Give every parameter a random, non-degenerate value (the RWKV-LM init zeroes several)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("time_decay"):
                p.copy_(torch.empty(p.shape).uniform_(-5.0, 1.0, generator=g))
            elif ".ln" in name or name.startswith("ln_out"):
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() >= 2 and "time_" not in name:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            else:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return model
