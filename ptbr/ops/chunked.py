"""Chunked WKV6 in plain PyTorch: exact, numerically safe for any decay, with a hand-written
backward pass (autograd through the chunked graph is several times slower on CPU).

The sequence is cut into chunks of ``L`` steps. With the per-step log-decay ``lw = -exp(w_raw)``
and its inclusive cumulative sum ``A`` inside a chunk (``Ae`` the exclusive one, A_{t-1}):

* intra-chunk:  y_t += Σ_{s<t} P[t,s] v_s + (r_t·u·k_t) v_t,  P[t,s] = Σ_i r_t k_s exp(Ae_t - A_s)
* inter-chunk:  y_t += (r_t ⊙ exp(Ae_t)) S_c
* chunk state:  S_{c+1} = exp(A_L) ⊙ S_c + Σ_s (k_s ⊙ exp(A_L - A_s))ᵀ v_s

P is a matrix product of ``r ⊙ exp(Ae)`` (the same factor as the inter-chunk term) and
``k ⊙ exp(-A)``. That factorisation is exact while the chunk's total log-decay (its span) stays
below SAFE_SPAN = 80: the factors then lie between e^-80 and e^80, inside float32's normal range
(1.2e-38 .. 3.4e38), and their product loses no precision. Chunks with stronger
decay (rare in trained models, common in stress tests) are recomputed pair by pair, every
exponent then a forward-in-time span (≤ 0), so nothing can overflow. Cumulative sums are taken in
float64: their differences cancel, and in float32 that cancellation would cost up to |A|·2^-24 of
absolute error in every decay exponent. Padded steps at the end get r = k = v = 0 and log-decay 0,
so they leave the final state untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ptbr.ops.contract import W_RAW_CEIL
from ptbr.ops.reference import compute_dtype

SAFE_SPAN = 80.0
DEFAULT_CHUNK = 32


def _pairwise_scores(r: torch.Tensor, k: torch.Tensor, Ae: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Strictly causal scores [..., L, L], each pair's decay exponent (≤ 0) formed on its own."""
    L = r.shape[-2]
    ti, si = torch.tril_indices(L, L, offset=-1, device=r.device)
    decay = torch.exp((Ae[..., ti, :] - A[..., si, :]).to(r.dtype))
    pairs = (r[..., ti, :] * k[..., si, :] * decay).sum(-1)
    scores = pairs.new_zeros(*r.shape[:-2], L, L)
    scores[..., ti, si] = pairs
    return scores


class _Chunks:
    """Everything both passes derive from the inputs, laid out as [B, H, nc, L, N]."""

    def __init__(self, r, k, v, lw, u, L: int):
        self.r, self.k, self.v, self.u = r, k, v, u
        cd = r.dtype
        A = lw.double().cumsum(dim=-2)
        Ae = F.pad(A[..., :-1, :], (0, 0, 1, 0))
        A_last = A[..., -1:, :]
        self.A, self.Ae = A, Ae
        self.unsafe = (A_last.amin(dim=(-1, -2)) < -SAFE_SPAN).nonzero(as_tuple=True)  # chunks to do pairwise
        self.e_Ae = torch.exp(Ae.to(cd))  # r_t exp(A_{t-1}): exponent <= 0, >= -SAFE_SPAN in safe chunks
        self.e_k = torch.exp((-A).to(cd).clamp_(max=SAFE_SPAN))  # k_s exp(-A_s): exponent in [0, SAFE_SPAN]
        self.e_last = torch.exp(A_last.to(cd))  # [B,H,nc,1,N]
        if self.unsafe[0].numel():  # those chunks are done pair by pair instead
            self.e_k[self.unsafe] = 0.0
        self.q = r * self.e_Ae
        self.kg = k * self.e_k
        self.e_kd = torch.exp((A_last - A).to(cd))  # k_s to the chunk end: exponent <= 0
        self.kd = k * self.e_kd
        causal = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(-1)
        # Above the diagonal q·kg can reach e^span and overflow: select, never multiply, by the mask.
        P = torch.where(causal, self.q @ self.kg.transpose(-1, -2), 0.0)
        if self.unsafe[0].numel():
            P = P.index_put(self.unsafe, _pairwise_scores(*self._unsafe_inputs()))
        self.P, self.causal = P, causal
        self.rk = r * k
        self.bonus = (self.rk * u[None, :, None, None, :]).sum(-1, keepdim=True)  # [B,H,nc,L,1]

    def _unsafe_inputs(self):
        i = self.unsafe
        return self.r[i], self.k[i], self.Ae[i], self.A[i]

    # Everything the backward needs goes through ctx.save_for_backward (never a ctx attribute): activation
    # checkpointing (torch.utils.checkpoint, the long-context segments) frees and recomputes only tensors
    # that autograd's saved-tensor hooks see; a tensor kept as an attribute would stay alive.
    _FIELDS = (
        "r",
        "k",
        "v",
        "u",
        "A",
        "Ae",
        "e_Ae",
        "e_k",
        "e_last",
        "q",
        "kg",
        "e_kd",
        "kd",
        "P",
        "causal",
        "rk",
        "bonus",
    )

    def to_saved(self) -> tuple[torch.Tensor, ...]:
        return (*(getattr(self, f) for f in self._FIELDS), torch.stack(self.unsafe))

    @classmethod
    def from_saved(cls, saved: tuple[torch.Tensor, ...]) -> _Chunks:
        c = cls.__new__(cls)
        for f, t in zip(cls._FIELDS, saved):
            setattr(c, f, t)
        c.unsafe = tuple(saved[len(cls._FIELDS)].unbind(0))
        return c


def _scan(decay: torch.Tensor, delta: torch.Tensor, initial: torch.Tensor | None) -> torch.Tensor:
    """States entering each chunk of S_{c+1} = decay_c ⊙ S_c + delta_c ([B,H,nc,N,1], [B,H,nc,N,N]),
    written in place into one buffer (no per-chunk list to stack)."""
    states = torch.empty_like(delta)
    if initial is None:
        states[:, :, 0].zero_()
    else:
        states[:, :, 0].copy_(initial)
    for c in range(delta.shape[2] - 1):
        torch.addcmul(delta[:, :, c], decay[:, :, c], states[:, :, c], out=states[:, :, c + 1])
    return states


def _split(x: torch.Tensor, L: int, nc: int, cd: torch.dtype) -> torch.Tensor:
    """[B,T,H,N] -> contiguous [B,H,nc,L,N] in the compute dtype, zero-padded at the end."""
    B, T, H, N = x.shape
    x = x.to(cd).transpose(1, 2)
    if nc * L != T:
        x = F.pad(x, (0, 0, 0, nc * L - T))
    return x.reshape(B, H, nc, L, N).contiguous()


def _merge(x: torch.Tensor, T: int, dtype: torch.dtype) -> torch.Tensor:
    """[B,H,nc,L,N] -> [B,T,H,N] in ``dtype``, padding dropped."""
    B, H, nc, L, N = x.shape
    return x.reshape(B, H, nc * L, N)[:, :, :T].transpose(1, 2).to(dtype)


def _log_decay(w: torch.Tensor, cd: torch.dtype) -> torch.Tensor:
    """-exp(w) with w clamped at W_RAW_CEIL; its derivative -exp(w) (0 where clamped) comes along
    in the same pass as ``lw * (w <= ceil)`` is needed by the backward only."""
    return -torch.exp(w.to(cd).clamp(max=W_RAW_CEIL))


class _WKV6Chunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, k, v, w, u, state, chunk_size: int):
        B, T, H, N = r.shape
        cd = compute_dtype(r, k, v, w, u, *(() if state is None else (state,)))
        L = chunk_size
        nc = max(1, -(-T // L))
        lw_flat = _log_decay(w, cd)
        rc, kc, vc, lw = (_split(x, L, nc, cd) for x in (r, k, v, lw_flat))
        c = _Chunks(rc, kc, vc, lw, u.to(cd), L)

        delta = c.kd.transpose(-1, -2) @ vc  # [B,H,nc,N,N]
        S_prev = _scan(c.e_last.transpose(-1, -2), delta, None if state is None else state.to(cd))
        S = torch.addcmul(delta[:, :, -1], c.e_last[:, :, -1].transpose(-1, -2), S_prev[:, :, -1])
        y = torch.addcmul(c.P @ vc, c.bonus, vc).add_(c.q @ S_prev)

        # The chunk tensors are kept rather than recomputed: this is the CPU path, where time is scarcer
        # than memory (about 8 floats per input element).
        # d lw / d w = lw where w was not clamped, 0 where it was
        dlw_dw = _split(lw_flat.masked_fill(w.to(cd) > W_RAW_CEIL, 0.0), L, nc, cd)
        ctx.save_for_backward(r, k, v, w, u, S_prev, dlw_dw, *c.to_saved())
        ctx.meta = (chunk_size, cd, state is not None, state.dtype if state is not None else None)
        return _merge(y, T, r.dtype), S

    @staticmethod
    def backward(ctx, dy, dS_T):
        r, k, v, w, u, S_prev, dlw_dw, *saved = ctx.saved_tensors
        L, cd, has_state, state_dtype = ctx.meta
        c = _Chunks.from_saved(tuple(saved))
        rc, kc, vc = c.r, c.k, c.v
        B, T, H, N = r.shape
        nc = S_prev.shape[2]
        dy = _split(dy, L, nc, cd)

        # Reverse state recurrence: G_next[c] = dLoss/dS_{c+1}, the state leaving chunk c.
        qdy = c.q.transpose(-1, -2) @ dy  # [B,H,nc,N,N]
        e_last = c.e_last.transpose(-1, -2)  # [B,H,nc,N,1]: scales the rows (keys) of a state
        G_next = _scan(e_last.flip(2), qdy.flip(2), None if dS_T is None else dS_T.to(cd)).flip(2)
        d_state0 = torch.addcmul(qdy[:, :, 0], e_last[:, :, 0], G_next[:, :, 0])

        dP = (dy @ vc.transpose(-1, -2)) * c.causal
        d_bonus = (dy * vc).sum(-1, keepdim=True)
        dq = dy @ S_prev.transpose(-1, -2) + dP @ c.kg  # inter- and intra-chunk paths share q
        dkg = dP.transpose(-1, -2) @ c.q
        dkd = vc @ G_next.transpose(-1, -2)
        dv = c.P.transpose(-1, -2) @ dy + c.bonus * dy + c.kd @ G_next

        ucd = u.to(cd)[None, :, None, None, :]
        dr = dq * c.e_Ae + d_bonus * ucd * kc
        dk = dkg * c.e_k + dkd * c.e_kd + d_bonus * ucd * rc
        du = (d_bonus * c.rk).sum(dim=(0, 2, 3))
        # Partial derivatives with respect to the cumulative log-decays, summed in float64: the terms
        # are large and cancel in the reverse cumulative sum below (the known weak spot of dw).
        dAe = (dq * c.q).double()
        dkd_kd = dkd * c.kd
        dA = -(dkg * c.kg).double() - dkd_kd.double()
        dA_last = ((S_prev * G_next).sum(-1) * e_last[..., 0]).double() + dkd_kd.double().sum(-2)

        if c.unsafe[0].numel():
            with torch.enable_grad():
                leaves = [x.detach().requires_grad_(True) for x in c._unsafe_inputs()]
                gr, gk, gAe, gA = torch.autograd.grad(_pairwise_scores(*leaves), leaves, dP[c.unsafe])
            dr = dr.index_put(c.unsafe, gr, accumulate=True)
            dk = dk.index_put(c.unsafe, gk, accumulate=True)
            dAe = dAe.index_put(c.unsafe, gAe.double(), accumulate=True)
            dA = dA.index_put(c.unsafe, gA.double(), accumulate=True)

        # A_t = Σ_{j<=t} lw_j, Ae_t = Σ_{j<t} lw_j, A_last = Σ_j lw_j, so
        # dlw_j = Σ_{t>=j} dA_t + Σ_{t>j} dAe_t + dA_last; with D = dA + dAe and Σ_{t>=j} D_t = tot - cumsum + D:
        D = dA + dAe
        dlw = D.sum(-2, keepdim=True) - D.cumsum(-2) + dA + dA_last.unsqueeze(-2)
        dw_full = dlw.to(cd) * dlw_dw  # d(-exp(w))/dw = -exp(w) = lw (0 where w was clamped)
        dw = _merge(dw_full, T, w.dtype)

        return (
            _merge(dr, T, r.dtype),
            _merge(dk, T, k.dtype),
            _merge(dv, T, v.dtype),
            dw,
            du.to(u.dtype),
            d_state0.to(state_dtype) if has_state else None,
            None,
        )


def wkv6_chunked(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _WKV6Chunked.apply(r, k, v, w, u, state, chunk_size)
