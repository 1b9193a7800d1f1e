"""One-token RWKV-6 steps for generation: the recurrence itself, memory constant in the sequence length.

The model's ``forward`` serves training and prompt prefill (chunked WKV over many tokens at once);
for one token at a time that machinery is pure overhead. :class:`RNN` holds the same weights laid out
for matrix-vector products (the four time-mix projections stacked, the five token-shift LoRAs fused)
and runs the x060 recurrence directly. Its state is the model's ``LayerState`` list, so a prompt
ingested by ``forward(..., return_state=True)`` continues here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ptbr.model.rwkv6 import GROUPNORM_EPS, RWKV6, LayerState

# RWKV-LM computes the five token-shift mixes in the order w, k, v, r, g; here they are kept in the order
# r, k, v, g, w so that the first four are one contiguous slice, the input of the stacked projections.
_MIX_ORDER = [3, 1, 2, 4, 0]


class _Layer:
    def __init__(self, block, eps: float) -> None:
        att, ffn = block.att, block.ffn
        C = att.receptance.weight.shape[0]
        self.C, self.H, self.N = C, att.n_head, att.head_size
        self.ln0 = (block.ln0.weight, block.ln0.bias) if hasattr(block, "ln0") else None
        self.ln1 = (block.ln1.weight, block.ln1.bias)
        self.ln2 = (block.ln2.weight, block.ln2.bias)
        self.maa_x = att.time_maa_x.reshape(C)
        maa = torch.stack([att.time_maa_w, att.time_maa_k, att.time_maa_v, att.time_maa_r, att.time_maa_g])
        self.maa = maa.reshape(5, 1, C)[_MIX_ORDER].contiguous()
        R = att.time_maa_w2.shape[1]
        self.maa_w1 = att.time_maa_w1.reshape(C, 5, R)[:, _MIX_ORDER].reshape(C, 5 * R).contiguous()
        self.maa_w2 = att.time_maa_w2[_MIX_ORDER].contiguous()  # [5, R, C]
        self.decay = att.time_decay.reshape(C)
        self.decay_w1, self.decay_w2 = att.time_decay_w1, att.time_decay_w2
        self.u = att.time_faaaa.reshape(self.H, self.N)
        # r, k, v, g projections as one batched product: [4, C_in, C_out]
        self.rkvg = torch.stack([att.receptance.weight.t(), att.key.weight.t(), att.value.weight.t(),
                                 att.gate.weight.t()]).contiguous()
        self.out = att.output.weight.t().contiguous()
        self.ln_x = (att.ln_x.weight, att.ln_x.bias)
        self.eps = eps
        self.f_maa_k, self.f_maa_r = ffn.time_maa_k.reshape(C), ffn.time_maa_r.reshape(C)
        self.f_key = ffn.key.weight.t().contiguous()
        self.f_rec = ffn.receptance.weight.t().contiguous()
        self.f_val = ffn.value.weight.t().contiguous()

    def step(self, x: torch.Tensor, s: LayerState) -> tuple[torch.Tensor, LayerState]:
        """x: [B, C]. Few, fused operations: at batch 1 the matrix-vector products are memory-bound and
        everything else is per-operation overhead."""
        B, C, H, N = x.shape[0], self.C, self.H, self.N
        if self.ln0 is not None:
            x = F.layer_norm(x, (C,), *self.ln0)
        xa = F.layer_norm(x, (C,), *self.ln1)
        sx = s.att_shift.to(xa.dtype) - xa
        m = torch.tanh(torch.addcmul(xa, sx, self.maa_x) @ self.maa_w1).view(B, 5, -1).transpose(0, 1)  # [5, B, R]
        xs = torch.addcmul(xa, sx, torch.baddbmm(self.maa, m, self.maa_w2))  # xr, xk, xv, xg, xw: [5, B, C]
        r, k, v, g = torch.bmm(xs[:4], self.rkvg).unbind(0)
        w = torch.exp(-torch.exp(torch.tanh(xs[4] @ self.decay_w1) @ self.decay_w2 + self.decay))
        r, k, v, w = (t.float().view(B, H, N) for t in (r, k, v, w))
        # y = r (S + diag(u) kᵀv) = r S + (r·u·k) v, without forming u kᵀv
        y = torch.addcmul((r.unsqueeze(-2) @ s.wkv).squeeze(-2), (r * self.u * k).sum(-1, keepdim=True), v)
        wkv = torch.addcmul(k.unsqueeze(-1) * v.unsqueeze(-2), w.unsqueeze(-1), s.wkv)
        y = F.group_norm(y.view(B, C).to(x.dtype), H, *self.ln_x, eps=self.eps) * F.silu(g)
        x = torch.addmm(x, y, self.out)
        xf = F.layer_norm(x, (C,), *self.ln2)
        fx = s.ffn_shift.to(xf.dtype) - xf
        xk, xr = torch.addcmul(xf, fx, self.f_maa_k), torch.addcmul(xf, fx, self.f_maa_r)
        ff = torch.sigmoid(xr @ self.f_rec) * (torch.relu(xk @ self.f_key).square() @ self.f_val)
        return x + ff, LayerState(att_shift=xa, wkv=wkv, ffn_shift=xf)


class RNN:
    """``step(tokens [B], state) -> (logits [B, V], state)`` with the weights of ``model``."""

    def __init__(self, model: RWKV6) -> None:
        self.model = model
        self.emb = model.emb.weight
        self.layers = [_Layer(b, GROUPNORM_EPS) for b in model.blocks]
        self.ln_out = (model.ln_out.weight, model.ln_out.bias)
        self.head = model.head.weight.t().contiguous()

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, state: list[LayerState]) -> tuple[torch.Tensor, list[LayerState]]:
        x = self.emb[tokens]
        new = []
        for layer, s in zip(self.layers, state):
            x, s = layer.step(x, s)
            new.append(s)
        ends = self.model.document_ends(tokens)
        if ends is not None and bool(ends.any()):  # reset_state_at_eos: a document ended, the next starts afresh
            new = [LayerState(**{k: t.masked_fill(ends.view(-1, *[1] * (t.dim() - 1)), 0.0)
                                 for k, t in vars(s).items()}) for s in new]
        x = F.layer_norm(x, (x.shape[-1],), *self.ln_out)
        return (x @ self.head).float(), new
