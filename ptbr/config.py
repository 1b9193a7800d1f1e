"""Typed configuration: YAML files validated into pydantic models.

Every config object forbids unknown keys, and every validation failure becomes a one-line
:class:`~ptbr.errors.ConfigError` that names the offending key and the rule it broke.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ptbr.errors import ConfigError

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"

T = TypeVar("T", bound="StrictModel")


class StrictModel(BaseModel):
    """Base for all config sections: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def format_validation_error(exc: ValidationError, source: str) -> str:
    """Render pydantic's error list as 'source: key.path: message; ...' on one line."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see configs/ for the valid keys)"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return f"{source}: " + "; ".join(parts)


def validate(cls: type[T], data: Any, source: str) -> T:
    """Validate ``data`` into ``cls``; raise ConfigError naming the bad keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; missing files and syntax errors become ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is YAML (so ``lr=3e-4`` is a float, ``x=null`` None)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # PyYAML reads "3e-4" as a string (YAML 1.1 wants "3.0e-4")
        with contextlib.suppress(ValueError):
            value = float(value)
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key=value`` overrides applied."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return out


# --------------------------------------------------------------------------------------------
# Model configuration
# --------------------------------------------------------------------------------------------

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


class RWKV6Config(StrictModel):
    """Shape of an RWKV-6 ("x060") model. Derived sizes are filled in when omitted."""

    n_layer: int = Field(gt=0)
    n_embd: int = Field(gt=0)
    vocab_size: int = Field(default=32000, gt=0)
    head_size: int = Field(default=64, gt=0)
    dim_ffn: int | None = Field(default=None, gt=0)
    mix_lora: int = Field(default=32, gt=0, description="rank of the token-shift mix LoRA")
    decay_lora: int = Field(default=64, gt=0, description="rank of the data-dependent decay LoRA")

    @model_validator(mode="after")
    def _check(self) -> RWKV6Config:
        if self.n_embd % self.head_size:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be a multiple of head_size ({self.head_size})"
            )
        if self.dim_ffn is None:
            object.__setattr__(self, "dim_ffn", default_dim_ffn(self.n_embd))
        return self

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> RWKV6Config:
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return validate(cls, {**PRESETS[name], **overrides}, f"preset {name}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model config") -> RWKV6Config:
        """Accept either explicit dims or ``{preset: NAME, ...overrides}``."""
        data = dict(data)
        preset = data.pop("preset", None)
        if preset is not None:
            if preset not in PRESETS:
                raise ConfigError(f"{source}: preset: unknown preset {preset!r}; "
                                  f"choose one of {', '.join(PRESETS)}")
            data = {**PRESETS[preset], **data}
        return validate(cls, data, source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RWKV6Config:
        return cls.from_dict(load_yaml(path), str(path))

    def num_parameters(self) -> int:
        """Exact parameter count, computed on the meta device (no weights are allocated)."""
        import torch

        from ptbr.model import RWKV6

        with torch.device("meta"):
            model = RWKV6(self, init_weights=False)
        return sum(p.numel() for p in model.parameters())

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward), GPT-NeoX's RWKV formula."""
        d, L, V, H = self.n_embd, self.n_layer, self.vocab_size, self.n_head
        return 78 * d * d * L + 84 * d * L + 16 * d + 12 * d * V + 18 * d * d * L / H
