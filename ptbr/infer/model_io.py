"""Load an exported model directory (``ptbr export``): config.json, weights, tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ptbr.data.tokenizer import EOS_TOKEN
from ptbr.errors import PtbrError
from ptbr.model import RWKV6, RWKV6Config
from ptbr.model.weights import fill_weights, read_export_config


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


def load_model(model_dir: str | Path, device: str | None = None, dtype: torch.dtype | None = None) -> LoadedModel:
    """The model in eval mode: float32 on CPU (fast matrix-vector products there), the exported dtype on
    CUDA, unless ``dtype`` says otherwise."""
    from tokenizers import Tokenizer

    model_dir = Path(model_dir)
    config = read_export_config(model_dir, "")
    cfg = RWKV6Config.load(config["model"], str(model_dir / "config.json"))
    dev = _device(device)
    model = RWKV6(cfg, init_weights=False)
    fill_weights(model, model_dir, config, "")
    if dtype is None:
        dtype = (
            torch.float32
            if dev.type == "cpu"
            else {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.get("dtype"), torch.float32)
        )
    model = model.to(device=dev, dtype=dtype).eval()
    tok_path = model_dir / "tokenizer.json"
    if not tok_path.is_file():
        raise PtbrError(f"{model_dir}: tokenizer.json is missing")
    tokenizer = Tokenizer.from_file(str(tok_path))
    eos = tokenizer.token_to_id(EOS_TOKEN)
    return LoadedModel(model, tokenizer, config, dev, 0 if eos is None else eos)
