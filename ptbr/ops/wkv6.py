"""``wkv6``: the single entry point to the RWKV-6 recurrence, whatever the backend.

Inputs are checked once here (``ptbr.ops.contract``), before any backend runs, so every backend
sees the same contract: r, k, v, w of shape [B, T, H, N] (w is the raw decay; the operator applies
exp(-exp(w))), u of shape [H, N], optional float32 state [B, H, N, N] (keys × values). Returns y
in r's dtype and the final state in float32.

Document boundaries (``reset``, bool [B, T]): where reset_t is set, the state after step t is zero,
so step t+1 starts a new document. The reference applies that literally. The chunked backends get it
through their inputs, per position and without a loop over documents: at a reset step the decay is
exactly 0 (w_raw above the contract's ceiling, so log-decay = -128, the floor every backend already
handles, never an inf or a huge number in a cumulative sum; exp(-128) is 0 in float32) and the key
writes nothing into the state (k = 0 there). Every path from a step <= t to a step > t then carries
a factor 0 or a zero key, while y_t itself is unchanged: its own u-bonus, which the zeroed key drops,
is added back outside the kernel. Gradients follow by autograd through those substitutions (dw is 0
at reset steps, where the decay no longer depends on w).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch

from ptbr.ops.chunked import wkv6_chunked
from ptbr.ops.contract import W_RAW_CEIL, check_inputs
from ptbr.ops.reference import wkv6_reference

Backend = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton() -> Backend:
    if not triton_available():
        raise RuntimeError("backend='triton' needs the triton package (pip install triton)")
    from ptbr.ops.triton_wkv6 import wkv6_triton_prechecked

    return wkv6_triton_prechecked


# name -> a function returning the backend (Triton is imported only when used)
REGISTRY: dict[str, Callable[[], Backend]] = {
    "reference": lambda: wkv6_reference,
    "torch": lambda: wkv6_chunked,
    "triton": _triton,
}
BACKENDS = ("auto", *REGISTRY)


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' means Triton on CUDA tensors (when installed), the chunked torch path elsewhere."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    if device.type == "cuda" and triton_available():
        return "triton"
    return "torch"


# w_raw at a reset step: past the ceiling, so every backend clamps it to log-decay -128 (decay 0)
RESET_W_RAW = W_RAW_CEIL + 1.0


def wkv6(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
    backend: str = "auto",
    reset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RWKV-6 WKV: returns ``(y [B,T,H,N] in r.dtype, final state [B,H,N,N] float32)``; ``reset`` marks
    the steps after which the state is zero (end-of-document tokens), see the module docstring."""
    check_inputs(r, k, v, w, u, state, reset)
    name = resolve_backend(backend, r.device)
    if reset is None:
        return REGISTRY[name]()(r, k, v, w, u, state)
    if name == "reference":
        return wkv6_reference(r, k, v, w, u, state, reset=reset)
    return _with_resets(REGISTRY[name](), r, k, v, w, u, state, reset)


def _with_resets(backend: Backend, r, k, v, w, u, state, reset) -> tuple[torch.Tensor, torch.Tensor]:
    """Document boundaries through a chunked backend's inputs (module docstring)."""
    at = reset[:, :, None, None]
    k_state = k.masked_fill(at, 0.0)
    w_cut = w.masked_fill(at, RESET_W_RAW)
    y, s = backend(r, k_state, v, w_cut, u, state)
    # the u-bonus of the reset steps themselves, (r_t · u · k_t) v_t, in float32 (float64 for float64 inputs)
    cd = torch.promote_types(y.dtype, torch.float32)
    bonus = (r.to(cd) * u.to(cd) * k.to(cd)).sum(-1, keepdim=True) * v.to(cd)
    y = torch.where(at, (y.to(cd) + bonus).to(y.dtype), y)
    return y, s
