"""RWKV-6 model: shapes, initialisation, recurrent state, parity with the `rwkv` pip runtime."""

from __future__ import annotations

import os

import pytest
import torch

from ptbr.model import RWKV6, RWKV6Config
from tests.helpers.model import randomize_

TINY = RWKV6Config(n_layer=3, n_embd=64, head_size=16, vocab_size=97, mix_lora=8, decay_lora=8)


def test_forward_shapes_and_names() -> None:
    model = RWKV6(TINY)
    idx = torch.randint(0, TINY.vocab_size, (2, 11))
    assert model(idx).shape == (2, 11, TINY.vocab_size)
    names = set(dict(model.named_parameters()))
    for expected in [
        "emb.weight",
        "blocks.0.ln0.weight",
        "blocks.1.ln1.bias",
        "blocks.2.ln2.weight",
        "blocks.0.att.time_maa_x",
        "blocks.0.att.time_maa_w1",
        "blocks.0.att.time_maa_w2",
        "blocks.0.att.time_decay",
        "blocks.0.att.time_decay_w1",
        "blocks.0.att.time_faaaa",
        "blocks.0.att.receptance.weight",
        "blocks.0.att.gate.weight",
        "blocks.0.att.ln_x.weight",
        "blocks.0.ffn.time_maa_k",
        "blocks.0.ffn.key.weight",
        "ln_out.weight",
        "head.weight",
    ]:
        assert expected in names
    assert "blocks.1.ln0.weight" not in names
    assert model.blocks[0].att.time_maa_w2.shape == (5, 8, 64)
    assert model.blocks[0].att.time_faaaa.shape == (4, 16)


def test_rwkv_lm_initialisation() -> None:
    cfg = RWKV6Config(n_layer=4, n_embd=128, vocab_size=300)
    model = RWKV6(cfg)
    C, L = 128, 4
    att2 = model.blocks[2].att
    r0, r1 = 2 / (L - 1), 1 - 2 / L
    ddd = torch.arange(C) / C
    torch.testing.assert_close(att2.time_maa_v.flatten(), 1 - (ddd**r1 + 0.3 * r0))
    torch.testing.assert_close(att2.time_maa_g.flatten(), 1 - ddd ** (0.5 * r1))
    n = torch.arange(C, dtype=torch.float32)
    torch.testing.assert_close(att2.time_decay.flatten(), -6 + 5 * (n / (C - 1)) ** (0.7 + 1.3 * r0))
    torch.testing.assert_close(att2.time_faaaa.flatten(), r0 * (1 - n / (C - 1)) + ((n + 1) % 3 - 1) * 0.1)
    assert att2.time_maa_w1.abs().max() == 0 and att2.time_decay_w1.abs().max() == 0
    assert 0 < att2.time_maa_w2.abs().max() <= 0.01
    torch.testing.assert_close(att2.ln_x.weight, torch.full((C,), (3 / 4) ** 0.7))
    assert att2.ln_x.eps == pytest.approx(6.4e-4)
    for zero in (att2.output, model.blocks[2].ffn.value, model.blocks[2].ffn.receptance):
        assert zero.weight.abs().max() == 0
    w = att2.key.weight  # orthogonal, gain 0.1
    torch.testing.assert_close(w @ w.T, 0.01 * torch.eye(C), atol=1e-5, rtol=0)
    w = att2.receptance.weight
    torch.testing.assert_close(w @ w.T, torch.eye(C), atol=1e-5, rtol=0)
    head = model.head.weight  # [V, C], orthogonal columns with gain 0.5 sqrt(V/C)
    gain = 0.5 * (300 / 128) ** 0.5
    torch.testing.assert_close(head.T @ head, gain**2 * torch.eye(C), atol=1e-4, rtol=0)
    assert model.emb.weight.abs().max() <= 1e-4


def test_single_layer_model_initialises() -> None:
    model = RWKV6(RWKV6Config(n_layer=1, n_embd=64, head_size=32, vocab_size=50))
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]]))).all()


@pytest.mark.parametrize("pieces", [[5, 6, 9], [1] * 8 + [12], [20]])
def test_piecewise_with_state_equals_full_sequence(pieces: list[int]) -> None:
    model = randomize_(RWKV6(TINY)).eval()
    idx = torch.randint(0, TINY.vocab_size, (2, sum(pieces)))
    with torch.no_grad():
        full = model(idx)
        state, outs, start = None, [], 0
        for n in pieces:
            logits, state = model(idx[:, start : start + n], state=state, return_state=True)
            outs.append(logits)
            start += n
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-4, atol=1e-4)


def test_zero_state_equals_no_state() -> None:
    model = randomize_(RWKV6(TINY)).eval()
    idx = torch.randint(0, TINY.vocab_size, (3, 9))
    with torch.no_grad():
        a = model(idx)
        b, _ = model(idx, state=model.zero_state(3), return_state=True)
    torch.testing.assert_close(a, b)


def test_backward_reaches_every_parameter() -> None:
    model = randomize_(RWKV6(TINY))
    idx = torch.randint(0, TINY.vocab_size, (2, 19))
    loss = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.roll(-1, 1).flatten())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_parity_with_rwkv_pip_runtime(tmp_path) -> None:
    """Every parameter randomised, saved as a RWKV .pth, loaded by the `rwkv` package (v6)."""
    os.environ.setdefault("RWKV_JIT_ON", "0")
    os.environ["RWKV_CUDA_ON"] = "0"
    from rwkv.model import RWKV as RWKVRuntime

    cfg = RWKV6Config(n_layer=2, n_embd=128, head_size=64, vocab_size=211)
    model = randomize_(RWKV6(cfg), seed=3).eval()
    path = tmp_path / "model.pth"
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, path)
    runtime = RWKVRuntime(model=str(path), strategy="cpu fp32")
    assert runtime.version == 6.0

    tokens = torch.randint(0, cfg.vocab_size, (23,)).tolist()
    with torch.no_grad():
        ours = model(torch.tensor([tokens]))[0]
    theirs, state = runtime.forward(tokens, None, full_output=True)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    # one more token through both recurrent states
    with torch.no_grad():
        _, our_state = model(torch.tensor([tokens]), return_state=True)
        ours_next = model(torch.tensor([[5]]), state=our_state, return_state=True)[0][0, -1]
    theirs_next, _ = runtime.forward([5], state)
    torch.testing.assert_close(ours_next, theirs_next, rtol=0, atol=1e-4)
