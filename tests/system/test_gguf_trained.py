"""The GGUF export of tiny models trained by ``ptbr train`` (untied, tied, reset_state_at_eos), checked by
llama.cpp: f32 logits within 1e-3 relative RMS, f16 and q8_0 top-1 agreement and KL divergence, 64 greedy tokens
identical to ``ptbr generate``, the export from a run directory equal to the one from its export directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.gguf import (
    MODEL,
    MODEL_OVERRIDES,
    PROMPTS,
    export,
    gguf_of,
    ptbr,
    ptbr_logits,
    rel_rms,
    top1_and_kl,
)
from tests.helpers.train_harness import describe, run_env

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by tools/setup_env.sh")

from ptbr.devtools.llamacpp import LlamaCpp  # noqa: E402


# ------------------------------------------------------------------------------- slow tier: trained models
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Tiny runs of ``ptbr train`` (one process, local shards): untied, tied, and with reset_state_at_eos."""
    from ptbr.devtools.sample_text import portuguese_documents

    root = tmp_path_factory.mktemp("gguf_runs")
    corpus = root / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in portuguese_documents(400, seed=7))
    )
    env = run_env()
    for args in (
        (
            "tokenizer",
            "train",
            "--input",
            str(corpus),
            "--output",
            str(root / "tokenizer.json"),
            "--vocab-size",
            str(MODEL["vocab_size"]),
        ),
        (
            "shards",
            "build",
            "--input",
            str(corpus),
            "--tokenizer",
            str(root / "tokenizer.json"),
            "--output",
            str(root / "shards"),
            "--seq-len",
            "32",
            "--val-fraction",
            "0.05",
        ),
    ):
        proc = ptbr(*args, env=env)
        assert proc.returncode == 0, describe(proc)
    runs = {}
    for name, extra in (
        ("plain", ()),
        ("tied", ("model.tie_embeddings=true",)),
        ("reset", ("model.reset_state_at_eos=true",)),
    ):
        run_dir = root / name
        proc = ptbr(
            "train",
            "--config",
            "configs/train/tiny_cpu.yaml",
            *MODEL_OVERRIDES,
            *extra,
            f"data.source={root / 'shards'}",
            f"data.cache_dir={root / 'cache' / name}",
            f"train.run_dir={run_dir}",
            "train.max_steps=150",
            "train.eval_every=0",
            "train.checkpoint_every=0",
            "train.log_every=50",
            env=env,
        )
        assert proc.returncode == 0, describe(proc)
        runs[name] = run_dir
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["plain", "tied"])
def test_f32_logits_match_ptbrs_forward(trained, tmp_path, name):
    from ptbr.infer.model_io import load_model

    model_dir = export(trained[name], tmp_path / "fp32", "--dtype", "fp32")
    lm = load_model(model_dir, "cpu")
    llm = LlamaCpp(gguf_of(model_dir, tmp_path / "g", "f32"), logits_all=True)
    worst = 0.0
    for prompt in PROMPTS:  # the last one is longer than a llama.cpp batch (512): the state crosses batches
        tokens = lm.tokenizer.encode(prompt, add_special_tokens=False).ids
        worst = max(worst, rel_rms(llm.logits(tokens), ptbr_logits(lm, tokens)))
    print(f"{name}: f32 relative RMS of the logits, worst prompt {worst:.2e}")
    assert worst < 1e-3


@pytest.mark.slow
def test_f16_and_q8_0_agree_with_the_fp32_model(trained, tmp_path):
    """Bounds well above what this model measures (README, "Run it elsewhere") and at or above what llama.cpp's
    own tools/perplexity/README.md reports as normal on LLaMA 3 8B (q8_0 against fp16: 97.7 % same top token,
    mean KL 1.4e-3; fp16 against bf16: 99.7 %, 2.5e-5); a wrong layout or scale gives ~0 % and KL >> 0.1."""
    from ptbr.infer.model_io import load_model

    model_dir = export(trained["plain"], tmp_path / "fp32", "--dtype", "fp32")
    lm = load_model(model_dir, "cpu")
    tokens_per_prompt = [lm.tokenizer.encode(p, add_special_tokens=False).ids for p in PROMPTS]
    ref = np.concatenate([ptbr_logits(lm, t) for t in tokens_per_prompt])
    bounds = {"f16": (0.99, 1e-4), "bf16": (0.98, 1e-3), "q8_0": (0.97, 2e-3)}
    for dtype, (min_top1, max_kl) in bounds.items():
        llm = LlamaCpp(gguf_of(model_dir, tmp_path / dtype, dtype), logits_all=True)
        got = np.concatenate([llm.logits(t) for t in tokens_per_prompt])
        top1, kl, kl_max = top1_and_kl(got, ref)
        print(
            f"{dtype}: top-1 agreement {top1:.4f}, KL mean {kl:.2e} max {kl_max:.2e}, "
            f"rel. RMS {rel_rms(got, ref):.2e} over {len(ref)} positions"
        )
        assert top1 >= min_top1 and kl <= max_kl, dtype


@pytest.mark.slow
def test_greedy_generation_is_ptbr_generates(trained, tmp_path):
    from ptbr.infer.generate import SamplingSettings, generate
    from ptbr.infer.model_io import load_model

    model_dir = export(trained["plain"], tmp_path / "fp32", "--dtype", "fp32")
    lm = load_model(model_dir, "cpu")
    llm = LlamaCpp(gguf_of(model_dir, tmp_path / "g", "f32"))
    for prompt in PROMPTS[:3]:
        ours: list[int] = []
        list(generate(lm, prompt, SamplingSettings(max_tokens=64, temperature=0, ignore_eos=True), ours.append))
        theirs = llm.greedy(lm.tokenizer.encode(prompt, add_special_tokens=False).ids, 64)
        assert len(ours) == 64 and theirs == ours, prompt
    # the command a user runs, stopping at the end-of-document token as llama-cli does
    proc = ptbr("generate", str(model_dir), "--prompt", PROMPTS[0], "--max-tokens", "64", "--temperature", "0")
    assert proc.returncode == 0, describe(proc)
    theirs = llm.greedy(lm.tokenizer.encode(PROMPTS[0], add_special_tokens=False).ids, 64, stop=lm.eos_id)
    assert proc.stdout == PROMPTS[0] + llm.detokenize(theirs) + "\n"


@pytest.mark.slow
def test_reset_state_at_eos_is_a_new_sequence_in_llama_cpp(trained, tmp_path):
    """llama.cpp's graph carries the state across an end-of-document token inside one batch (it has no
    reset); a caller expresses ptbr's reset by starting a fresh sequence after the token."""
    from ptbr.infer.model_io import load_model

    model_dir = export(trained["reset"], tmp_path / "fp32", "--dtype", "fp32")
    lm = load_model(model_dir, "cpu")
    assert lm.model.config.reset_state_at_eos and lm.model.config.eos_id == 0
    llm = LlamaCpp(gguf_of(model_dir, tmp_path / "g", "f32"), logits_all=True)
    first = lm.tokenizer.encode(PROMPTS[0] + ".", add_special_tokens=False).ids + [lm.eos_id]
    second = lm.tokenizer.encode(PROMPTS[1], add_special_tokens=False).ids
    ref = ptbr_logits(lm, first + second)
    split = np.concatenate([llm.logits(first), llm.logits(second)])  # llm.logits starts from a cleared state
    whole = llm.logits(first + second)
    after = len(first)  # the first token of the second document: where the reset matters most
    print(
        f"reset_state_at_eos: split at EOS {rel_rms(split, ref):.2e}; one call, first token after EOS "
        f"{rel_rms(whole[after], ref[after]):.2e}"
    )
    assert rel_rms(split, ref) < 1e-3
    assert rel_rms(whole[:after], ref[:after]) < 1e-3
    assert rel_rms(whole[after], ref[after]) > 3e-2  # no reset inside one call
    lm.model.config = lm.model.config.model_copy(update={"reset_state_at_eos": False})
    assert rel_rms(whole, ptbr_logits(lm, first + second)) < 1e-3  # it is the model without the reset


@pytest.mark.slow
def test_a_run_directory_exports_the_same_file_as_its_export_directory(trained, tmp_path):
    model_dir = export(trained["tied"], tmp_path / "fp32", "--dtype", "fp32")
    for dtype in ("f32", "q8_0"):
        direct = gguf_of(trained["tied"], tmp_path / f"direct-{dtype}", dtype)
        assert direct.read_bytes() == gguf_of(model_dir, tmp_path / f"via-{dtype}", dtype).read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    import gguf

    reader = gguf.GGUFReader(tmp_path / "direct-f32" / "model.gguf")
    tensors = {t.name: t for t in reader.tensors}
    assert np.array_equal(tensors["output.weight"].data, tensors["token_embd.weight"].data)  # tied: twice
    assert reader.fields["ptbr.tie_embeddings"].contents() is True and reader.fields["ptbr.step"].contents() == 150
    assert os.path.getsize(tmp_path / "direct-q8_0" / "model.gguf") < 0.4 * os.path.getsize(
        tmp_path / "direct-f32" / "model.gguf"
    )
