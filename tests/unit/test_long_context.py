"""Long context: the carried state is exact (values and gradients, through WKV and token shift),
documents of a packed sample can start from a zero state, and a long sample trained in segments
gives the loss and gradients of one pass over it."""

from __future__ import annotations

import pytest
import torch

from ptbr.model import RWKV6, RWKV6Config
from ptbr.model.segments import sequence_loss
from ptbr.ops import wkv6
from tests.helpers.model import randomize_
from tests.helpers.wkv import make_inputs, rel_rms, run_with_grads

EOS = 0


TINY = RWKV6Config(n_layer=3, n_embd=64, head_size=16, vocab_size=97, mix_lora=8, decay_lora=8)


TINY_RESET = TINY.model_copy(update={"reset_state_at_eos": True, "eos_id": EOS})


def packed_documents(lengths: list[int], B: int = 1, seed: int = 0) -> torch.Tensor:
    """Token ids [B, sum(lengths)]: documents of the given lengths, each ending with EOS."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(B):
        docs = [
            torch.cat([torch.randint(1, TINY.vocab_size, (n - 1,), generator=g), torch.tensor([EOS])]) for n in lengths
        ]
        rows.append(torch.cat(docs))
    return torch.stack(rows)


def grads_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(a: dict, b: dict, tol: float) -> None:
    assert set(a) == set(b)
    for name in a:
        assert rel_rms(a[name], b[name]) < tol, (name, rel_rms(a[name], b[name]))


# ------------------------------------------------------------------------- 1. initial-state gradient
@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_gradient_across_a_segment_boundary(backend: str, dtype: torch.dtype) -> None:
    """Two calls carrying the state (bf16 inputs, fp32 state) have the values and gradients of one call,
    the gradient reaching the first call's inputs through the carried state."""
    inputs = make_inputs(2, 75, 2, 16, dtype=dtype, seed=21)
    cut = 41  # neither call a multiple of the chunk size

    def two_calls(r, k, v, w, u, state):
        y_a, s_a = wkv6(r[:, :cut], k[:, :cut], v[:, :cut], w[:, :cut], u, state=state, backend=backend)
        y_b, s_b = wkv6(r[:, cut:], k[:, cut:], v[:, cut:], w[:, cut:], u, state=s_a, backend=backend)
        return torch.cat([y_a, y_b], 1), s_b

    one = run_with_grads(lambda **kw: wkv6(**kw, backend="reference"), {n: x.double() for n, x in inputs.items()})
    two = run_with_grads(two_calls, inputs)
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: y is rounded to 8 bits in both calls
    assert rel_rms(two[0], one[0]) < tol and rel_rms(two[1], one[1]) < 1e-5
    for name in one[2]:
        assert rel_rms(two[2][name], one[2][name]) < tol, (name, rel_rms(two[2][name], one[2][name]))


def test_model_state_gradient_reaches_the_previous_segment() -> None:
    """Through the whole model (WKV and both token-shift states, every layer): the gradient of a loss on
    the second segment with respect to the first segment's outputs and parameters, computed through the
    carried state, equals that of one pass."""
    model = randomize_(RWKV6(TINY)).double()
    model.set_wkv_backend("torch")
    idx = torch.randint(0, TINY.vocab_size, (2, 50))
    weight = torch.randn(2, 50, TINY.vocab_size, dtype=torch.float64)

    model.zero_grad()
    (model(idx) * weight).sum().backward()
    one = grads_of(model)

    model.zero_grad()
    logits_a, state = model(idx[:, :23], return_state=True)
    logits_b = model(idx[:, 23:], state=state)
    (torch.cat([logits_a, logits_b], 1) * weight).sum().backward()
    assert_same_grads(grads_of(model), one, 1e-10)

    # and the carried state itself is differentiable: d(loss of segment 2)/d(state) is not zero
    state = [s.map(lambda t: t.detach().requires_grad_(True)) for s in state]
    (model(idx[:, 23:], state=state) * weight[:, 23:]).sum().backward()
    for s in state:
        assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in vars(s).values())


# ------------------------------------------------------------------------- 2. document-boundary reset
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_reset_matches_the_reference_and_separate_documents(backend: str) -> None:
    inputs = make_inputs(2, 70, 2, 16, seed=3)
    reset = torch.rand(2, 70, generator=torch.Generator().manual_seed(1)) < 0.08
    reset[0, 69] = reset[1, 0] = True  # a reset at the last step (final state 0) and at the first
    reset[0, 30:32] = True  # an empty document between two ends
    ref = run_with_grads(
        lambda **kw: wkv6(**kw, backend="reference", reset=reset), {n: x.double() for n, x in inputs.items()}
    )
    got = run_with_grads(lambda **kw: wkv6(**kw, backend=backend, reset=reset), inputs)
    assert got[1][0].abs().max() == 0  # the state after a reset step is exactly zero
    assert rel_rms(got[0], ref[0]) < 1e-6
    for name in ref[2]:
        assert rel_rms(got[2][name], ref[2][name]) < 1e-6, name
    # the decay of a reset step does not matter: its gradient is exactly zero
    assert got[2]["w"][reset].abs().max() == 0

    # row 0, document by document (each from a zero state, except the first from the initial state)
    ends = [int(t) + 1 for t in reset[0].nonzero()]
    y_full = ref[0][0:1]
    start, state = 0, inputs["state"][0:1].double()
    for end in ends:
        part = {n: inputs[n][0:1, start:end].double() for n in "rkvw"}
        y, _ = wkv6(**part, u=inputs["u"].double(), state=state, backend="reference")
        assert (y - y_full[:, start:end]).abs().max() == 0
        start, state = end, None


def test_model_packed_sample_equals_its_documents_run_separately() -> None:
    """Logits and every parameter gradient of a packed sample with reset_state_at_eos are those of its
    documents, each run alone from a zero state (the first token after an EOS sees no earlier token)."""
    lengths = [7, 20, 1, 13, 9]  # an EOS-only document too
    idx = packed_documents(lengths, seed=5)
    model = randomize_(RWKV6(TINY_RESET)).double()
    model.set_wkv_backend("torch")
    weight = torch.randn(1, idx.shape[1], TINY.vocab_size, dtype=torch.float64)

    model.zero_grad()
    packed = model(idx)
    (packed * weight).sum().backward()
    g_packed = grads_of(model)

    model.zero_grad()
    start, outs = 0, []
    for n in lengths:
        outs.append(model(idx[:, start : start + n]))
        start += n
    separate = torch.cat(outs, 1)
    (separate * weight).sum().backward()
    torch.testing.assert_close(packed, separate, rtol=1e-10, atol=1e-10)
    assert_same_grads(grads_of(model), g_packed, 1e-10)

    # without the option the documents do see each other
    plain = randomize_(RWKV6(TINY)).double()
    plain.set_wkv_backend("torch")
    assert (plain(idx) - separate).abs().max() > 1e-3


def test_reset_carries_into_the_next_segment() -> None:
    """A document ending on a segment's last token: the next segment starts from a zero state."""
    idx = packed_documents([12, 17], seed=6)
    model = randomize_(RWKV6(TINY_RESET)).eval()
    with torch.no_grad():
        _, state = model(idx[:, :12], return_state=True)
        assert all(float(t.abs().max()) == 0 for s in state for t in vars(s).values())
        torch.testing.assert_close(model(idx[:, 12:], state=state), model(idx[:, 12:]))


def test_reset_needs_an_eos_id() -> None:
    model = RWKV6(TINY.model_copy(update={"reset_state_at_eos": True}))
    with pytest.raises(ValueError, match="eos_id"):
        model(torch.tensor([[1, 2]]))


# ------------------------------------------------------------------------- 3. segments in training
def loss_and_grads(model: RWKV6, idx: torch.Tensor, **kw) -> tuple[float, dict]:
    model.zero_grad()
    loss = model(idx[:, :-1], targets=idx[:, 1:], **kw)
    loss.backward()
    return float(loss.detach()), grads_of(model)


@pytest.mark.parametrize("cfg", [TINY, TINY_RESET], ids=["plain", "reset_at_eos"])
@pytest.mark.parametrize("segment_len", [16, 23])  # 23: a shorter last segment
def test_segments_give_the_loss_and_gradients_of_one_pass(cfg: RWKV6Config, segment_len: int) -> None:
    model = randomize_(RWKV6(cfg)).train()
    model.set_wkv_backend("torch")
    idx = packed_documents([30, 11, 24], B=2, seed=7)  # L = 64
    loss_one, g_one = loss_and_grads(model, idx)
    loss_seg, g_seg = loss_and_grads(model, idx, segment_len=segment_len)
    assert loss_seg == pytest.approx(loss_one, rel=1e-6)
    assert_same_grads(g_seg, g_one, 2e-5)

    model.gradient_checkpointing = True  # block recompute nested inside segment recompute
    loss_ck, g_ck = loss_and_grads(model, idx, segment_len=segment_len)
    assert loss_ck == pytest.approx(loss_one, rel=1e-6)
    assert_same_grads(g_ck, g_one, 2e-5)


def test_truncated_bptt_keeps_the_loss_but_not_the_gradient() -> None:
    model = randomize_(RWKV6(TINY)).train()
    idx = torch.randint(0, TINY.vocab_size, (2, 49))
    loss_one, g_one = loss_and_grads(model, idx)
    loss_tr, g_tr = loss_and_grads(model, idx, segment_len=16, bptt="truncated")
    assert loss_tr == pytest.approx(loss_one, rel=1e-6)
    assert max(rel_rms(g_tr[n], g_one[n]) for n in g_one) > 1e-3  # the cross-segment gradient is gone


def test_per_token_nll_in_segments_equals_one_pass() -> None:
    model = randomize_(RWKV6(TINY)).eval()
    idx = torch.randint(0, TINY.vocab_size, (3, 41))
    with torch.no_grad():
        one = model(idx[:, :-1], targets=idx[:, 1:], reduction="none")
        seg = model(idx[:, :-1], targets=idx[:, 1:], segment_len=9, reduction="none")
    assert one.shape == (3, 40)
    torch.testing.assert_close(seg, one, rtol=1e-5, atol=1e-5)


def test_sequence_loss_rejects_an_unknown_bptt() -> None:
    with pytest.raises(ValueError, match="bptt"):
        sequence_loss(
            lambda i, s: (None, None),
            torch.zeros(1, 4, dtype=torch.long),
            torch.zeros(1, 4, dtype=torch.long),
            segment_len=2,
            bptt="partial",
        )


def live_tensor_bytes() -> int:
    """Bytes of every tensor storage Python can reach (autograd's saved tensors and anything a backward
    function keeps as an attribute, which activation checkpointing would not free)."""
    import gc

    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and not obj.is_meta:
            st = obj.untyped_storage()
            storages[st.data_ptr()] = st.nbytes()
    return sum(storages.values())


def test_activation_memory_is_bounded_by_the_segment() -> None:
    """What stays alive between the forward and the backward pass at L = 16 S stays within a small factor of
    L = S with segments, while one pass over 16 S keeps ~16 times as much."""
    model = randomize_(RWKV6(TINY)).train()
    S = 32

    def held_bytes(L: int, segment_len: int | None) -> int:
        idx = torch.randint(0, TINY.vocab_size, (1, L + 1))
        before = live_tensor_bytes()
        loss = model(idx[:, :-1], targets=idx[:, 1:], segment_len=segment_len)
        held = live_tensor_bytes() - before
        loss.backward()  # the recompute of each segment happens here, one at a time
        return held

    base = held_bytes(S, None)
    one_pass = held_bytes(16 * S, None)
    segmented = held_bytes(16 * S, S)
    assert one_pass > 10 * base
    assert segmented < 2 * base, (segmented, base)


def test_init_from_copies_exported_weights_and_refuses_another_shape(tmp_path) -> None:
    import json

    from safetensors.torch import save_file

    from ptbr.errors import PtbrError
    from ptbr.model.weights import load_weights_into

    source = randomize_(RWKV6(TINY), seed=3)
    out = tmp_path / "export"
    out.mkdir()
    save_file({n: p.detach().contiguous() for n, p in source.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"model": TINY.model_dump(), "weights": "model.safetensors"}))
    target = RWKV6(TINY_RESET)  # a behaviour switch is not a shape change
    load_weights_into(target, out)
    for (name, p), q in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(p, q), name
    wider = RWKV6(TINY.model_copy(update={"n_embd": 96}))
    with pytest.raises(PtbrError, match="another model shape \\(n_embd 64 != 96"):
        load_weights_into(wider, out)
    with pytest.raises(PtbrError, match="is not a ptbr export"):
        load_weights_into(target, tmp_path)


def test_reentrant_block_recompute_gives_the_gradients_of_none() -> None:
    """The ZeRO-3 variant of gradient checkpointing (reentrant, state passed as plain tensors), with a carried
    state and document resets: the same loss and gradients, and the gradient reaches the incoming state."""
    model = randomize_(RWKV6(TINY_RESET)).train()
    idx = packed_documents([9, 14], B=2, seed=8)
    _, state = model(idx[:, :7], return_state=True)
    state = [s.map(lambda t: t.detach().requires_grad_(True)) for s in state]

    def run() -> tuple[dict, list]:
        model.zero_grad()
        for s in state:
            for t in vars(s).values():
                t.grad = None
        model(idx[:, 7:], state=state).pow(2).mean().backward()
        return grads_of(model), [t.grad.clone() for s in state for t in vars(s).values()]

    g_plain, s_plain = run()
    model.gradient_checkpointing, model.checkpoint_reentrant = True, True
    g_ck, s_ck = run()
    assert_same_grads(g_ck, g_plain, 1e-6)
    for a, b in zip(s_ck, s_plain):
        torch.testing.assert_close(a, b)


def test_generation_steps_reset_at_a_document_end_too() -> None:
    """The one-token RNN step of generation follows the same rule as the parallel forward: with
    reset_state_at_eos, the token after an EOS sees a zero state (logits of every step agree)."""
    from ptbr.infer.rnn import RNN

    model = randomize_(RWKV6(TINY_RESET)).eval()
    idx = packed_documents([5, 8, 1, 6], seed=9)
    with torch.no_grad():
        parallel = model(idx)
    rnn, state, steps = RNN(model), model.zero_state(1), []
    for t in range(idx.shape[1]):
        logits, state = rnn.step(idx[:, t], state)
        steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), parallel, rtol=1e-4, atol=1e-4)
