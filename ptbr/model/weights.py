"""An exported model's weights (``ptbr export``: config.json + model.safetensors or model.pth) read into a model.

Used by inference (``ptbr.infer.model_io.load_model``) and by training's ``train.init_from`` (a long-context
stage starting from a shorter run's weights), so that training does not depend on the inference package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ptbr.errors import PtbrError
from ptbr.model.config import RWKV6Config
from ptbr.model.rwkv6 import RWKV6


def read_state_dict(model_dir: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    weights = model_dir / config.get("weights", "model.safetensors")
    if not weights.is_file():
        raise PtbrError(f"{model_dir}: {weights.name} is missing (an incomplete export? run ptbr export again)")
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(weights))
    return torch.load(weights, map_location="cpu", weights_only=True)


def read_export_config(model_dir: Path, what: str) -> dict[str, Any]:
    """config.json of an exported model; ``what`` names the caller in the error."""
    cfg_path = model_dir / "config.json"
    hint = "make one with: ptbr export RUN_DIR OUT_DIR"
    if not cfg_path.is_file():
        raise PtbrError(f"{what}{model_dir} is not a ptbr export (no config.json); {hint}")
    try:
        config = json.loads(cfg_path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise PtbrError(f"{what}{cfg_path} is not valid JSON, so {model_dir} is not a ptbr export; {hint}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise PtbrError(
            f"{what}{model_dir} is not a ptbr export (its config.json has no 'model' section: another "
            f"tool's model, e.g. Hugging Face's?); {hint}"
        )
    return config


def fill_weights(model: RWKV6, model_dir: Path, config: dict[str, Any], what: str) -> None:
    """Load the export's weights into ``model``, every parameter required (a tied head is stored once)."""
    missing, unexpected = model.load_state_dict(read_state_dict(model_dir, config), strict=False)
    absent = sorted(set(missing) - ({"head.weight"} if model.config.tie_embeddings else set()))
    if absent or unexpected:
        raise PtbrError(
            f"{what}{model_dir}: the weights do not match its config.json "
            f"(missing {absent[:3]}, unexpected {sorted(unexpected)[:3]})"
        )


def load_weights_into(model: RWKV6, model_dir: str | Path) -> None:
    """Copy the weights of an exported model into ``model`` (same shape required), e.g. to start a
    long-context stage from a shorter run. Export with ``--dtype fp32`` to keep the master weights exact."""
    model_dir, what = Path(model_dir), "train.init_from: "
    config = read_export_config(model_dir, what)
    theirs = RWKV6Config.load(config["model"], str(model_dir / "config.json")).shape()
    ours = model.config.shape()
    if theirs != ours:
        diff = ", ".join(f"{k} {theirs.get(k)} != {ours.get(k)}" for k in ours if theirs.get(k) != ours.get(k))
        raise PtbrError(f"{what}{model_dir} holds another model shape ({diff}); use the same model config")
    fill_weights(model, model_dir, config, what)
