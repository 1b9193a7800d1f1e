"""Long context: the carried state is exact (values and gradients, through WKV and token shift),
documents of a packed sample can start from a zero state, and a long sample trained in segments
gives the loss and gradients of one pass over it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ptbr.model import RWKV6, RWKV6Config
from ptbr.model.segments import sequence_loss
from ptbr.ops import wkv6
from tests.test_model import randomize_
from tests.wkv_utils import make_inputs, rel_rms, run_with_grads

EOS = 0
TINY = RWKV6Config(n_layer=3, n_embd=64, head_size=16, vocab_size=97, mix_lora=8, decay_lora=8)
TINY_RESET = TINY.model_copy(update={"reset_state_at_eos": True, "eos_id": EOS})


def packed_documents(lengths: list[int], B: int = 1, seed: int = 0) -> torch.Tensor:
    """Token ids [B, sum(lengths)]: documents of the given lengths, each ending with EOS."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(B):
        docs = [torch.cat([torch.randint(1, TINY.vocab_size, (n - 1,), generator=g), torch.tensor([EOS])])
                for n in lengths]
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
    ref = run_with_grads(lambda **kw: wkv6(**kw, backend="reference", reset=reset),
                         {n: x.double() for n, x in inputs.items()})
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
        outs.append(model(idx[:, start:start + n]))
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
        sequence_loss(lambda i, s: (None, None), torch.zeros(1, 4, dtype=torch.long),
                      torch.zeros(1, 4, dtype=torch.long), segment_len=2, bptt="partial")


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


# ------------------------------------------------------------------------- 3b. the same under DeepSpeed
ZERO_CASES = ("zero1", "zero2", "zero3", "zero3_reset", "zero2_reset_ckpt", "zero2_bf16", "zero3_ckpt_one_pass")


@pytest.fixture(scope="module")
def zero_findings(tmp_path_factory) -> dict:
    import json
    import subprocess
    import sys

    from tests.train_harness import REPO, free_port, run_env

    out = tmp_path_factory.mktemp("segments") / "findings.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(REPO / "tests" / "segments_probe.py"), str(out),
           ",".join(ZERO_CASES)]
    proc = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("case", ZERO_CASES)
def test_segments_under_zero_on_two_ranks(zero_findings, case: str) -> None:
    """Real DeepSpeed engines, 2 gloo ranks, the loss routed through engine(x, targets=..., segment_len=...):
    the reduced gradients of every parameter with 4 segments equal those of one pass (fp32: to rounding;
    bf16: within bf16's own rounding), with document resets and with per-block recompute too; at ZeRO-3 the
    (reentrant) per-block recompute gives the gradients of no recompute."""
    f = zero_findings[case]
    bf16 = case.endswith("bf16")
    assert f["loss_seg"] == pytest.approx(f["loss_one"], rel=1e-3 if bf16 else 1e-6)
    # bf16: segments change the gradients less than bf16 itself does (bf16 one pass against fp32 one pass)
    assert f["worst_grad"] < (f["bf16_rounding"] if bf16 else 5e-5), f
    assert f["zero_grads"] == []  # every parameter got a gradient (the comparison is not vacuous)


# ------------------------------------------------------------------------- 3c. ptbr train with segments
LONG_COMMON = ("train.max_steps=12", "train.log_every=1", "train.eval_every=6", "train.checkpoint_every=6",
               "train.keep_checkpoints=10", "precision=fp32", "debug.record_samples=true",
               "model.reset_state_at_eos=true")


@pytest.mark.slow
def test_training_in_segments_follows_the_one_pass_run_and_resumes_elastically(tiny_dataset, tmp_path) -> None:
    """The tiny config (seq_len 32) on 2 ranks, ZeRO-2, document resets on: in 4 segments of 8 tokens the
    training losses and the validation losses follow the one-pass run step by step; the segmented run's
    step-6 checkpoint resumed on 1 rank reads the same samples and follows it to the end."""
    import shutil

    from ptbr.checkpoint import layout
    from tests import train_harness as h

    def train(run_dir, world: int, *extra: str):
        proc = h.torchrun(world, h.train_args(run_dir, tiny_dataset.url, *LONG_COMMON, *extra), tiny_dataset.env)
        assert proc.returncode == 0, h.describe(proc)

    def evals(run_dir) -> dict[int, float]:
        return {r["step"]: r["val_loss"] for r in h.read_metrics(run_dir) if r["kind"] == "eval"}

    one, seg = tmp_path / "one_pass", tmp_path / "segments"
    train(one, 2)
    train(seg, 2, "train.segment_len=8")
    a, b = h.train_losses(one), h.train_losses(seg)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert max(abs(a[s] - b[s]) for s in a) < 1e-4, (a, b)
    assert sorted(evals(seg)) == [6, 12]
    assert max(abs(evals(one)[s] - evals(seg)[s]) for s in (6, 12)) < 1e-4

    resumed = tmp_path / "resumed"
    tag = layout.tag_for(6)
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(seg / "checkpoints" / tag, resumed / "checkpoints" / tag)
    train(resumed, 1, "train.segment_len=8", "data.num_workers=0")
    assert h.resumes(resumed) == [(6, "elastic", 2, 1)]
    assert h.samples_by_step(resumed) == {s: v for s, v in h.samples_by_step(seg).items() if s >= 6}
    c = h.train_losses(resumed)
    assert sorted(c) == list(range(7, 13))
    assert max(abs(c[s] - b[s]) for s in c) < 1e-2  # 1 rank sums the gradient in another order

    # a new stage (another run directory) that starts from the segmented run's exported weights
    from ptbr.infer.model_io import load_model

    exported = tmp_path / "exported"
    proc = subprocess.run([sys.executable, "-m", "ptbr.cli", "export", str(seg), str(exported), "--dtype", "fp32",
                           "--quiet"], env=tiny_dataset.env, capture_output=True, text=True, timeout=300, cwd=h.REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert load_model(exported).model.config.eos_id is not None  # the dataset's EOS travelled with the weights
    stage2 = tmp_path / "stage2"
    train(stage2, 1, "train.segment_len=8", "data.num_workers=0", f"train.init_from={exported}", "train.max_steps=2")
    first = h.train_losses(stage2)[1]
    assert first < a[1] - 0.3, (first, a[1])  # the same batch as the first run's step 1, on trained weights


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
    with pytest.raises(PtbrError, match="not an exported model"):
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
