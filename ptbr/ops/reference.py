"""Plain sequential WKV6: the ground truth every other backend is tested against.

One time step at a time, exactly the recurrence of RWKV-LM's ``wkv6_cuda.cu``:

    y_t = r_t · (diag(u) k_tᵀ v_t + S_{t-1}),   S_t = diag(w_t) S_{t-1} + k_tᵀ v_t,
    w_t = exp(-exp(w_raw_t)).

With ``reset`` (bool [B, T]), S_t = 0 wherever reset_t is set: the next step starts from a zero state
(a document boundary: reset marks the end-of-document token).

Computes in float32 (float64 when any input is float64), so it can serve as a high-precision
reference for the fast backends.
"""

from __future__ import annotations

import torch


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def wkv6_reference(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
    reset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, H, N = r.shape
    cd = compute_dtype(r, k, v, w, u, *(() if state is None else (state,)))
    r, k, v, w, u = (x.to(cd) for x in (r, k, v, w, u))
    decay = torch.exp(-torch.exp(w))
    S = r.new_zeros(B, H, N, N) if state is None else state.to(cd)
    ys = []
    keep = None if reset is None else (~reset).to(cd)[:, :, None, None, None].unbind(1)  # [B,1,1,1] per step
    # unbind once: indexing x[:, t] inside the loop would make the backward pass O(T^2)
    for t, (r_t, k_t, v_t, d_t) in enumerate(zip(r.unbind(1), k.unbind(1), v.unbind(1), decay.unbind(1))):
        kv = k_t[..., :, None] * v_t[..., None, :]  # [B, H, N(keys), N(values)]
        ys.append(torch.einsum("bhi,bhij->bhj", r_t, S + u[None, :, :, None] * kv))
        S = d_t[..., None] * S + kv
        if keep is not None:
            S = S * keep[t]
    y = torch.stack(ys, dim=1) if ys else r.new_zeros(B, 0, H, N)
    return y, S
