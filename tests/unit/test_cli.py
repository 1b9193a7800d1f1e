"""The command line as users call it: every command's --help, and ptbr info (presets, memory)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ptbr.cli import COMMANDS
from tests.helpers.train_harness import REPO


def ptbr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ptbr.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


@pytest.mark.parametrize("names", [names for names, _, _ in COMMANDS], ids=" ".join)
def test_every_command_has_help(names):
    proc = ptbr(*names, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: ptbr " + " ".join(names)), proc.stderr[-2000:]


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
