"""What every WKV6 backend accepts: shapes, dtypes, devices, and the bounds of the decay.

``wkv6`` checks its inputs here once per call, before dispatching; the backends themselves
do not check again (the Triton backend adds only what its kernels need, see ``triton_wkv6``).
"""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# exp(-128) is 0 in float32: clamping the log-decay there changes no float32 result, but keeps
# it finite when exp(w_raw) overflows (an -inf would turn cumulative sums into inf - inf).
LOG_DECAY_FLOOR = -128.0
W_RAW_CEIL = math.log(-LOG_DECAY_FLOOR)


def check_inputs(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None,
    reset: torch.Tensor | None = None,
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
            raise ValueError(f"wkv6: state must have shape [B, H, N, N] = {(B, H, N, N)}, got {tuple(state.shape)}")
        wide = r.dtype == torch.float64
        if state.dtype != torch.float32 and not (wide and state.dtype == torch.float64):
            raise ValueError(f"wkv6: state must be float32, got {state.dtype}")
        tensors.append(("state", state))
    if reset is not None:
        if not isinstance(reset, torch.Tensor) or reset.dtype != torch.bool:
            raise ValueError("wkv6: reset must be a bool tensor [B, T] (True where the state after the step is zero)")
        if tuple(reset.shape) != (B, T):
            raise ValueError(f"wkv6: reset must have shape [B, T] = {(B, T)}, got {tuple(reset.shape)}")
        tensors.append(("reset", reset))
    for name, x in tensors:
        if x.device != r.device:
            raise ValueError(f"wkv6: {name} is on {x.device} but r is on {r.device}; put all inputs on one device")
