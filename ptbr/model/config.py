"""The shape of an RWKV-6 model: presets, derived sizes, FLOPs per token.

A model is named in a config by a preset (``model: 1b5``), a YAML file (``model:
configs/model/tiny.yaml``) or a mapping (``model: {preset: 1b5, vocab_size: 65536}``);
:func:`model_spec` turns any of them into explicit keys, in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from ptbr.config import StrictModel, load_yaml, validate
from ptbr.errors import ConfigError

PRESETS: dict[str, dict[str, int]] = {
    "140m": {"n_layer": 12, "n_embd": 768},
    "400m": {"n_layer": 24, "n_embd": 1024},
    "800m": {"n_layer": 24, "n_embd": 1536},
    "1b": {"n_layer": 24, "n_embd": 1664},
    "1b5": {"n_layer": 24, "n_embd": 2048},
}


def default_dim_ffn(n_embd: int) -> int:
    """RWKV-6 channel-mix width: 3.5 C rounded down to a multiple of 32."""
    return int(3.5 * n_embd) // 32 * 32


def model_spec(spec: str | dict[str, Any], source: str = "model config", key: str = "preset") -> dict[str, Any]:
    """A preset name, a YAML path or a mapping (optionally naming a ``preset``) -> explicit model keys.
    An unknown preset is a ConfigError ``"{source}: {key}: unknown preset ..."``."""
    if isinstance(spec, str):
        spec = load_yaml(spec) if spec.endswith((".yaml", ".yml")) else {"preset": spec}
    data = dict(spec)
    preset = data.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            where = f"{source}: {key}" if source else key
            raise ConfigError(f"{where}: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        data = {**PRESETS[preset], **data}
    return data


class RWKV6Config(StrictModel):
    """Shape of an RWKV-6 ("x060") model. Derived sizes are filled in when omitted."""

    n_layer: int = Field(gt=0)
    n_embd: int = Field(gt=0)
    vocab_size: int = Field(default=32000, gt=0)
    head_size: int = Field(default=64, gt=0)
    dim_ffn: int | None = Field(default=None, gt=0)
    mix_lora: int = Field(default=32, gt=0, description="rank of the token-shift mix LoRA")
    decay_lora: int = Field(default=64, gt=0, description="rank of the data-dependent decay LoRA")
    tie_embeddings: bool = Field(
        default=False,
        description="the output head reuses the embedding matrix (RWKV-LM's option; off in the x060 presets)",
    )
    reset_state_at_eos: bool = Field(
        default=False,
        description="each document of a packed sample starts from "
        "a zero state (WKV and token shift); off = exactly RWKV-LM",
    )
    eos_id: int | None = Field(
        default=None,
        ge=0,
        description="end-of-document token id for reset_state_at_eos "
        "(training fills it in from the dataset's manifest)",
    )

    @model_validator(mode="after")
    def _check(self) -> RWKV6Config:
        if self.n_embd % self.head_size:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of head_size ({self.head_size})")
        if self.dim_ffn is None:
            object.__setattr__(self, "dim_ffn", default_dim_ffn(self.n_embd))
        return self

    def shape(self) -> dict[str, Any]:
        """The keys that define the weights (a resume must keep them); behaviour switches left out."""
        return self.model_dump(exclude={"reset_state_at_eos", "eos_id"})

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    @classmethod
    def load(cls, spec: str | dict[str, Any], source: str = "model config") -> RWKV6Config:
        """From a preset name, a YAML file or a mapping (see :func:`model_spec`)."""
        if isinstance(spec, str) and spec.endswith((".yaml", ".yml")):
            source = spec
        return validate(cls, model_spec(spec, source), source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RWKV6Config:
        return cls.load(str(path))

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward), GPT-NeoX's RWKV formula."""
        d, L, V, H = self.n_embd, self.n_layer, self.vocab_size, self.n_head
        return 78 * d * d * L + 84 * d * L + 16 * d + 12 * d * V + 18 * d * d * L / H
