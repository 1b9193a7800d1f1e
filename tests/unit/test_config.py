"""Model configuration: presets, exact parameter counts, validation errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from ptbr.config import apply_overrides
from ptbr.errors import ConfigError
from ptbr.model import PRESETS, RWKV6Config, count_parameters
from ptbr.train.config import TrainConfig

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


def test_preset_configs_name_the_code_presets() -> None:
    """The presets' shapes live in one place (ptbr/model/config.py PRESETS; ``ptbr info`` prints them): every
    configs/train/<preset>.yaml names its preset, and no configs/model/<preset>.yaml duplicates it."""
    for name in PRESETS:
        assert TrainConfig.load(f"configs/train/{name}.yaml", ["data.source=x"]).model == RWKV6Config.load(name)
        assert not Path(f"configs/model/{name}.yaml").exists()


def test_a_model_file_named_in_a_config_is_relative_to_that_config(tmp_path, monkeypatch) -> None:
    """A config file works from any working directory (ptbr train --config /path/to/ptbr/configs/...)."""
    (tmp_path / "cfg" / "train").mkdir(parents=True)
    (tmp_path / "cfg" / "model").mkdir()
    shutil.copy("configs/model/tiny.yaml", tmp_path / "cfg" / "model" / "tiny.yaml")
    shutil.copy("configs/train/tiny_cpu.yaml", tmp_path / "cfg" / "train" / "tiny_cpu.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = TrainConfig.load(tmp_path / "cfg" / "train" / "tiny_cpu.yaml", ["data.source=x"])
    assert cfg.model == RWKV6Config.from_yaml(tmp_path / "cfg" / "model" / "tiny.yaml")
    (tmp_path / "cfg" / "model" / "tiny.yaml").unlink()
    with pytest.raises(ConfigError, match=r"config file not found: .*cfg/train/\.\./model/tiny\.yaml"):
        TrainConfig.load(tmp_path / "cfg" / "train" / "tiny_cpu.yaml", ["data.source=x"])


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


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_headers_and_slurm_scripts_name_node_counts_that_work(preset: str) -> None:
    """The first line of each preset config says which node counts work; its Slurm script's --nodes is one."""
    import re

    from ptbr.train.node_counts import NodePlan

    cfg = TrainConfig.load(f"configs/train/{preset}.yaml", ["data.source=x"])
    plan = NodePlan(cfg.data.num_canonical_nodes, cfg.batch.global_batch_size, cfg.batch.micro_batch_size, 8)
    header = Path(f"configs/train/{preset}.yaml").read_text().splitlines()[0]
    counts, micro = re.search(r"; ([\d, or]+) nodes? at micro-batch (\d+)\.$", header).groups()
    assert [int(n) for n in re.findall(r"\d+", counts)] == [n for n in plan.working_counts() if n <= 8]
    assert int(micro) == cfg.batch.micro_batch_size
    nodes = int(re.search(r"#SBATCH --nodes=(\d+)", Path(f"slurm/train_{preset}.sh").read_text()).group(1))
    assert plan.works(nodes), (preset, nodes)
