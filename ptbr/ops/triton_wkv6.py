"""Triton WKV6: chunked forward and backward kernels with fp32 state and fp32 gradient accumulation.

Per head (N = head size, state S is N x N, keys x values), with log-decay ``lw = -exp(w_raw)``:

    y_t = r_t · (diag(u) k_tᵀ v_t + S_{t-1}),   S_t = diag(exp(lw_t)) S_{t-1} + k_tᵀ v_t.

Two levels of chunking. Chunks of ``BT = 64`` steps: a sequential sweep writes the state entering
every chunk to HBM (fp32), and the output and gradient kernels then run one program per chunk, in
parallel. Inside a chunk, the program walks its ``NC = 4`` sub-chunks of ``BC = 16`` steps and
carries the state at the sub-chunk boundary in registers (fp32): sub-chunk m reads everything
before it through that state, ``y_m = (r_m ⊙ exp(ae_m)) S^(m) + (diagonal block) + (u bonus)``, and
the 16 x 16 diagonal block is computed pair by pair, each pair with its own exponent (a loop over
the 16 keys). All products with the states are tl.dot on >= 16-sized blocks.

Every decay factor is ``exp(Σ lw_j)`` over the steps strictly between a source and a sink, and the
kernels build each such sum directly, as a (reverse) cumulative sum starting at a chunk or
sub-chunk boundary, never as the difference of two prefix sums: every exponent is <= 0 (nothing
can overflow) and carries only its own rounding error (a difference A_t - A_s of fp32 prefix sums
would carry |A|·2^-24, already 1e-5 after one step with w_raw near log 128). The exclusive sums read
the decay one row up or down (a shifted load) instead of subtracting lw_t again.

Kernels (grid, what they do):

1. ``_fwd_state_kernel`` (B·H, value blocks): sequential over chunks, writes the state entering
   every chunk and the final state to ``h`` [B·H, NT+1, N, N] float32.
2. ``_fwd_output_kernel`` (B·H, chunks, value blocks): y of one chunk.
3. ``_bwd_state_kernel`` (B·H, value blocks): reverse sweep, ``dh[c]`` = dLoss/d(state leaving
   chunk c), and the gradient of the initial state.
4. ``_bwd_grad_kernel`` (B·H, chunks): dr, dk, dv, dw and a du partial of one chunk.

B·H is the first grid axis (CUDA allows 2^31 - 1 blocks there, 65535 on the others).

Storage: the forward saves only its inputs. The backward recomputes ``h`` with kernel 1 (one cheap
sequential sweep) instead of keeping it from the forward: ``h`` costs N²·4/BT bytes per token and
head (256 B at N = 64, half as much as the bf16 r, k, v, w together) in every layer between forward and
backward, while recomputing it reads k, v, w once more. Transient buffers: ``h`` in the forward,
``h`` and ``dh`` in the backward (256 B per token-head each at N = 64).

Gradient of the decay, without cancellation. dLoss/dlw_j is the sum over all paths from a source
before step j (a key, or an incoming state) to a sink after it (a query, or an outgoing state). The
usual chunked formula, Σ_{t>j} r_t·dr_t − Σ_{s>=j} k_s·dk_s, subtracts O(1) sums of paths that do
not cross j; its fp32 rounding (~1e-6 absolute) is then multiplied by |lw_j|, up to 128, and gives
dw errors of 1e-4 where the true dw is ~0. Here, for step j of sub-chunk m, each crossing path is
counted once, in one of four direct sums:

    dlw_j = exp(Σ_m lw) Σ_values S^(m) ⊙ dS^(m+1)     before m -> after m
          + Σ_{t>j in m} r_t ⊙ (dy_t S^(m)ᵀ) ⊙ exp(ae_t)      before m -> query t in m
          + Σ_{s<j in m} k_s ⊙ (v_s dS^(m+1)ᵀ) ⊙ exp(bl_s)     key s in m -> after m
          + Σ_{s<j<t in m} (pair terms of the diagonal block)

with S^(m) the state entering sub-chunk m and dS^(m+1) the gradient of the state leaving it. The
in-block sums over t > j and s < j are products with strictly triangular 0/1 matrices (tl.dot), so
no partial sum is ever subtracted. dw = dlw · lw (d(-exp(w))/dw = -exp(w)), 0 where w_raw was
clamped at log 128.

Precision: loads are cast to fp32 at once and all arithmetic is fp32 (bf16 arithmetic is also wrong
under the CPU interpreter). Matrix products (``_dot``) use tl.dot with input_precision "tf32x3" by
default: three TF32 tensor-core products, ~fp32 accuracy (rel. RMS ~2e-7 against float64 for fp32
inputs). ``PTBR_WKV_DOT_PRECISION=tf32`` (one product; each factor truncated to 10 mantissa bits:
~8e-4 for fp32 inputs, and for bf16 inputs y 1.7e-3, dw 2.4e-3 instead of 1.7e-3, 2.3e-3) or
``ieee`` (exact, no tensor cores, spills registers) set before the import changes it. The
interpreter emulates the GPU's TF32 arithmetic for "tf32" and "tf32x3", so CPU tests measure it.

Shapes and compilation: the sequence length T and the head count H are runtime arguments excluded
from Triton's integer specialisation (``do_not_specialize``), the last chunk is masked (padded steps
get r = k = v = 0 and decay 1, so they change nothing), and no constexpr depends on T or H: one
compiled kernel per (head size, dtypes) serves every length and every model of that head size.
Offsets into [B, T, H, N] tensors are int64. The sub-chunk loops are loops, not unrolled
(``static_range``): the same work in about a third of the code, so a kernel compiles in seconds
(the unrolled backward took 40-70 s at N = 64 and over 5 minutes at N = 128 on a 2-core machine, and
spilled more registers); :data:`LAUNCH_CONFIGS` gives each kernel one configuration per head size.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl
from triton.runtime.autotuner import Autotuner

from ptbr.ops.contract import W_RAW_CEIL, check_inputs

CHUNK = 64  # BT: steps per chunk (one program of the output and gradient kernels)
SUB_CHUNK = 16  # BC: diagonal block size, also the smallest tl.dot dimension a GPU accepts
DOT_PRECISIONS = ("tf32", "tf32x3", "ieee")
DOT_PRECISION = os.environ.get("PTBR_WKV_DOT_PRECISION", "tf32x3")
if DOT_PRECISION not in DOT_PRECISIONS:
    raise ValueError(f"PTBR_WKV_DOT_PRECISION must be one of {DOT_PRECISIONS}, got {DOT_PRECISION!r}")


TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_HEAD_SIZES = (16, 32, 64, 128)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1, read at import)."""
    return bool(triton.knobs.runtime.interpret)


def check_triton_inputs(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor) -> None:
    """What the kernels need beyond ``contract.check_inputs``: dtypes, head size, a CUDA device."""
    for name, x in (("r", r), ("k", k), ("v", v), ("w", w), ("u", u)):
        if x.dtype not in TRITON_DTYPES:
            raise ValueError(
                f"wkv6: backend='triton' takes float16, bfloat16 or float32 inputs, but {name} is "
                f"{x.dtype} (use backend='reference' or 'torch' for float64)"
            )
    N = r.shape[-1]
    if N not in TRITON_HEAD_SIZES:
        raise ValueError(f"wkv6: backend='triton' supports head size N in {TRITON_HEAD_SIZES}, got r with N = {N}")
    if r.device.type != "cuda" and not (r.device.type == "cpu" and interpreting()):
        raise ValueError(
            f"wkv6: backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), but r is on {r.device}"
        )


PREC = tl.constexpr(DOT_PRECISION)
CEIL = tl.constexpr(W_RAW_CEIL)
# The interpreter truncates fp32 -> bf16 (and its "rtne" mode mis-rounds mantissas of all ones);
# a GPU rounds to nearest even. Round by hand there so CPU tests see the GPU's results.
MANUAL_BF16_ROUNDING = tl.constexpr(interpreting())
# The interpreter's tl.dot is exact fp32 whatever input_precision says. Emulate what a GPU's tensor
# cores do instead (tf32: the low 13 mantissa bits of each factor ignored; tf32x3: the factors split
# into two round-to-nearest TF32 parts, three products), so CPU tests measure the GPU's precision.
EMULATE_TF32 = tl.constexpr(interpreting() and DOT_PRECISION != "ieee")


# (num_warps, num_stages) of each kernel by head size. Chosen without a GPU, from the sm_90 compiler's own
# report (``python -m ptbr.devtools.triton_compile_check --head-size N``): the fewest register spills, then
# the fewer warps. The backward gradient kernel holds several N x N fp32 tiles per program and spills least
# with 8 warps at every N (N = 64: 672 bytes of spill stores with 8 warps, 1,708 with 4); the other kernels
# do not spill with 4 warps up to N = 64 (the forward state sweep from N = 64 on needs 8) and need 8 at
# N = 128. The stage count changed nothing (no pipelined loads). One configuration per kernel means one
# compilation per (head size, dtype): with Triton's autotuner over 6 configurations, ``pytest -m gpu``
# alone compiled about 190 kernels.
LAUNCH_CONFIGS: dict[str, dict[int, tuple[int, int]]] = {
    "_fwd_state_kernel": {16: (4, 1), 32: (4, 1), 64: (8, 1), 128: (8, 1)},
    "_fwd_output_kernel": {16: (4, 1), 32: (4, 1), 64: (4, 1), 128: (8, 1)},
    "_bwd_state_kernel": {16: (4, 1), 32: (4, 1), 64: (4, 1), 128: (8, 1)},
    "_bwd_grad_kernel": {16: (8, 1), 32: (8, 1), 64: (8, 1), 128: (8, 1)},
}
# PTBR_WKV_AUTOTUNE=1: let Triton time these on the GPU instead (4 compilations per kernel and key), keyed by
# head size, value block and the power-of-two bucket of T (the sequential sweeps' best shape depends on how
# many chunks they walk; a bucket, so that every new prompt length does not tune again).
AUTOTUNE = os.environ.get("PTBR_WKV_AUTOTUNE", "") == "1"
AUTOTUNE_CONFIGS = ((4, 1), (4, 2), (8, 1), (8, 2))


def t_bucket(T: int) -> int:
    """The autotune key's stand-in for T: the next power of two, at least one chunk."""
    return max(CHUNK, 1 << max(0, T - 1).bit_length())


def _tuned(key: list[str]):
    """The kernel as is (launched with :data:`LAUNCH_CONFIGS`), or autotuned with ``PTBR_WKV_AUTOTUNE=1`` on a
    GPU (the interpreter has no benchmarker). Every kernel here is idempotent (it only writes outputs computed
    from inputs), so the autotuner may run it several times on the first call."""

    def wrap(kernel):
        if interpreting() or not AUTOTUNE:
            return kernel
        configs = [triton.Config({}, num_warps=w, num_stages=s) for w, s in AUTOTUNE_CONFIGS]
        return triton.autotune(configs=configs, key=[*key, "T_BUCKET"])(kernel)

    return wrap


def _launch(kernel, grid: tuple[int, ...], *args, T: int, H: int, **meta) -> None:
    """Launch with this kernel's configuration for the head size (or let the autotuner pick)."""
    if isinstance(kernel, Autotuner):
        kernel[grid](*args, T, H, t_bucket(T), **meta)
        return
    warps, stages = LAUNCH_CONFIGS[kernel.fn.__name__][meta["N"]]
    kernel[grid](*args, T, H, t_bucket(T), **meta, num_warps=warps, num_stages=stages)


# --------------------------------------------------------------------------------------------- helpers


@triton.jit
def _log_decay(w_ptr, offs, mask):
    """lw = -exp(min(w_raw, log 128)) in fp32; 0 (decay 1) at masked positions (padding, shifts)."""
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return tl.where(mask, -tl.exp(tl.minimum(w, CEIL)), 0.0)


@triton.jit
def _load_f32(ptr, offs, mask):
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store(ptr, offs, x, mask):
    """Cast the fp32 block to the output dtype with round-to-nearest-even and store it."""
    if MANUAL_BF16_ROUNDING:  # interpreter only; compiled kernels take the plain cast below
        if ptr.dtype.element_ty == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = bits + 0x7FFF + ((bits >> 16) & 1)
            tl.store(ptr + offs, (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
        else:
            tl.store(ptr + offs, x.to(ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(ptr + offs, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tf32_round(x):
    """fp32 -> nearest TF32 value (ties away from zero), like cvt.rna.tf32.f32."""
    return ((x.to(tl.uint32, bitcast=True) + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def _dot(a, b):
    """a @ b in fp32 with input_precision PREC (emulated in the interpreter, see EMULATE_TF32)."""
    if EMULATE_TF32:
        if PREC == "tf32x3":
            a_hi = _tf32_round(a)
            b_hi = _tf32_round(b)
            return tl.dot(a_hi, b_hi) + tl.dot(a_hi, _tf32_round(b - b_hi)) + tl.dot(_tf32_round(a - a_hi), b_hi)
        else:
            a_tc = (a.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
            b_tc = (b.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
            return tl.dot(a_tc, b_tc)
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _shifted_log_decays(w_ptr, offs, o, rows, T, R: tl.constexpr, ROW):
    """Log-decays one row up and one row down inside a block of R rows (0 across its edges / past T).

    prev[t] = lw[t-1], next[s] = lw[s+1]: cumsum(prev) is Σ_{start<=j<t} lw_j and
    cumsum(next, reverse) is Σ_{s<j<end} lw_j, both without subtracting lw again.
    """
    prev = _log_decay(w_ptr, offs - ROW, ((o >= 1) & (rows - 1 < T))[:, None])
    nxt = _log_decay(w_ptr, offs + ROW, ((o < R - 1) & (rows + 1 < T))[:, None])
    return prev, nxt


# --------------------------------------------------------------------------------------------- kernels


@_tuned(key=["N", "BV"])
@triton.jit(do_not_specialize=["T", "H", "T_BUCKET"])
def _fwd_state_kernel(
    k_ptr,
    v_ptr,
    w_ptr,
    s0_ptr,
    h_ptr,
    T,
    H,
    T_BUCKET,
    N: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    HAS_S0: tl.constexpr,
):
    """Chunk states: h[c] = state entering chunk c (h[NT] = final state), value columns of one block.

    S_{c+1} = exp(Σ_chunk lw) ⊙ S_c + Σ_s (k_s ⊙ exp(Σ_{j>s} lw_j))ᵀ v_s.
    """
    i_bh = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)
    seq = (i_b * T * H + i_h) * N
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, N)
    o_v = i_v * BV + tl.arange(0, BV)
    o_s = o_k[:, None] * N + o_v[None, :]
    h_base = h_ptr + i_bh * (NT + 1) * N * N  # int64; c * N * N stays < 2^31 for T < 8M
    if HAS_S0:
        S = tl.load(s0_ptr + i_bh * N * N + o_s).to(tl.float32)
    else:
        S = tl.zeros([N, BV], dtype=tl.float32)
    for c in range(0, NT):
        tl.store(h_base + c * N * N + o_s, S)
        rows = (c * BT + o_t).to(tl.int64)
        m = (rows < T)[:, None]
        offs = seq + rows[:, None] * (H * N) + o_k[None, :]
        lw = _log_decay(w_ptr, offs, m)
        _, nxt = _shifted_log_decays(w_ptr, offs, o_t, rows, T, BT, H * N)
        k = _load_f32(k_ptr, offs, m)
        v = _load_f32(v_ptr, seq + rows[:, None] * (H * N) + o_v[None, :], m)
        kd = k * tl.exp(tl.cumsum(nxt, axis=0, reverse=True))
        S = S * tl.exp(tl.sum(lw, axis=0))[:, None] + _dot(tl.trans(kd), v)
    tl.store(h_base + NT * N * N + o_s, S)


@_tuned(key=["N", "BV"])
@triton.jit(do_not_specialize=["T", "H", "T_BUCKET"])
def _fwd_output_kernel(
    r_ptr,
    k_ptr,
    v_ptr,
    w_ptr,
    u_ptr,
    h_ptr,
    y_ptr,
    T,
    H,
    T_BUCKET,
    N: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BV: tl.constexpr,
):
    """y of one chunk (one block of value columns), sub-chunk by sub-chunk:

    y_m = (r_m ⊙ exp(ae_m)) S^(m) + P_m v_m + (r_m·u·k_m) v_m,
    S^(m+1) = exp(Σ_m lw) ⊙ S^(m) + (k_m ⊙ exp(bl_m))ᵀ v_m,       S^(0) = h[c],

    ae / bl = Σ lw from the sub-chunk start to t-1 / from s+1 to the sub-chunk end, and
    P_m[t, s] = Σ_i r_ti k_si exp(Σ_{s<j<t} lw_ji) (s < t) the diagonal block.
    """
    i_bh = tl.program_id(0).to(tl.int64)
    i_c, i_v = tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)
    seq = (i_b * T * H + i_h) * N
    ROW = H * N
    NC: tl.constexpr = BT // BC
    o_c = tl.arange(0, BC)
    o_k = tl.arange(0, N)
    o_v = i_v * BV + tl.arange(0, BV)
    t0 = i_c.to(tl.int64) * BT
    S = tl.load(h_ptr + (i_bh * (NT + 1) + i_c) * N * N + o_k[:, None] * N + o_v[None, :])
    u = tl.load(u_ptr + i_h * N + o_k).to(tl.float32)
    for m in range(NC):  # a loop, not unrolled: 4x less code to compile, the same work
        rows = t0 + m * BC + o_c
        msk = (rows < T)[:, None]
        offs = seq + rows[:, None] * ROW
        r = _load_f32(r_ptr, offs + o_k[None, :], msk)
        k = _load_f32(k_ptr, offs + o_k[None, :], msk)
        v = _load_f32(v_ptr, offs + o_v[None, :], msk)
        lw = _log_decay(w_ptr, offs + o_k[None, :], msk)
        prev, nxt = _shifted_log_decays(w_ptr, offs + o_k[None, :], o_c, rows, T, BC, ROW)
        acc = _dot(r * tl.exp(tl.cumsum(prev, axis=0)), S)
        # Diagonal block, keys j = BC-1 .. 0: x[t] = Σ_{j<i<t} lw_i grows by lw_{j+1} per step.
        # (Helpers are inlined in this loop: every jit-function call is slow in the interpreter.)
        P = tl.zeros([BC, BC], dtype=tl.float32)
        x = tl.zeros([BC, N], dtype=tl.float32)
        for jj in range(BC):
            j = BC - 1 - jj
            row_j = t0 + m * BC + j
            w_n = tl.load(
                w_ptr + seq + (row_j + 1) * ROW + o_k, mask=(j + 1 < BC) & (row_j + 1 < T), other=float("-inf")
            )  # lw_{j+1}; -exp(-inf) = 0 past the block or T
            x = tl.where(o_c[:, None] > j + 1, x - tl.exp(tl.minimum(w_n.to(tl.float32), CEIL))[None, :], 0.0)
            k_j = tl.load(k_ptr + seq + row_j * ROW + o_k, mask=row_j < T, other=0.0).to(tl.float32)
            e = tl.exp(tl.where(o_c[:, None] > j, x, float("-inf")))
            P += tl.where(o_c[None, :] == j, tl.sum(r * k_j[None, :] * e, axis=1)[:, None], 0.0)
        acc += _dot(P, v)
        acc += tl.sum(r * u[None, :] * k, axis=1)[:, None] * v
        _store(y_ptr, offs + o_v[None, :], acc, msk)
        kb = k * tl.exp(tl.cumsum(nxt, axis=0, reverse=True))  # (after the last sub-chunk: unused)
        S = S * tl.exp(tl.sum(lw, axis=0))[:, None] + _dot(tl.trans(kb), v)


@_tuned(key=["N", "BV"])
@triton.jit(do_not_specialize=["T", "H", "T_BUCKET"])
def _bwd_state_kernel(
    r_ptr,
    w_ptr,
    dy_ptr,
    dsT_ptr,
    dh_ptr,
    ds0_ptr,
    T,
    H,
    T_BUCKET,
    N: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    HAS_DST: tl.constexpr,
    STORE_DS0: tl.constexpr,
):
    """Reverse sweep: dh[c] = dLoss/dS_{c+1} (state leaving chunk c); ds0 = dLoss/dS_0.

    dS_c = exp(Σ_chunk lw) ⊙ dS_{c+1} + Σ_t (r_t ⊙ exp(Σ_{j<t} lw_j))ᵀ dy_t   (sums inside chunk c).
    """
    i_bh = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)
    seq = (i_b * T * H + i_h) * N
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, N)
    o_v = i_v * BV + tl.arange(0, BV)
    o_s = o_k[:, None] * N + o_v[None, :]
    if HAS_DST:
        G = tl.load(dsT_ptr + i_bh * N * N + o_s).to(tl.float32)
    else:
        G = tl.zeros([N, BV], dtype=tl.float32)
    for i in range(0, NT):
        c = NT - 1 - i
        tl.store(dh_ptr + (i_bh * NT + c) * N * N + o_s, G)
        rows = (c * BT + o_t).to(tl.int64)
        m = (rows < T)[:, None]
        offs = seq + rows[:, None] * (H * N) + o_k[None, :]
        lw = _log_decay(w_ptr, offs, m)
        prev, _ = _shifted_log_decays(w_ptr, offs, o_t, rows, T, BT, H * N)
        r = _load_f32(r_ptr, offs, m)
        dy = _load_f32(dy_ptr, seq + rows[:, None] * (H * N) + o_v[None, :], m)
        q = r * tl.exp(tl.cumsum(prev, axis=0))
        G = G * tl.exp(tl.sum(lw, axis=0))[:, None] + _dot(tl.trans(q), dy)
    if STORE_DS0:
        tl.store(ds0_ptr + i_bh * N * N + o_s, G)


@_tuned(key=["N"])
@triton.jit(do_not_specialize=["T", "H", "T_BUCKET"])
def _bwd_grad_kernel(
    r_ptr,
    k_ptr,
    v_ptr,
    w_ptr,
    u_ptr,
    dy_ptr,
    h_ptr,
    dh_ptr,
    dr_ptr,
    dk_ptr,
    dv_ptr,
    dw_ptr,
    du_ptr,
    T,
    H,
    T_BUCKET,
    N: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
):
    """dr, dk, dv, dw of one chunk and its du partial, sub-chunk by sub-chunk:

    dr_m = (dy_m S^(m)ᵀ) ⊙ exp(ae_m) + diagonal + bonus
    dk_m = (v_m dS^(m+1)ᵀ) ⊙ exp(bl_m) + diagonal + bonus
    dv_m = (k_m ⊙ exp(bl_m)) dS^(m+1) + P_mᵀ dy_m + bonus
    dS^(m+1) = exp(Σ after m lw) ⊙ dh[c] + Σ_{t after m} (r_t ⊙ exp(Σ_{end of m<j<t} lw_j))ᵀ dy_t

    with S^(m) carried forward as in the output kernel, and dlw from four direct sums of crossing
    paths (module docstring). Work that needs no diagonal term is done before the pairwise loop,
    so fewer blocks stay live across it (register pressure).
    """
    i_bh = tl.program_id(0).to(tl.int64)
    i_c = tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)
    seq = (i_b * T * H + i_h) * N
    ROW = H * N
    NC: tl.constexpr = BT // BC
    o_c = tl.arange(0, BC)
    o_k = tl.arange(0, N)
    o_s = o_k[:, None] * N + o_k[None, :]
    t0 = i_c.to(tl.int64) * BT
    S = tl.load(h_ptr + (i_bh * (NT + 1) + i_c) * N * N + o_s)
    dh_c = dh_ptr + (i_bh * NT + i_c) * N * N + o_s  # dh[c], reloaded where needed (registers)
    u = tl.load(u_ptr + i_h * N + o_k).to(tl.float32)
    # 0/1 matrices: sums over t > i, over s < i, and the shift i <- i+1, as exact tl.dot products
    later = (o_c[None, :] > o_c[:, None]).to(tl.float32)
    earlier = (o_c[None, :] < o_c[:, None]).to(tl.float32)
    shift = (o_c[None, :] == o_c[:, None] + 1).to(tl.float32)
    du = tl.zeros([N], dtype=tl.float32)
    for m in range(NC):  # loops, not unrolled: 4x less code to compile, the same work
        # dS^(m+1): dh[c] carried back over the later sub-chunks, plus their queries, 16 rows at a time
        gap = tl.zeros([N], dtype=tl.float32)  # Σ lw from the end of sub-chunk m to the start of l
        dS_q = tl.zeros([N, N], dtype=tl.float32)
        for l in range(m + 1, NC):  # none after the last sub-chunk: dS = dh[c]
            rows_l = t0 + l * BC + o_c
            msk_l = (rows_l < T)[:, None]
            offs_l = seq + rows_l[:, None] * ROW + o_k[None, :]
            prev_l, _ = _shifted_log_decays(w_ptr, offs_l, o_c, rows_l, T, BC, ROW)
            rt = _load_f32(r_ptr, offs_l, msk_l) * tl.exp(gap[None, :] + tl.cumsum(prev_l, axis=0))
            dS_q += _dot(tl.trans(rt), _load_f32(dy_ptr, offs_l, msk_l))
            gap += tl.sum(_log_decay(w_ptr, offs_l, msk_l), axis=0)
        dS = tl.load(dh_c) * tl.exp(gap)[:, None] + dS_q

        rows = t0 + m * BC + o_c
        msk = (rows < T)[:, None]
        offs = seq + rows[:, None] * ROW + o_k[None, :]
        r = _load_f32(r_ptr, offs, msk)
        k = _load_f32(k_ptr, offs, msk)
        v = _load_f32(v_ptr, offs, msk)
        dy = _load_f32(dy_ptr, offs, msk)
        lw = _log_decay(w_ptr, offs, msk)
        prev, nxt = _shifted_log_decays(w_ptr, offs, o_c, rows, T, BC, ROW)
        eb = tl.exp(tl.cumsum(nxt, axis=0, reverse=True))  # from s+1 to the sub-chunk end
        e_m = tl.exp(tl.sum(lw, axis=0))  # across the whole sub-chunk
        # paths through the sub-chunk boundaries, and the first three sums of dlw
        dr = _dot(dy, tl.trans(S)) * tl.exp(tl.cumsum(prev, axis=0))
        dk = _dot(v, tl.trans(dS)) * eb
        dv = _dot(k * eb, dS)
        dlw = (e_m * tl.sum(S * dS, axis=1))[None, :] + _dot(later, r * dr) + _dot(earlier, k * dk)
        S = S * e_m[:, None] + _dot(tl.trans(k * eb), v)  # S^(m+1) (after the last sub-chunk: unused)
        # the u bonus (no decay, no dlw)
        db = tl.sum(dy * v, axis=1)[:, None]  # d(bonus_t) = dy_t · v_t
        dr += db * u[None, :] * k
        dk += db * u[None, :] * r
        dv += tl.sum(r * u[None, :] * k, axis=1)[:, None] * dy
        du += tl.sum(db * r * k, axis=0)
        # Diagonal block, keys j = BC-1 .. 0, each pair (t > j) with its own exponent
        # x[t] = Σ_{j<i<t} lw_i, grown by lw_{j+1} per step. acc[i] collects Σ_{s<=i-2} Σ_{t>=i}
        # of the pair terms, so acc[j+1] = pairs crossing j. Helpers inlined (interpreter speed).
        dPd = _dot(dy, tl.trans(v))
        P = tl.zeros([BC, BC], dtype=tl.float32)
        x = tl.zeros([BC, N], dtype=tl.float32)
        acc = tl.zeros([BC, N], dtype=tl.float32)
        for jj in range(BC):
            j = BC - 1 - jj
            row_j = t0 + m * BC + j
            w_n = tl.load(
                w_ptr + seq + (row_j + 1) * ROW + o_k, mask=(j + 1 < BC) & (row_j + 1 < T), other=float("-inf")
            )  # lw_{j+1}; -exp(-inf) = 0 past the block or T
            x = tl.where(o_c[:, None] > j + 1, x - tl.exp(tl.minimum(w_n.to(tl.float32), CEIL))[None, :], 0.0)
            k_j = tl.load(k_ptr + seq + row_j * ROW + o_k, mask=row_j < T, other=0.0).to(tl.float32)
            e = tl.exp(tl.where(o_c[:, None] > j, x, float("-inf")))
            dp_j = tl.sum(tl.where(o_c[None, :] == j, dPd, 0.0), axis=1)  # column j of dPd
            dr += dp_j[:, None] * k_j[None, :] * e
            re = r * e
            g = dp_j[:, None] * re
            dk += tl.where(o_c[:, None] == j, tl.sum(g, axis=0)[None, :], 0.0)
            P += tl.where(o_c[None, :] == j, tl.sum(re * k_j[None, :], axis=1)[:, None], 0.0)
            acc += tl.where(o_c[:, None] >= j + 2, tl.cumsum(g * k_j[None, :], axis=0, reverse=True), 0.0)
        dv += _dot(tl.trans(P), dy)
        dlw += _dot(shift, acc)
        w = _load_f32(w_ptr, offs, msk)
        _store(dr_ptr, offs, dr, msk)
        _store(dk_ptr, offs, dk, msk)
        _store(dv_ptr, offs, dv, msk)
        _store(dw_ptr, offs, tl.where(w <= CEIL, dlw * lw, 0.0), msk)
    tl.store(du_ptr + (i_bh * NT + i_c) * N + o_k, du)


# --------------------------------------------------------------------------------------------- launchers


def _scan_block(N: int) -> int:
    """Value columns per program of the sequential state sweeps (more programs, smaller state tile)."""
    return min(N, 32)


def _chunk_states(k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, s0: torch.Tensor | None) -> torch.Tensor:
    """h [B·H, NT+1, N, N] float32: the state entering each chunk, then the final state."""
    B, T, H, N = k.shape
    NT = triton.cdiv(T, CHUNK)
    h = torch.empty(B * H, NT + 1, N, N, dtype=torch.float32, device=k.device)
    BV = _scan_block(N)
    _launch(
        _fwd_state_kernel,
        (B * H, N // BV),
        k,
        v,
        w,
        h if s0 is None else s0,
        h,
        T=T,
        H=H,
        N=N,
        BT=CHUNK,
        BV=BV,
        HAS_S0=s0 is not None,
    )
    return h


def _forward(r, k, v, w, u, s0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, T, H, N = r.shape
    NT = triton.cdiv(T, CHUNK)
    h = _chunk_states(k, v, w, s0)
    y = torch.empty_like(r)
    BV = min(N, 64)
    _launch(_fwd_output_kernel, (B * H, NT, N // BV), r, k, v, w, u, h, y, T=T, H=H, N=N, BT=CHUNK, BC=SUB_CHUNK, BV=BV)
    return y, h[:, NT].reshape(B, H, N, N).clone(), h


def _backward(r, k, v, w, u, s0, dy, dsT):
    B, T, H, N = r.shape
    NT = triton.cdiv(T, CHUNK)
    h = _chunk_states(k, v, w, s0)
    dh = torch.empty_like(h[:, :NT])
    ds0 = torch.empty(B, H, N, N, dtype=torch.float32, device=r.device) if s0 is not None else dh
    BV = _scan_block(N)
    _launch(
        _bwd_state_kernel,
        (B * H, N // BV),
        r,
        w,
        dy,
        dh if dsT is None else dsT,
        dh,
        ds0,
        T=T,
        H=H,
        N=N,
        BT=CHUNK,
        BV=BV,
        HAS_DST=dsT is not None,
        STORE_DS0=s0 is not None,
    )
    dr, dk, dv, dw = (torch.empty_like(x) for x in (r, k, v, w))
    du = torch.empty(B * H, NT, N, dtype=torch.float32, device=r.device)
    _launch(
        _bwd_grad_kernel,
        (B * H, NT),
        r,
        k,
        v,
        w,
        u,
        dy,
        h,
        dh,
        dr,
        dk,
        dv,
        dw,
        du,
        T=T,
        H=H,
        N=N,
        BT=CHUNK,
        BC=SUB_CHUNK,
    )
    du = du.view(B, H, NT, N).sum(dim=(0, 2)).to(u.dtype)
    return dr, dk, dv, dw, du, (ds0 if s0 is not None else None)


def _on_device(x: torch.Tensor):
    """Launch on x's GPU (Triton uses the current CUDA device); nothing to select on the CPU."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


class _WKV6Triton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, k, v, w, u, state):
        B, T, H, N = r.shape
        r, k, v, w, u = (x.contiguous() for x in (r, k, v, w, u))
        s0 = None if state is None else state.contiguous()
        ctx.save_for_backward(r, k, v, w, u, s0)
        if B * H * T == 0:
            sT = r.new_zeros(B, H, N, N, dtype=torch.float32) if s0 is None else s0.clone()
            return r.new_zeros(r.shape), sT
        with _on_device(r):
            y, sT, _ = _forward(r, k, v, w, u, s0)
        return y, sT

    @staticmethod
    def backward(ctx, dy, dsT):
        r, k, v, w, u, s0 = ctx.saved_tensors
        B, T, H, N = r.shape
        if B * H * T == 0:
            ds0 = None if s0 is None else (torch.zeros_like(s0) if dsT is None else dsT.clone())
            return (
                torch.zeros_like(r),
                torch.zeros_like(k),
                torch.zeros_like(v),
                torch.zeros_like(w),
                torch.zeros_like(u),
                ds0,
            )
        if dy is None:
            dy = torch.zeros_like(r)
        with _on_device(r):
            return _backward(r, k, v, w, u, s0, dy.contiguous(), None if dsT is None else dsT.contiguous())


def wkv6_triton(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RWKV-6 WKV with Triton kernels: ``(y [B,T,H,N] in r.dtype, final state [B,H,N,N] float32)``.

    Differentiable in r, k, v, w, u and the initial state. A direct call checks its inputs like
    ``wkv6(..., backend="triton")`` does.
    """
    check_inputs(r, k, v, w, u, state)
    return wkv6_triton_prechecked(r, k, v, w, u, state)


def wkv6_triton_prechecked(r, k, v, w, u, state=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The backend as ``wkv6`` calls it: the common contract is already checked."""
    check_triton_inputs(r, k, v, w, u)
    return _WKV6Triton.apply(r, k, v, w, u, state)
