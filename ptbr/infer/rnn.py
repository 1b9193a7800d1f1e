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


class _Layer:
    def __init__(self, block, eps: float) -> None:
        att, ffn = block.att, block.ffn
        C = att.receptance.weight.shape[0]
        self.C, self.H, self.N = C, att.n_head, att.head_size
        self.ln0 = (block.ln0.weight, block.ln0.bias) if hasattr(block, "ln0") else None
        self.ln1 = (block.ln1.weight, block.ln1.bias)
        self.ln2 = (block.ln2.weight, block.ln2.bias)
        self.maa_x = att.time_maa_x.reshape(C)
        self.maa = torch.stack([att.time_maa_w, att.time_maa_k, att.time_maa_v, att.time_maa_r,
                                att.time_maa_g]).reshape(5, C)
        self.maa_w1 = att.time_maa_w1  # [C, 5 * R]
        self.maa_w2 = att.time_maa_w2  # [5, R, C]
        self.decay = att.time_decay.reshape(C)
        self.decay_w1, self.decay_w2 = att.time_decay_w1, att.time_decay_w2
        self.u = att.time_faaaa.reshape(self.H, self.N, 1)
        # r, k, v, g projections as one batched product: [4, C_in, C_out]
        self.rkvg = torch.stack([att.receptance.weight.t(), att.key.weight.t(), att.value.weight.t(),
                                 att.gate.weight.t()]).contiguous()
        self.out = att.output.weight.t().contiguous()
        self.ln_x = (att.ln_x.weight, att.ln_x.bias)
        self.eps = eps
        self.f_maa = torch.stack([ffn.time_maa_k.reshape(C), ffn.time_maa_r.reshape(C)])
        self.f_key = ffn.key.weight.t().contiguous()
        self.f_rec = ffn.receptance.weight.t().contiguous()
        self.f_val = ffn.value.weight.t().contiguous()

    def step(self, x: torch.Tensor, s: LayerState) -> tuple[torch.Tensor, LayerState]:
        """x: [B, C]."""
        B, C, H, N = x.shape[0], self.C, self.H, self.N
        if self.ln0 is not None:
            x = F.layer_norm(x, (C,), *self.ln0)
        xa = F.layer_norm(x, (C,), *self.ln1)
        sx = s.att_shift.to(xa.dtype) - xa
        m = torch.tanh((xa + sx * self.maa_x) @ self.maa_w1).view(B, 5, -1).transpose(0, 1)  # [5, B, R]
        mix = torch.bmm(m, self.maa_w2) + self.maa.unsqueeze(1)  # [5, B, C]
        xs = xa.unsqueeze(0) + sx.unsqueeze(0) * mix  # xw, xk, xv, xr, xg
        r, k, v, g = torch.bmm(xs[[3, 1, 2, 4]], self.rkvg).unbind(0)
        w = torch.exp(-torch.exp(self.decay + torch.tanh(xs[0] @ self.decay_w1) @ self.decay_w2))
        r, k, v, w = (t.float().view(B, H, N) for t in (r, k, v, w))
        kv = k.unsqueeze(-1) * v.unsqueeze(-2)  # [B, H, N, N]
        y = (r.unsqueeze(-2) @ (self.u * kv + s.wkv)).view(B, C)
        wkv = w.unsqueeze(-1) * s.wkv + kv
        y = F.group_norm(y.to(x.dtype), H, *self.ln_x, eps=self.eps) * F.silu(g)
        x = x + y @ self.out
        xf = F.layer_norm(x, (C,), *self.ln2)
        fx = s.ffn_shift.to(xf.dtype) - xf
        xk, xr = xf + fx * self.f_maa[0], xf + fx * self.f_maa[1]
        ff = torch.sigmoid(xr @ self.f_rec) * (torch.relu(xk @ self.f_key) ** 2 @ self.f_val)
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
        x = F.layer_norm(x, (x.shape[-1],), *self.ln_out)
        return (x @ self.head).float(), new
