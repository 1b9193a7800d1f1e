"""Load an exported model directory (``ptbr export``): config.json, weights, tokenizer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ptbr.errors import PtbrError
from ptbr.model import RWKV6, RWKV6Config


@dataclass
class LoadedModel:
    model: RWKV6
    tokenizer: Any  # tokenizers.Tokenizer
    config: dict[str, Any]
    device: torch.device
    eos_id: int


def _device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PtbrError(f"--device {name}: no CUDA device is available (use --device cpu)")
    return torch.device(name)


def read_state_dict(model_dir: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    weights = model_dir / config.get("weights", "model.safetensors")
    if not weights.is_file():
        raise PtbrError(f"{model_dir}: {weights.name} is missing (an incomplete export? run ptbr export again)")
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(weights))
    return torch.load(weights, map_location="cpu", weights_only=True)


def _read_config(model_dir: Path, what: str) -> dict[str, Any]:
    """config.json of an exported model; ``what`` names the caller in the error."""
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise PtbrError(f"{what}{model_dir} is not an exported model (no config.json); create one with ptbr export")
    return json.loads(cfg_path.read_text())


def _fill_weights(model: RWKV6, model_dir: Path, config: dict[str, Any], what: str) -> None:
    """Load the export's weights into ``model``, every parameter required (a tied head is stored once)."""
    missing, unexpected = model.load_state_dict(read_state_dict(model_dir, config), strict=False)
    absent = sorted(set(missing) - ({"head.weight"} if model.config.tie_embeddings else set()))
    if absent or unexpected:
        raise PtbrError(f"{what}{model_dir}: the weights do not match its config.json "
                        f"(missing {absent[:3]}, unexpected {sorted(unexpected)[:3]})")


def load_weights_into(model: RWKV6, model_dir: str | Path) -> None:
    """Copy the weights of an exported model into ``model`` (same shape required), e.g. to start a
    long-context stage from a shorter run. Export with ``--dtype fp32`` to keep the master weights exact."""
    model_dir, what = Path(model_dir), "train.init_from: "
    config = _read_config(model_dir, what)
    theirs = RWKV6Config.load(config["model"], str(model_dir / "config.json")).shape()
    ours = model.config.shape()
    if theirs != ours:
        diff = ", ".join(f"{k} {theirs.get(k)} != {ours.get(k)}" for k in ours if theirs.get(k) != ours.get(k))
        raise PtbrError(f"{what}{model_dir} holds another model shape ({diff}); use the same model config")
    _fill_weights(model, model_dir, config, what)


def load_model(model_dir: str | Path, device: str | None = None, dtype: torch.dtype | None = None) -> LoadedModel:
    """The model in eval mode: float32 on CPU (fast matrix-vector products there), the exported dtype on
    CUDA, unless ``dtype`` says otherwise."""
    from tokenizers import Tokenizer

    model_dir = Path(model_dir)
    config = _read_config(model_dir, "")
    cfg = RWKV6Config.load(config["model"], str(model_dir / "config.json"))
    dev = _device(device)
    model = RWKV6(cfg, init_weights=False)
    _fill_weights(model, model_dir, config, "")
    if dtype is None:
        dtype = torch.float32 if dev.type == "cpu" else {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            config.get("dtype"), torch.float32)
    model = model.to(device=dev, dtype=dtype).eval()
    tok_path = model_dir / "tokenizer.json"
    if not tok_path.is_file():
        raise PtbrError(f"{model_dir}: tokenizer.json is missing")
    tokenizer = Tokenizer.from_file(str(tok_path))
    eos = tokenizer.token_to_id("<|endoftext|>")
    return LoadedModel(model, tokenizer, config, dev, 0 if eos is None else eos)
