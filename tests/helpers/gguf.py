"""Helpers of the GGUF tests: the tiny model they use, ptbr's CLI, and the comparisons with llama.cpp's logits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from tests.helpers.train_harness import REPO, describe, run_env

MODEL = {"n_layer": 2, "n_embd": 128, "head_size": 64, "vocab_size": 512, "mix_lora": 8, "decay_lora": 8}

MODEL_OVERRIDES = tuple(
    f"model.{k}={v}" for k, v in MODEL.items() if k not in ("n_layer", "vocab_size", "mix_lora", "decay_lora")
)

PROMPTS = [
    "O Brasil é um país de dimensões continentais",
    "A educação pública no estado de São Paulo melhorou muito nos últimos anos, segundo o governo",
    "Era uma vez uma criança que morava perto da floresta amazônica com a sua avó",
    "Ação, informação e população: a região Nordeste tem 9 estados e mais de 57 milhões de habitantes. " * 12,
]

EOS = "<|endoftext|>"


def ptbr(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ptbr.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env=env or run_env(),
    )


def export(source: Path, out: Path, *args: str) -> Path:
    proc = ptbr("export", str(source), str(out), "--quiet", *args)
    assert proc.returncode == 0, describe(proc)
    return out


def gguf_of(source: Path, out: Path, dtype: str) -> Path:
    return export(source, out, "--format", "gguf", "--dtype", dtype) / "model.gguf"


def rel_rms(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - ref) ** 2)) / np.sqrt(np.mean(ref**2)))


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def top1_and_kl(logits: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """(top-1 agreement, mean KL(ref || logits), max KL) over positions."""
    lp, lq = log_softmax(ref), log_softmax(logits)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return float((ref.argmax(-1) == logits.argmax(-1)).mean()), float(kl.mean()), float(kl.max())


def ptbr_logits(lm, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return lm.model(torch.tensor([tokens]))[0].float().numpy()
