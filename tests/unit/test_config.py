"""Model configuration: presets, exact parameter counts, validation errors."""

from __future__ import annotations

import pytest
import torch

from ptbr.config import apply_overrides
from ptbr.errors import ConfigError
from ptbr.model import PRESETS, RWKV6Config, count_parameters

EXPECTED = {
    "140m": (12, 768, 145_443_840),
    "400m": (24, 1024, 404_099_072),
    "800m": (24, 1536, 851_515_392),
    "1b": (24, 1664, 988_928_512),
    "1b5": (24, 2048, 1_462_509_568),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_parameter_counts_are_exact(name: str) -> None:
    L, C, total = EXPECTED[name]
    cfg = RWKV6Config.load(name)
    assert (cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.head_size) == (L, C, 32000, 64)
    assert cfg.dim_ffn == int(3.5 * C) // 32 * 32
    assert count_parameters(cfg) == total
    # DESIGN.md closed form: 2VC + 4C + L(6C^2 + 2CF + 464C)
    F = cfg.dim_ffn
    assert total == 2 * 32000 * C + 4 * C + L * (6 * C * C + 2 * C * F + 464 * C)


def test_yaml_presets_match_code_presets() -> None:
    for name in PRESETS:
        assert RWKV6Config.from_yaml(f"configs/model/{name}.yaml") == RWKV6Config.load(name)


def test_counting_does_not_allocate(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real_empty = torch.empty

    def spy(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        seen.append(t.device.type)
        return t

    monkeypatch.setattr(torch, "empty", spy)
    count_parameters(RWKV6Config.load("1b5"))
    assert seen and all(d == "meta" for d in seen)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"n_layer": 2, "n_embd": 100}, "n_embd (100) must be a multiple of head_size (64)"),
        ({"n_layer": 0, "n_embd": 64}, "n_layer: Input should be greater than 0"),
        ({"n_layer": 2, "n_embd": -64}, "n_embd: Input should be greater than 0"),
        ({"n_layer": 2, "n_embd": 64, "n_emdb": 3}, "n_emdb: unknown key"),
        ({"n_layer": 2, "n_embd": 64, "vocab_size": 0}, "vocab_size: Input should be greater than 0"),
        ({"preset": "7b"}, "preset: unknown preset '7b'"),
    ],
)
def test_invalid_model_config_names_key_and_rule(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        RWKV6Config.load(data, "m.yaml")
    assert needle in str(info.value)
    assert str(info.value).startswith("m.yaml: ")
    assert "\n" not in str(info.value)


def test_yaml_file_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        RWKV6Config.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_layer: [1,\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        RWKV6Config.from_yaml(bad)


def test_overrides_parse_yaml_values() -> None:
    out = apply_overrides({"a": {"b": 1}}, ["a.b=3e-4", "a.c=true", "d.e=x"])
    assert out == {"a": {"b": 3e-4, "c": True}, "d": {"e": "x"}}
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["novalue"])
