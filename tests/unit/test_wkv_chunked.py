"""Chunked torch WKV6 against the sequential reference: values and gradients."""

from __future__ import annotations

import pytest
import torch

from ptbr.ops import wkv6
from ptbr.ops.chunked import wkv6_chunked
from tests.helpers.wkv import make_inputs, rel_rms, run_with_grads

LENGTHS = [1, 7, 64, 100, 257]


def ref(**kw):
    return wkv6(**kw, backend="reference")


def chunked(**kw):
    return wkv6(**kw, backend="torch")


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("with_state", [False, True])
def test_float64_agrees_to_rounding(T: int, with_state: bool) -> None:
    """In float64 the chunked algorithm must equal the recurrence to ~1e-12: it is exact math."""
    inputs = make_inputs(2, T, 2, 8, with_state=with_state, dtype=torch.float64)
    if inputs["state"] is not None:
        inputs["state"] = inputs["state"].double()
    y0, s0, g0 = run_with_grads(ref, inputs)
    y1, s1, g1 = run_with_grads(chunked, inputs)
    assert rel_rms(y1, y0) < 1e-12 and rel_rms(s1, s0) < 1e-12
    for name in g0:
        assert rel_rms(g1[name], g0[name]) < 1e-10, name


@pytest.mark.parametrize("T", LENGTHS)
def test_float32_values_and_grads_extreme_decay(T: int) -> None:
    inputs = make_inputs(2, T, 2, 16, w_lo=-12.0, w_hi=5.0)
    y0, s0, g0 = run_with_grads(ref, inputs)
    y1, s1, g1 = run_with_grads(chunked, inputs)
    assert y1.dtype == torch.float32 and s1.dtype == torch.float32
    assert rel_rms(y1, y0) < 1e-5
    assert rel_rms(s1, s0) < 1e-5
    assert set(g1) == {"r", "k", "v", "w", "u", "state"}
    for name in g0:
        assert torch.isfinite(g1[name]).all(), name
        assert rel_rms(g1[name], g0[name]) < 1e-4, name


@pytest.mark.parametrize("T", [7, 100])
def test_bfloat16_inputs(T: int) -> None:
    """bf16 in, bf16 y out; both backends accumulate in fp32, so they agree to bf16 rounding."""
    inputs = make_inputs(2, T, 2, 16, dtype=torch.bfloat16)
    y0, s0, g0 = run_with_grads(ref, inputs)
    y1, s1, g1 = run_with_grads(chunked, inputs)
    assert y1.dtype == torch.bfloat16 and s1.dtype == torch.float32
    assert rel_rms(y1, y0) < 1e-2
    assert rel_rms(s1, s0) < 1e-5
    for name in g0:
        assert g1[name].dtype == inputs[name].dtype
        assert rel_rms(g1[name], g0[name]) < 2e-2, name


@pytest.mark.parametrize("w_raw", [-30.0, 5.0, 60.0, 200.0])
def test_saturated_decays_stay_finite(w_raw: float) -> None:
    """Decay 1 (w_raw << 0) and decay 0 even past exp overflow (w_raw = 200) give finite output."""
    inputs = make_inputs(1, 40, 2, 8)
    inputs["w"] = torch.full_like(inputs["w"], w_raw)
    y0, s0 = ref(**inputs)
    y1, s1, grads = run_with_grads(chunked, inputs)
    assert torch.isfinite(y1).all() and torch.isfinite(s1).all()
    assert all(torch.isfinite(g).all() for g in grads.values())
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s1, s0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk", [1, 4, 16, 32])
def test_chunk_size_does_not_change_result(chunk: int) -> None:
    inputs = make_inputs(1, 37, 2, 8)
    y0, s0 = ref(**inputs)
    y1, s1 = wkv6_chunked(**inputs, chunk_size=chunk)
    assert rel_rms(y1, y0) < 1e-5 and rel_rms(s1, s0) < 1e-5


def test_state_carries_across_calls() -> None:
    """Two halves with the carried state equal one pass: the basis of chunked inference."""
    inputs = make_inputs(2, 50, 2, 8)
    y, s = chunked(**inputs)
    first = {k: (v[:, :23] if k in "rkvw" else v) for k, v in inputs.items()}
    y_a, s_a = chunked(**first)
    second = {k: (v[:, 23:] if k in "rkvw" else v) for k, v in inputs.items()}
    second["state"] = s_a
    y_b, s_b = chunked(**second)
    assert rel_rms(torch.cat([y_a, y_b], 1), y) < 1e-5
    assert rel_rms(s_b, s) < 1e-5


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d.update(k=d["k"][:, :-1]), "k must have r's shape"),
        (lambda d: d.update(u=d["u"].reshape(-1)), "u must have shape [H, N]"),
        (lambda d: d.update(state=d["state"].double()), "state must be float32"),
        (lambda d: d.update(state=d["state"][:, :1]), "state must have shape"),
        (lambda d: d.update(r=d["r"][0]), "r must have shape [B, T, H, N]"),
        (lambda d: d.update(v=d["v"].long()), "v must be float16, bfloat16, float32 or float64"),
        (lambda d: d.update(w=d["w"].to("meta")), "w is on meta"),
    ],
)
def test_bad_inputs_raise_value_error_naming_argument(change, needle: str) -> None:
    inputs = make_inputs(1, 5, 2, 8)
    change(inputs)
    with pytest.raises(ValueError) as info:
        wkv6(**inputs, backend="torch")
    assert needle in str(info.value)


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        wkv6(**make_inputs(1, 2, 1, 4), backend="cuda")
