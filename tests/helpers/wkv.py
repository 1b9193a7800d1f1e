"""Helpers shared by the WKV6 backend tests."""

from __future__ import annotations

import torch


def make_inputs(
    B: int,
    T: int,
    H: int,
    N: int,
    *,
    w_lo: float = -12.0,
    w_hi: float = 5.0,
    with_state: bool = True,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, torch.Tensor | None]:
    """Random WKV6 inputs; w_raw is uniform in [w_lo, w_hi] (decay exp(-exp(w)) from ~1 to 0)."""
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    w = torch.empty(B, T, H, N).uniform_(w_lo, w_hi, generator=g)
    u = torch.randn(H, N, generator=g)
    s = torch.randn(B, H, N, N, generator=g) if with_state else None
    out = {"r": r, "k": k, "v": v, "w": w, "u": u, "state": s}
    return {
        name: None if x is None else x.to(device=device, dtype=torch.float32 if name == "state" else dtype)
        for name, x in out.items()
    }


def run_with_grads(fn, inputs: dict, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Run ``fn`` with leaf copies of ``inputs``; backprop random cotangents; return y, s, grads."""
    leaves = {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    y, s = fn(**leaves)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g).to(y)
    gs = torch.randn(s.shape, generator=g).to(s)
    ((y.float() * gy.float()).sum() + (s * gs).sum()).backward()
    grads = {k: v.grad for k, v in leaves.items() if v is not None}
    return y.detach(), s.detach(), grads


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMS of (a - b) relative to the RMS of b."""
    a, b = a.double(), b.double()
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30))
