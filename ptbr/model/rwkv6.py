"""RWKV-6 ("x060"), exactly as in RWKV-LM, with RWKV-LM's parameter names and initialisation.

Readable first: one module per sub-layer, each reading only its own parameters inside its own
``forward`` (so DeepSpeed ZeRO-3 can gather them per module). Every forward accepts a recurrent
state, which makes the same code serve training (full sequences, or long ones in segments that carry
the state: ``ptbr.model.segments``), chunked inference and one-token generation.

``reset_state_at_eos`` (off by default, as in RWKV-LM) makes every document of a packed sample
start from a zero state: after an end-of-document token the WKV state and both token-shift states
are zero, so a packed sample computes exactly what its documents would compute one by one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from ptbr.model.config import RWKV6Config
from ptbr.model.segments import Bptt, Reduction, sequence_loss
from ptbr.ops import wkv6

GROUPNORM_EPS = 1e-5 * 8**2  # RWKV-LM: 1e-5 * head_size_divisor**2


@dataclass
class LayerState:
    """Recurrent state of one block: last normalised input of each mixer, and the WKV state."""

    att_shift: torch.Tensor  # [B, C]
    wkv: torch.Tensor  # [B, H, N, N] float32
    ffn_shift: torch.Tensor  # [B, C]

    def map(self, fn) -> LayerState:
        """The same state with ``fn`` applied to each tensor (detach, reset, move)."""
        return LayerState(att_shift=fn(self.att_shift), wkv=fn(self.wkv), ffn_shift=fn(self.ffn_shift))


def token_shift(x: torch.Tensor, prev: torch.Tensor | None, reset: torch.Tensor | None = None) -> torch.Tensor:
    """``shift(x) - x``: the previous token (``prev`` before the first one, else zero) minus x; with
    ``reset`` [B, T] (document ends) the previous token is zero at the first token of a document."""
    if prev is None:
        shifted = F.pad(x, (0, 0, 1, -1))
    else:
        shifted = torch.cat([prev.unsqueeze(1).to(x.dtype), x[:, :-1]], dim=1)
    if reset is not None:
        shifted = shifted * F.pad(~reset[:, :-1], (1, 0), value=True)[..., None].to(x.dtype)
    return shifted - x


def last_token(x: torch.Tensor, reset: torch.Tensor | None) -> torch.Tensor:
    """The token-shift state leaving a sequence: its last token, or zero if that token ended a document."""
    if reset is None:
        return x[:, -1]
    return x[:, -1] * (~reset[:, -1:]).to(x.dtype)


def _layer_ratios(layer_id: int, n_layer: int) -> tuple[float, float]:
    ratio_0_to_1 = layer_id / (n_layer - 1) if n_layer > 1 else 0.0
    ratio_1_to_almost0 = 1.0 - layer_id / n_layer
    return ratio_0_to_1, ratio_1_to_almost0


class TimeMix(nn.Module):
    """RWKV-6 attention replacement: data-dependent token shift and decay, WKV6, gated output."""

    def __init__(self, cfg: RWKV6Config, layer_id: int):
        super().__init__()
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.n_head, self.head_size, self.mix_lora = H, N, cfg.mix_lora
        self.wkv_backend = "auto"
        r0, r1 = _layer_ratios(layer_id, cfg.n_layer)
        ddd = (torch.arange(C, dtype=torch.float32) / C).view(1, 1, C)
        n = torch.arange(C, dtype=torch.float32)

        self.time_maa_x = nn.Parameter(1.0 - ddd.pow(r1))
        self.time_maa_w = nn.Parameter(1.0 - ddd.pow(r1))
        self.time_maa_k = nn.Parameter(1.0 - ddd.pow(r1))
        self.time_maa_v = nn.Parameter(1.0 - (ddd.pow(r1) + 0.3 * r0))
        self.time_maa_r = nn.Parameter(1.0 - ddd.pow(0.5 * r1))
        self.time_maa_g = nn.Parameter(1.0 - ddd.pow(0.5 * r1))
        self.time_maa_w1 = nn.Parameter(torch.zeros(C, cfg.mix_lora * 5))
        self.time_maa_w2 = nn.Parameter(torch.empty(5, cfg.mix_lora, C).uniform_(-0.01, 0.01))

        decay_speed = -6 + 5 * (n / (C - 1)) ** (0.7 + 1.3 * r0)
        self.time_decay = nn.Parameter(decay_speed.view(1, 1, C))
        self.time_decay_w1 = nn.Parameter(torch.zeros(C, cfg.decay_lora))
        self.time_decay_w2 = nn.Parameter(torch.empty(cfg.decay_lora, C).uniform_(-0.01, 0.01))
        zigzag = ((n + 1) % 3 - 1) * 0.1
        self.time_faaaa = nn.Parameter((r0 * (1 - n / (C - 1)) + zigzag).view(H, N))

        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.gate = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=GROUPNORM_EPS)

    def forward(
        self,
        x: torch.Tensor,
        shift: torch.Tensor | None = None,
        wkv_state: torch.Tensor | None = None,
        reset: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        xx = token_shift(x, shift, reset)
        xxx = x + xx * self.time_maa_x
        xxx = torch.tanh(xxx @ self.time_maa_w1).view(B * T, 5, -1).transpose(0, 1)
        mw, mk, mv, mr, mg = torch.bmm(xxx, self.time_maa_w2).view(5, B, T, C).unbind(dim=0)
        xw = x + xx * (self.time_maa_w + mw)
        xk = x + xx * (self.time_maa_k + mk)
        xv = x + xx * (self.time_maa_v + mv)
        xr = x + xx * (self.time_maa_r + mr)
        xg = x + xx * (self.time_maa_g + mg)

        r = self.receptance(xr).view(B, T, H, N)
        k = self.key(xk).view(B, T, H, N)
        v = self.value(xv).view(B, T, H, N)
        g = F.silu(self.gate(xg))
        w = (self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2).view(B, T, H, N)

        y, new_state = wkv6(r, k, v, w, self.time_faaaa, state=wkv_state, backend=self.wkv_backend, reset=reset)
        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C)
        return self.output(y * g), new_state


class ChannelMix(nn.Module):
    """RWKV-6 feed-forward: token shift, squared-ReLU key, sigmoid receptance gate."""

    def __init__(self, cfg: RWKV6Config, layer_id: int):
        super().__init__()
        C = cfg.n_embd
        _, r1 = _layer_ratios(layer_id, cfg.n_layer)
        ddd = (torch.arange(C, dtype=torch.float32) / C).view(1, 1, C)
        self.time_maa_k = nn.Parameter(1.0 - ddd.pow(r1))
        self.time_maa_r = nn.Parameter(1.0 - ddd.pow(r1))
        self.key = nn.Linear(C, cfg.dim_ffn, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(cfg.dim_ffn, C, bias=False)

    def forward(
        self, x: torch.Tensor, shift: torch.Tensor | None = None, reset: torch.Tensor | None = None
    ) -> torch.Tensor:
        xx = token_shift(x, shift, reset)
        xk = x + xx * self.time_maa_k
        xr = x + xx * self.time_maa_r
        k = torch.relu(self.key(xk)) ** 2
        return torch.sigmoid(self.receptance(xr)) * self.value(k)


class Block(nn.Module):
    def __init__(self, cfg: RWKV6Config, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(cfg.n_embd)
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.att = TimeMix(cfg, layer_id)
        self.ffn = ChannelMix(cfg, layer_id)

    def forward(
        self, x: torch.Tensor, state: LayerState | None = None, reset: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, LayerState]:
        if self.layer_id == 0:
            x = self.ln0(x)
        xa = self.ln1(x)
        att_out, wkv_state = self.att(
            xa, None if state is None else state.att_shift, None if state is None else state.wkv, reset
        )
        x = x + att_out
        xf = self.ln2(x)
        x = x + self.ffn(xf, None if state is None else state.ffn_shift, reset)
        return x, LayerState(att_shift=last_token(xa, reset), wkv=wkv_state, ffn_shift=last_token(xf, reset))


class RWKV6(nn.Module):
    """The full language model: embedding, L blocks, final LayerNorm, output head (untied unless
    ``tie_embeddings``)."""

    def __init__(self, cfg: RWKV6Config, init_weights: bool = True):
        super().__init__()
        self.config = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)])
        self.ln_out = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.emb.weight  # one parameter (counted, optimised and saved once)
        self.gradient_checkpointing = False  # recompute each block in backward (training only)
        self.checkpoint_reentrant = False  # the reentrant recompute DeepSpeed ZeRO-3 needs (see _recomputed_block)
        if init_weights:
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """RWKV-LM ``generate_init_weight`` for the weight matrices (time_* are set in __init__)."""
        cfg = self.config
        nn.init.uniform_(self.emb.weight, -1e-4, 1e-4)
        if not cfg.tie_embeddings:  # tied: the matrix keeps the embedding's small uniform init
            gain = 0.5 * math.sqrt(cfg.vocab_size / cfg.n_embd) if cfg.vocab_size > cfg.n_embd else 0.5
            nn.init.orthogonal_(self.head.weight, gain=gain)
        for i, block in enumerate(self.blocks):
            att, ffn = block.att, block.ffn
            for lin in (att.receptance, att.value, ffn.key):
                nn.init.orthogonal_(lin.weight, gain=1.0)
            for lin in (att.key, att.gate):
                nn.init.orthogonal_(lin.weight, gain=0.1)
            for lin in (att.output, ffn.value, ffn.receptance):
                nn.init.zeros_(lin.weight)
            att.ln_x.weight.fill_(((1 + i) / cfg.n_layer) ** 0.7)

    def set_wkv_backend(self, backend: str) -> None:
        for block in self.blocks:
            block.att.wkv_backend = backend

    def forward(
        self,
        idx: torch.Tensor,
        state: list[LayerState] | None = None,
        return_state: bool = False,
        last_only: bool = False,
        *,
        targets: torch.Tensor | None = None,
        segment_len: int | None = None,
        bptt: Bptt = "full",
        l2wrap: bool = True,
        reduction: Reduction = "mean",
    ) -> torch.Tensor | tuple[torch.Tensor, list[LayerState]]:
        """Logits [B, T, V] (``last_only``: [B, 1, V], the head applied to the last position only, as a
        prompt prefill needs); with ``return_state`` also the state after the last token.

        With ``targets`` the language-model loss instead (``ptbr.model.segments.sequence_loss``: in
        segments of ``segment_len`` carrying the state, ``reduction="none"`` for per-token NLL). Training
        calls it this way, through the DeepSpeed engine, so that ZeRO-3 sees every segment's use of the
        parameters inside the engine's forward."""
        if targets is not None:
            return sequence_loss(
                self._run, idx, targets, segment_len=segment_len, bptt=bptt, l2wrap=l2wrap, reduction=reduction
            )
        logits, new_state = self._run(idx, state, last_only)
        return (logits, new_state) if return_state else logits

    def _run(
        self, idx: torch.Tensor, state: list[LayerState] | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, list[LayerState]]:
        reset = self.document_ends(idx)
        x = self.emb(idx)
        new_state = []
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            layer_state = None if state is None else state[i]
            if recompute and self.checkpoint_reentrant:
                x, layer_state = _recomputed_block(block, x, layer_state, reset)
            elif recompute:
                x, layer_state = torch.utils.checkpoint.checkpoint(block, x, layer_state, reset, use_reentrant=False)
            else:
                x, layer_state = block(x, layer_state, reset)
            new_state.append(layer_state)
        if last_only:
            x = x[:, -1:]
        return self.head(self.ln_out(x)), new_state

    def document_ends(self, idx: torch.Tensor) -> torch.Tensor | None:
        """Where the state resets (the end-of-document tokens), or None when documents share state."""
        cfg = self.config
        if not cfg.reset_state_at_eos:
            return None
        if cfg.eos_id is None:
            raise ValueError("model.reset_state_at_eos needs model.eos_id (training takes it from the dataset)")
        return idx == cfg.eos_id

    def zero_state(
        self, batch_size: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> list[LayerState]:
        cfg = self.config
        return [
            LayerState(
                att_shift=torch.zeros(batch_size, cfg.n_embd, device=device, dtype=dtype),
                wkv=torch.zeros(
                    batch_size, cfg.n_head, cfg.head_size, cfg.head_size, device=device, dtype=torch.float32
                ),
                ffn_shift=torch.zeros(batch_size, cfg.n_embd, device=device, dtype=dtype),
            )
            for _ in range(cfg.n_layer)
        ]


def _block_on_tensors(
    block: Block,
    x: torch.Tensor,
    att_shift: torch.Tensor | None,
    wkv: torch.Tensor | None,
    ffn_shift: torch.Tensor | None,
    reset: torch.Tensor | None,
) -> tuple[torch.Tensor, ...]:
    state = None if att_shift is None else LayerState(att_shift=att_shift, wkv=wkv, ffn_shift=ffn_shift)
    x, out = block(x, state, reset)
    return x, out.att_shift, out.wkv, out.ffn_shift


def _recomputed_block(
    block: Block, x: torch.Tensor, state: LayerState | None, reset: torch.Tensor | None
) -> tuple[torch.Tensor, LayerState]:
    """The block with its activations recomputed in the backward pass, reentrant checkpointing (for ZeRO-3).

    The recompute runs inside the checkpoint's own backward and is followed by a backward through the
    recomputed graph, so DeepSpeed ZeRO-3 gathers the weights again for it. (With torch's non-reentrant
    variant, the default elsewhere, the recompute starts after ZeRO-3 has gathered a sub-module's weights
    for its backward, and the recompute's own release leaves that backward with empty weights.) Each call
    is its own backward pass, so a block run several times in one step (segments) would report its
    gradients several times, which ZeRO 2/3 refuse: the training config rules that combination out.
    The state travels as plain tensors, the only inputs a reentrant checkpoint differentiates.
    """
    flat = (None, None, None) if state is None else (state.att_shift, state.wkv, state.ffn_shift)
    x, att_shift, wkv, ffn_shift = torch.utils.checkpoint.checkpoint(
        _block_on_tensors, block, x, *flat, reset, use_reentrant=True
    )
    return x, LayerState(att_shift=att_shift, wkv=wkv, ffn_shift=ffn_shift)


def count_parameters(cfg: RWKV6Config) -> int:
    """Exact parameter count, computed on the meta device (no weights are allocated)."""
    with torch.device("meta"):
        model = RWKV6(cfg, init_weights=False)
    return sum(p.numel() for p in model.parameters())
