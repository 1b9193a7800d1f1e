"""``wkv6``: the single entry point to the RWKV-6 recurrence, whatever the backend.

Inputs are checked once here, before any backend runs, so every backend sees the same contract:
r, k, v, w of shape [B, T, H, N] (w is the raw decay; the operator applies exp(-exp(w))),
u of shape [H, N], optional float32 state [B, H, N, N] (keys × values). Returns y in r's dtype
and the final state in float32.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import torch

from ptbr.ops.chunked import wkv6_chunked
from ptbr.ops.reference import wkv6_reference

Backend = Callable[..., tuple[torch.Tensor, torch.Tensor]]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BACKENDS = ("auto", "reference", "torch", "triton")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_HEAD_SIZES = (16, 32, 64, 128)


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _load_backend(name: str) -> Backend:
    if name == "reference":
        return wkv6_reference
    if name == "torch":
        return wkv6_chunked
    if name == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package (pip install triton)")
        from ptbr.ops.triton_wkv6 import wkv6_triton

        return wkv6_triton
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' means Triton on CUDA tensors (when installed), the chunked torch path elsewhere."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    if device.type == "cuda" and triton_available():
        return "triton"
    return "torch"


def check_inputs(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None,
) -> None:
    """Raise ValueError naming the first bad argument."""
    for name, x in (("r", r), ("k", k), ("v", v), ("w", w), ("u", u)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"wkv6: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise ValueError(f"wkv6: {name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if r.dim() != 4:
        raise ValueError(f"wkv6: r must have shape [B, T, H, N], got {tuple(r.shape)}")
    for name, x in (("k", k), ("v", v), ("w", w)):
        if x.shape != r.shape:
            raise ValueError(f"wkv6: {name} must have r's shape {tuple(r.shape)}, got {tuple(x.shape)}")
    B, T, H, N = r.shape
    if tuple(u.shape) != (H, N):
        raise ValueError(f"wkv6: u must have shape [H, N] = {(H, N)}, got {tuple(u.shape)}")
    tensors = [("k", k), ("v", v), ("w", w), ("u", u)]
    if state is not None:
        if not isinstance(state, torch.Tensor):
            raise ValueError(f"wkv6: state must be a torch.Tensor or None, got {type(state).__name__}")
        if tuple(state.shape) != (B, H, N, N):
            raise ValueError(f"wkv6: state must have shape [B, H, N, N] = {(B, H, N, N)}, "
                             f"got {tuple(state.shape)}")
        wide = r.dtype == torch.float64
        if state.dtype != torch.float32 and not (wide and state.dtype == torch.float64):
            raise ValueError(f"wkv6: state must be float32, got {state.dtype}")
        tensors.append(("state", state))
    for name, x in tensors:
        if x.device != r.device:
            raise ValueError(f"wkv6: {name} is on {x.device} but r is on {r.device}; "
                             "put all inputs on one device")


def triton_interpreting() -> bool:
    """Triton's CPU interpreter is on (TRITON_INTERPRET), so the Triton backend accepts CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def check_triton_inputs(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
) -> None:
    """What the Triton kernels need beyond ``check_inputs``: dtypes, head size, a CUDA device."""
    for name, x in (("r", r), ("k", k), ("v", v), ("w", w), ("u", u)):
        if x.dtype not in TRITON_DTYPES:
            raise ValueError(f"wkv6: backend='triton' takes float16, bfloat16 or float32 inputs, but {name} is "
                             f"{x.dtype} (use backend='reference' or 'torch' for float64)")
    N = r.shape[-1]
    if N not in TRITON_HEAD_SIZES:
        raise ValueError(f"wkv6: backend='triton' supports head size N in {TRITON_HEAD_SIZES}, "
                         f"got r with N = {N}")
    if r.device.type != "cuda" and not (r.device.type == "cpu" and triton_interpreting()):
        raise ValueError(f"wkv6: backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), "
                         f"but r is on {r.device}")


def wkv6(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """RWKV-6 WKV: returns ``(y [B,T,H,N] in r.dtype, final state [B,H,N,N] float32)``."""
    check_inputs(r, k, v, w, u, state)
    name = resolve_backend(backend, r.device)
    if name == "triton":
        check_triton_inputs(r, k, v, w, u)
    return _load_backend(name)(r, k, v, w, u, state)
