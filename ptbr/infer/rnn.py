"""One-token RWKV-6 steps for generation: the recurrence itself, memory constant in the sequence length.

The model's ``forward`` serves training and prompt prefill (chunked WKV over many tokens at once);
for one token at a time that machinery is pure overhead. :class:`RNN` holds the same weights laid out
for matrix-vector products (the four time-mix projections stacked, the five token-shift LoRAs fused)
and runs the x060 recurrence directly. Its state is the model's ``LayerState`` list, so a prompt
ingested by ``forward(..., return_state=True)`` continues here.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F

from ptbr.model.rwkv6 import GROUPNORM_EPS, RWKV6, LayerState

# RWKV-LM computes the five token-shift mixes in the order w, k, v, r, g; here they are kept in the order
# r, k, v, g, w so that the first four are one contiguous slice, the input of the stacked projections.
_MIX_ORDER = [3, 1, 2, 4, 0]


def decay_factor(xw: torch.Tensor, decay_w1: torch.Tensor, decay_w2: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """The per-channel decay ``exp(-exp(w_raw))`` in float32, whatever the weights' dtype.

    ``w_raw`` comes out of the LoRA in the weights' dtype, exactly as training and prefill compute it; the
    double exponential must not: in bfloat16 every decay above 1 - 2^-9 (w_raw below about -6.2, common in
    trained models) rounds to exactly 1.0, a channel that never forgets. The WKV kernels take w_raw and
    exponentiate in float32 too."""
    w_raw = torch.tanh(xw @ decay_w1) @ decay_w2 + decay
    return torch.exp(-torch.exp(w_raw.float()))


def _layer_step(
    x: torch.Tensor,
    att_shift: torch.Tensor,
    wkv: torch.Tensor,
    ffn_shift: torch.Tensor,
    ln1_w: torch.Tensor,
    ln1_b: torch.Tensor,
    maa_x: torch.Tensor,
    maa_w1: torch.Tensor,
    maa: torch.Tensor,
    maa_w2: torch.Tensor,
    rkvg: torch.Tensor,
    decay: torch.Tensor,
    decay_w1: torch.Tensor,
    decay_w2: torch.Tensor,
    u: torch.Tensor,
    lnx_w: torch.Tensor,
    lnx_b: torch.Tensor,
    out: torch.Tensor,
    ln2_w: torch.Tensor,
    ln2_b: torch.Tensor,
    f_maa_k: torch.Tensor,
    f_maa_r: torch.Tensor,
    f_key: torch.Tensor,
    f_rec: torch.Tensor,
    f_val: torch.Tensor,
    H: int,
    N: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block for one token, x [B, C] -> (x, att_shift, wkv, ffn_shift). Few, fused operations: at batch
    1 the matrix-vector products are memory-bound and everything else is per-operation overhead (run through
    TorchScript with the layer loop, see :func:`_compiled_stack`)."""
    B, C = x.shape[0], x.shape[1]
    xa = F.layer_norm(x, [C], ln1_w, ln1_b)
    sx = att_shift - xa
    m = torch.tanh(torch.addcmul(xa, sx, maa_x) @ maa_w1).view(B, 5, -1).transpose(0, 1)  # [5, B, R]
    xs = torch.addcmul(xa, sx, torch.baddbmm(maa, m, maa_w2))  # xr, xk, xv, xg, xw: [5, B, C]
    rkvg_out = torch.bmm(xs[:4], rkvg)
    r = rkvg_out[0].float().view(B, H, N)
    k = rkvg_out[1].float().view(B, H, N)
    v = rkvg_out[2].float().view(B, H, N)
    w = decay_factor(xs[4], decay_w1, decay_w2, decay).view(B, H, N)
    # y = r (S + diag(u) kᵀv) = r S + (r·u·k) v, without forming u kᵀv
    y = torch.addcmul((r.unsqueeze(-2) @ wkv).squeeze(-2), (r * u * k).sum(-1, keepdim=True), v)
    new_wkv = torch.addcmul(k.unsqueeze(-1) * v.unsqueeze(-2), w.unsqueeze(-1), wkv)
    y = F.group_norm(y.view(B, C).to(x.dtype), H, lnx_w, lnx_b, eps) * F.silu(rkvg_out[3])
    x = torch.addmm(x, y, out)
    xf = F.layer_norm(x, [C], ln2_w, ln2_b)
    fx = ffn_shift - xf
    xk, xr = torch.addcmul(xf, fx, f_maa_k), torch.addcmul(xf, fx, f_maa_r)
    ff = torch.sigmoid(xr @ f_rec) * (torch.relu(xk @ f_key).square() @ f_val)
    return x + ff, xa, new_wkv, xf


def _all_layers(
    x: torch.Tensor, states: list[torch.Tensor], weights: list[list[torch.Tensor]], H: int, N: int, eps: float
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Every block for one token; ``states`` is (att_shift, wkv, ffn_shift) per layer, flattened. One call for
    the whole stack, so TorchScript runs the layer loop too."""
    new: list[torch.Tensor] = []
    for i in range(len(weights)):
        w = weights[i]
        x, att_shift, wkv, ffn_shift = _layer_step(
            x,
            states[3 * i],
            states[3 * i + 1],
            states[3 * i + 2],
            w[0],
            w[1],
            w[2],
            w[3],
            w[4],
            w[5],
            w[6],
            w[7],
            w[8],
            w[9],
            w[10],
            w[11],
            w[12],
            w[13],
            w[14],
            w[15],
            w[16],
            w[17],
            w[18],
            w[19],
            w[20],
            H,
            N,
            eps,
        )
        new.append(att_shift)
        new.append(wkv)
        new.append(ffn_shift)
    return x, new


@functools.cache
def _compiled_stack():
    """``_all_layers`` through TorchScript (it scripts ``_layer_step`` with it): ~9 % less time per token on
    CPU than the same operations from Python (the ~60 small operations per layer are per-call overhead next to
    the memory-bound products), the same results. Falls back to Python where scripting is unavailable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.script(_all_layers)
    except Exception:  # noqa: BLE001 - e.g. sources not shipped; the Python function computes the same
        return _all_layers


def _layer_weights(block) -> list[torch.Tensor]:
    """One block's weights laid out for :func:`_layer_step`, in the order of its arguments after the state."""
    att, ffn = block.att, block.ffn
    C, H, N = att.receptance.weight.shape[0], att.n_head, att.head_size
    maa = torch.stack([att.time_maa_w, att.time_maa_k, att.time_maa_v, att.time_maa_r, att.time_maa_g])
    R = att.time_maa_w2.shape[1]
    return [
        block.ln1.weight,
        block.ln1.bias,
        att.time_maa_x.reshape(C),
        att.time_maa_w1.reshape(C, 5, R)[:, _MIX_ORDER].reshape(C, 5 * R).contiguous(),
        maa.reshape(5, 1, C)[_MIX_ORDER].contiguous(),
        att.time_maa_w2[_MIX_ORDER].contiguous(),  # [5, R, C]
        # r, k, v, g projections as one batched product: [4, C_in, C_out]
        torch.stack(
            [att.receptance.weight.t(), att.key.weight.t(), att.value.weight.t(), att.gate.weight.t()]
        ).contiguous(),
        att.time_decay.reshape(C),
        att.time_decay_w1,
        att.time_decay_w2,
        att.time_faaaa.reshape(H, N).float(),
        att.ln_x.weight,
        att.ln_x.bias,
        att.output.weight.t().contiguous(),
        block.ln2.weight,
        block.ln2.bias,
        ffn.time_maa_k.reshape(C),
        ffn.time_maa_r.reshape(C),
        ffn.key.weight.t().contiguous(),
        ffn.receptance.weight.t().contiguous(),
        ffn.value.weight.t().contiguous(),
    ]


class RNN:
    """``step(tokens [B], state) -> (logits [B, V], state)`` with the weights of ``model``."""

    def __init__(self, model: RWKV6) -> None:
        cfg = model.config
        self.model = model
        self.emb = model.emb.weight
        self.ln0 = (model.blocks[0].ln0.weight, model.blocks[0].ln0.bias)
        self.weights = [_layer_weights(b) for b in model.blocks]
        self.C, self.H, self.N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.ln_out = (model.ln_out.weight, model.ln_out.bias)
        self.head = model.head.weight.t().contiguous()

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, state: list[LayerState]) -> tuple[torch.Tensor, list[LayerState]]:
        x = F.layer_norm(self.emb[tokens], (self.C,), *self.ln0)
        flat = [t for s in state for t in (s.att_shift.to(x.dtype), s.wkv, s.ffn_shift.to(x.dtype))]
        x, out = _compiled_stack()(x, flat, self.weights, self.H, self.N, GROUPNORM_EPS)
        new = [LayerState(att_shift=out[i], wkv=out[i + 1], ffn_shift=out[i + 2]) for i in range(0, len(out), 3)]
        ends = self.model.document_ends(tokens)
        if ends is not None and bool(ends.any()):  # reset_state_at_eos: a document ended, the next starts afresh
            new = [s.map(lambda t: t.masked_fill(ends.view(-1, *[1] * (t.dim() - 1)), 0.0)) for s in new]
        x = F.layer_norm(x, (x.shape[-1],), *self.ln_out)
        return (x @ self.head).float(), new
