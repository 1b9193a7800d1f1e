"""The command line as users call it: every command's --help, and ptbr info (presets, memory)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ptbr.cli import COMMANDS
from tests.helpers.train_harness import REPO


def ptbr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ptbr.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )


@pytest.mark.parametrize("names", [names for names, _, _ in COMMANDS], ids=" ".join)
def test_every_command_has_help(names):
    proc = ptbr(*names, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: ptbr " + " ".join(names)), proc.stderr[-2000:]


@pytest.mark.slow  # several seconds of its own: in tests/unit, out of -m "not slow"
def test_info_lists_presets_with_parameters_and_memory():
    from ptbr.model import RWKV6Config, count_parameters

    proc = ptbr("info", "--memory", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["preset"]: r for r in json.loads(proc.stdout)["presets"]}
    assert set(rows) == {"140m", "400m", "800m", "1b", "1b5"}
    for name, row in rows.items():
        assert row["parameters"] == count_parameters(RWKV6Config.load(name))
        # more GPUs, less per GPU; ZeRO-3 below ZeRO-2; inference holds at least the bf16 weights
        assert row["zero2_8gpu_gib"] > row["zero2_16gpu_gib"] > row["zero2_64gpu_gib"]
        assert row["zero3_64gpu_gib"] < row["zero2_64gpu_gib"]
        assert row["inference_bf16_gib"] * 2**30 >= 2 * row["parameters"]
    text = ptbr("info", "--memory").stdout
    assert "1,462,509,568" in text and "zero3_64gpu" in text


@pytest.mark.parametrize("command", [["generate", "--prompt", "Olá"], ["eval", "--data", "/nonexistent"]])
@pytest.mark.parametrize("config", ['{"architectures": ["RwkvForCausalLM"], "model_type": "rwkv"}', "not json", None])
def test_a_directory_that_is_not_an_export_is_one_line(tmp_path, command, config):
    """A Hugging Face model directory (its config.json has no 'model' section), a broken config.json, none."""
    if config is not None:
        (tmp_path / "config.json").write_text(config)
    proc = ptbr(command[0], str(tmp_path), *command[1:])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    [line] = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith("ptbr: error: ") and "is not a ptbr export" in line
    assert line.endswith("make one with: ptbr export RUN_DIR OUT_DIR")
