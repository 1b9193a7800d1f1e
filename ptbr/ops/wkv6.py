"""``wkv6``: the single entry point to the RWKV-6 recurrence, whatever the backend.

Inputs are checked once here (``ptbr.ops.contract``), before any backend runs, so every backend
sees the same contract: r, k, v, w of shape [B, T, H, N] (w is the raw decay; the operator applies
exp(-exp(w))), u of shape [H, N], optional float32 state [B, H, N, N] (keys × values). Returns y
in r's dtype and the final state in float32.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch

from ptbr.ops.chunked import wkv6_chunked
from ptbr.ops.contract import check_inputs
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


def wkv6(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor,
        state: torch.Tensor | None = None, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """RWKV-6 WKV: returns ``(y [B,T,H,N] in r.dtype, final state [B,H,N,N] float32)``."""
    check_inputs(r, k, v, w, u, state)
    return REGISTRY[resolve_backend(backend, r.device)]()(r, k, v, w, u, state)
