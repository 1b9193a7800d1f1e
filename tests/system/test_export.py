"""Export (ZeRO 1/2/3 checkpoints from real 2-rank and 1-rank runs), the rwkv runtime on the .pth, generation
and evaluation of the exported model, tied embeddings, and the one-line errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from ptbr.checkpoint import layout
from tests.helpers.data import gpt2_byte_table
from tests.helpers.data_fixtures import local_samples
from tests.helpers.train_harness import REPO, describe, read_metrics, torchrun, train_args

pytestmark = pytest.mark.slow

COMMON = (
    "train.max_steps=6",
    "train.log_every=3",
    "train.eval_every=0",
    "train.checkpoint_every=0",
    "precision=fp32",
    "train.eval_samples=16",
)


def ptbr(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ptbr.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory) -> dict[str, Path]:
    """Short runs: ZeRO 1, 2, 3 at 2 ranks in fp32 and (ZeRO 1, 3) in bf16 as the presets train (bf16 ZeRO-1 is
    DeepSpeed's separate BF16_Optimizer), ZeRO-2 at 1 rank, tied embeddings at ZeRO 1, 2 and 3, and ZeRO 2 and 3
    with the optimizer (and at ZeRO-3 the parameters) offloaded to the CPU."""
    root = tmp_path_factory.mktemp("export_runs")
    cases = {
        "zero1": (2, ("zero.stage=1",)),
        "zero2": (2, ("zero.stage=2",)),
        "zero3": (2, ("zero.stage=3",)),
        "zero1_bf16": (2, ("zero.stage=1", "precision=bf16")),
        "zero3_bf16": (2, ("zero.stage=3", "precision=bf16")),
        "zero2_1rank": (1, ("zero.stage=2",)),
        "tied": (2, ("zero.stage=3", "model.tie_embeddings=true")),
        "tied_zero2": (2, ("zero.stage=2", "model.tie_embeddings=true")),
        "tied_zero1": (2, ("zero.stage=1", "model.tie_embeddings=true")),
        "zero2_offload": (2, ("zero.stage=2", "zero.offload_optimizer=true")),
        "zero3_offload": (2, ("zero.stage=3", "zero.offload_optimizer=true", "zero.offload_params=true")),
    }
    out = {}
    for name, (world, extra) in cases.items():
        run_dir = root / name
        proc = torchrun(world, train_args(run_dir, tiny_dataset.url, *COMMON, *extra), tiny_dataset.env)
        assert proc.returncode == 0, describe(proc)
        out[name] = run_dir
    return out


def master_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt = layout.newest_usable(run_dir / "checkpoints", print)
    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt.path.parent), tag=ckpt.tag)


def export(run_dir: Path, out: Path, *args: str) -> Path:
    proc = ptbr("export", str(run_dir), str(out), "--quiet", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("name", ["zero1", "zero2", "zero3", "zero1_bf16", "zero3_bf16", "zero2_1rank"])
def test_export_equals_the_fp32_master_weights(runs, tmp_path, name):
    from safetensors.torch import load_file

    ref = master_weights(runs[name])
    fp32 = load_file(str(export(runs[name], tmp_path / "fp32", "--dtype", "fp32") / "model.safetensors"))
    bf16 = load_file(str(export(runs[name], tmp_path / "bf16") / "model.safetensors"))  # the default dtype
    assert fp32.keys() == ref.keys() == bf16.keys()
    assert all(torch.equal(fp32[k], ref[k]) for k in ref)
    assert all(bf16[k].dtype == torch.bfloat16 and torch.equal(bf16[k], ref[k].to(torch.bfloat16)) for k in ref)
    config = json.loads((tmp_path / "fp32" / "config.json").read_text())
    assert config["step"] == 6 and config["model"]["n_layer"] == 2 and config["dtype"] == "fp32"
    assert config["tokenizer_sha256"] and config["dataset_hash"]
    assert (tmp_path / "fp32" / "tokenizer.json").is_file()


def rwkv_runtime_logits(pth: Path, tokens: list[int]) -> torch.Tensor:
    os.environ.setdefault("RWKV_JIT_ON", "0")
    from rwkv.model import RWKV

    model = RWKV(model=str(pth.with_suffix("")), strategy="cpu fp32")
    logits, _ = model.forward(tokens, None)
    return logits.float()


@pytest.mark.parametrize("name", ["zero2", "tied"])
def test_rwkv_pth_runs_in_the_rwkv_runtime(runs, tmp_path, name):
    from ptbr.infer.model_io import load_model

    out = export(runs[name], tmp_path / "rwkv", "--format", "rwkv", "--dtype", "fp32")
    state = torch.load(out / "model.pth", weights_only=True)
    assert {"emb.weight", "head.weight"} <= state.keys()
    if name == "tied":
        assert torch.equal(state["head.weight"], state["emb.weight"])
        assert state["head.weight"].data_ptr() != state["emb.weight"].data_ptr()  # a separate tensor
    lm = load_model(out, "cpu")
    tokens = lm.tokenizer.encode("A cidade de São Paulo tem muitas escolas", add_special_tokens=False).ids
    with torch.no_grad():
        ours = lm.model(torch.tensor([tokens]))[0, -1].float()
    theirs = rwkv_runtime_logits(out / "model.pth", tokens)
    assert (ours - theirs).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["tied", "tied_zero2", "tied_zero1"])
def test_tied_embeddings_train_and_export_once(runs, tmp_path, name):
    from safetensors.torch import load_file

    from ptbr.model import RWKV6Config, count_parameters

    losses = [r["loss"] for r in read_metrics(runs[name]) if r["kind"] == "train"]
    assert losses[-1] < losses[0]
    weights = load_file(str(export(runs[name], tmp_path / "st", "--dtype", "fp32") / "model.safetensors"))
    assert "emb.weight" in weights and "head.weight" not in weights  # stored once
    ref = master_weights(runs[name])
    assert torch.equal(weights["emb.weight"], ref["emb.weight"]) and torch.equal(ref["head.weight"], ref["emb.weight"])
    config = json.loads((tmp_path / "st" / "config.json").read_text())
    assert config["tied"] == {"head.weight": "emb.weight"}
    tied = RWKV6Config.load(config["model"])
    assert count_parameters(tied) == sum(w.numel() for w in weights.values())


def test_parallel_prompt_equals_one_token_at_a_time(runs, tmp_path):
    from ptbr.infer.generate import prefill
    from ptbr.infer.model_io import load_model
    from ptbr.infer.rnn import RNN

    lm = load_model(export(runs["zero2"], tmp_path / "m", "--dtype", "fp32"), "cpu")
    tokens = lm.tokenizer.encode(
        "O governo do estado anunciou hoje um novo programa de saúde pública " * 3, add_special_tokens=False
    ).ids
    logits, state = prefill(lm, tokens, chunk=16)  # several chunks: the state carried across them
    rnn = RNN(lm.model)
    step_state = lm.model.zero_state(1)
    for t in tokens:
        step_logits, step_state = rnn.step(torch.tensor([t]), step_state)
    torch.testing.assert_close(torch.softmax(step_logits, -1), torch.softmax(logits, -1), atol=1e-6, rtol=1e-4)
    for a, b in zip(state, step_state):
        torch.testing.assert_close(a.wkv, b.wkv, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.att_shift, b.att_shift)
        torch.testing.assert_close(a.ffn_shift, b.ffn_shift)


def test_generation_is_reproducible_streamed_and_flat_in_memory(runs, tmp_path):
    """The same seed gives the same text; the command prints text while it still runs (streamed); memory does not
    grow with the generated length (the RNN state is constant: under 2 MiB of RSS over 1,400 more tokens)."""
    from ptbr.infer.generate import SamplingSettings, generate
    from ptbr.infer.model_io import load_model

    model_dir = export(runs["zero2"], tmp_path / "m")
    proc = ptbr("generate", str(model_dir), "--prompt", "A educação no Brasil", "--max-tokens", "40", "--seed", "3")
    again = ptbr("generate", str(model_dir), "--prompt", "A educação no Brasil", "--max-tokens", "40", "--seed", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == again.stdout and proc.stdout.startswith("A educação no Brasil")
    assert len(proc.stdout) > len("A educação no Brasil")
    streaming = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ptbr.cli",
            "generate",
            str(model_dir),
            "--prompt",
            "Era uma",
            "--max-tokens",
            "3000",
            "--seed",
            "3",
            "--ignore-eos",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    first = streaming.stdout.read(len("Era uma") + 1)  # returns as soon as the prompt and one character are out
    running = streaming.poll() is None
    streaming.kill()
    streaming.wait()
    assert first.startswith("Era uma") and running  # text came out before the generation ended

    lm = load_model(model_dir, "cpu")
    rss = []
    settings = SamplingSettings(max_tokens=1500, temperature=1.0, top_p=1.0, seed=0, ignore_eos=True)
    process = psutil.Process()
    pieces = 0
    for pieces, _piece in enumerate(generate(lm, "Era uma vez", settings), 1):
        if pieces == 100:
            rss.append(process.memory_info().rss)
    rss.append(process.memory_info().rss)
    assert pieces > 1000 and rss[1] - rss[0] < 2 << 20  # < 2 MiB over 900+ more tokens


@pytest.mark.parametrize(("offloaded", "plain"), [("zero2_offload", "zero2"), ("zero3_offload", "zero3")])
def test_offloaded_runs_train_like_the_plain_ones_and_export(runs, tmp_path, offloaded, plain):
    """ZeRO offload (the optimizer, and at ZeRO-3 the parameters, on the CPU) does the same fp32 arithmetic: the
    loss curve of the plain run, step by step, and an export equal to the master weights."""
    from safetensors.torch import load_file

    a, b = read_losses(runs[offloaded]), read_losses(runs[plain])
    assert sorted(a) == sorted(b) and max(abs(a[s] - b[s]) for s in a) < 1e-4, (a, b)
    weights = load_file(str(export(runs[offloaded], tmp_path / "off", "--dtype", "fp32") / "model.safetensors"))
    ref = master_weights(runs[offloaded])
    assert set(weights) == set(ref) and all(torch.equal(weights[k], ref[k]) for k in ref)


def read_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


def test_eval_of_the_export_equals_the_runs_validation_loss(runs, tiny_dataset, tmp_path):
    model_dir = export(runs["zero2"], tmp_path / "m", "--dtype", "fp32")
    proc = ptbr(
        "eval",
        str(model_dir),
        "--data",
        tiny_dataset.url,
        "--max-samples",
        "16",
        "--batch-size",
        "4",
        "--json",
        env=tiny_dataset.env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    final = [r for r in read_metrics(runs["zero2"]) if r["kind"] == "eval"][-1]
    assert result["tokens"] == final["val_tokens"] and result["samples"] == 16
    assert result["loss"] == pytest.approx(final["val_loss"], rel=1e-5)
    # loss by position (buckets 0-8 and 8-32): ptbr eval and the training evaluation, bucket by bucket, and the
    # buckets weighted by their sizes give the mean
    by_position = result["loss_by_position"]
    assert set(by_position) == set(final["val_loss_by_position"]) == {"0-8", "8-32"}
    for bucket, value in by_position.items():
        assert value == pytest.approx(final["val_loss_by_position"][bucket], rel=1e-5), bucket
    assert (8 * by_position["0-8"] + 24 * by_position["8-32"]) / 32 == pytest.approx(result["loss"], rel=1e-9)
    assert by_position["8-32"] < by_position["0-8"]  # later tokens have context: the trained model uses it
    # bits per byte, computed here from the same samples: NLL in nats / ln 2 / UTF-8 bytes of the target tokens
    # (their bytes recovered through GPT-2's byte-to-character table, special tokens standing for no text)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    byte_of = {c: b for b, c in gpt2_byte_table().items()}
    specials = {t.content for t in tok.get_added_tokens_decoder().values()}
    targets = local_samples(tiny_dataset.local, "val")[:16, 1:]
    nbytes = sum(
        len(bytes(byte_of[c] for c in tok.id_to_token(int(i))))
        for i in targets.flatten()
        if tok.id_to_token(int(i)) not in specials
    )
    assert result["bytes"] == nbytes
    nats = result["loss"] * result["tokens"]
    assert result["bits_per_byte"] == pytest.approx(nats / math.log(2) / nbytes, rel=1e-9)


def test_bad_inputs_are_one_line(runs, tmp_path):
    def error_of(*args: str) -> str:
        proc = ptbr(*args)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("ptbr: error:")]
        return line

    run = runs["zero2"]
    nowhere = error_of("export", str(tmp_path), str(tmp_path / "o"))
    assert "neither a run directory nor a checkpoint directory" in nowhere
    broken = tmp_path / "broken" / "checkpoints" / "step_00000006"
    broken.mkdir(parents=True)
    assert "not a complete checkpoint" in error_of("export", str(broken), str(tmp_path / "o"))
    assert "--dtype must be one of" in error_of("export", str(run), str(tmp_path / "o"), "--dtype", "int8")
    assert "--format must be one of" in error_of("export", str(run), str(tmp_path / "o"), "--format", "onnx")
    exists = export(run, tmp_path / "exists")
    assert "already exists; pass --overwrite" in error_of("export", str(run), str(exists))
    assert "needs --run-dir" in error_of("export", "6", str(tmp_path / "o"))
    assert "is not a ptbr export" in error_of("generate", str(tmp_path), "--prompt", "oi")
    assert "--prompt is empty" in error_of("generate", str(exists), "--prompt", "")
    assert "--top-p must be in (0, 1]" in error_of("generate", str(exists), "--prompt", "oi", "--top-p", "0")
    assert "more than the 3 accepted" in error_of(
        "generate", str(exists), "--prompt", "uma frase bem longa aqui", "--max-prompt-tokens", "3"
    )
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))


def test_a_run_being_written_exports_its_newest_committed_checkpoint(runs, tmp_path):
    """A checkpoint still being saved (no commit marker yet) is skipped, not read half-written."""
    import shutil

    run = tmp_path / "live"
    shutil.copytree(runs["zero2"], run)
    saving = run / "checkpoints" / "step_00000099"
    shutil.copytree(layout.newest_usable(run / "checkpoints", print).path, saving)
    (saving / layout.MARKER).unlink()
    config = json.loads((export(run, tmp_path / "m") / "config.json").read_text())
    assert config["step"] == 6 and config["checkpoint"].endswith("step_00000006")


def test_streamed_pieces_are_the_decoded_tokens_and_stop_strings_cut(runs, tmp_path):
    from ptbr.infer.generate import SamplingSettings, generate
    from ptbr.infer.model_io import load_model

    lm = load_model(export(runs["zero2"], tmp_path / "m"), "cpu")
    settings = SamplingSettings(max_tokens=300, temperature=1.0, top_p=1.0, seed=7, ignore_eos=True)
    tokens: list[int] = []
    pieces = list(generate(lm, "A educação", settings, on_token=tokens.append))
    text = "".join(pieces)
    # a barely trained model emits invalid UTF-8 too; but no piece ends inside a character that a later
    # token completes: the pieces are exactly the decoded tokens
    assert len(tokens) == 300 and len(pieces) > 100 and text == lm.tokenizer.decode(tokens)
    stop = text[150:153]
    cut = "".join(generate(lm, "A educação", SamplingSettings(**{**settings.__dict__, "stop": (stop,)})))
    assert cut == text[: text.index(stop)]
