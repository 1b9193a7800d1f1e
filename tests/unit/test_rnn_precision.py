"""The one-token RNN step keeps the decay in float32 when the weights are bfloat16 (as on a GPU).

A trained RWKV-6 has many channels with w_raw below -6.2, where the decay exp(-exp(w_raw)) lies within
2^-9 of 1: rounded to bfloat16 it becomes exactly 1.0 (the channel never forgets), and generation runs
another model than training and prefill, which exponentiate in float32.
"""

from __future__ import annotations

import torch

from ptbr.infer.rnn import RNN, decay_factor
from ptbr.model import RWKV6, RWKV6Config

SLOW_DECAY = -6.5  # exp(-exp(-6.5)) = 0.99850: 1.0 in bfloat16


def test_decay_of_bf16_weights_is_computed_in_fp32():
    C = 64
    xw = torch.randn(3, C).bfloat16()
    w1 = torch.zeros(C, 8, dtype=torch.bfloat16)  # LoRA off: w_raw is the bf16 time_decay itself
    w2 = torch.randn(8, C).bfloat16()
    decay = torch.linspace(-9.0, 1.0, C).bfloat16()
    got = decay_factor(xw, w1, w2, decay)
    assert got.dtype == torch.float32
    want = torch.exp(-torch.exp(decay.double())).expand(3, C)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-7)
    assert bool((got[:, decay < -6.3] < 1.0).all())  # in bf16 arithmetic these were all exactly 1.0


def _model_with_slow_decay() -> RWKV6:
    cfg = RWKV6Config(n_layer=2, n_embd=64, head_size=16, vocab_size=128, mix_lora=8, decay_lora=8)
    torch.manual_seed(0)
    model = RWKV6(cfg)
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised projections get values, so every path carries signal
            if p.dim() == 2 and float(p.abs().max()) == 0.0:
                p.normal_(0.0, 0.05)
        for block in model.blocks:
            block.att.time_decay.fill_(SLOW_DECAY)
    return model.eval()


def test_bf16_rnn_state_follows_the_fp32_reference_to_input_rounding():
    """200 steps through a model whose every channel decays at 0.9985 per token. The bf16 model's WKV state
    equals that of the fp32 model with the same (bf16-rounded) weights up to the rounding of its bf16
    activations (~1 %); with the decay rounded to 1.0 the oldest tokens would weigh 1/0.9985^200 = 1.35x."""
    bf16 = _model_with_slow_decay().to(torch.bfloat16)
    ref = _model_with_slow_decay().to(torch.bfloat16).float()  # the same weights, computed in fp32
    tokens = torch.randint(2, 128, (200,), generator=torch.Generator().manual_seed(1))
    states = {}
    for name, model in (("bf16", bf16), ("fp32", ref)):
        rnn, state = RNN(model), model.zero_state(1, dtype=next(model.parameters()).dtype)
        for t in tokens:
            _, state = rnn.step(t.view(1), state)
        states[name] = state
    for got, want in zip(states["bf16"], states["fp32"]):
        rel = float((got.wkv - want.wkv).norm() / want.wkv.norm())
        assert rel < 0.03, rel
