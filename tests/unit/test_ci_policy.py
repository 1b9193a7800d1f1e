"""Under CI=true only a missing GPU may skip a test: any other skip fails (a test that never ran is not green)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers.train_harness import REPO

PROBE = """
import pytest

def test_skipped_for_want_of_root():
    pytest.skip("mounting a tmpfs needs root")

def test_skipped_for_want_of_a_gpu():
    pytest.skip("needs a CUDA GPU")
"""


def run_probe(tmp_path, ci: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            str(tmp_path / "test_probe.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_under_ci_a_skip_other_than_no_gpu_fails(tmp_path):
    proc = run_probe(tmp_path, "true")
    assert proc.returncode == 1, proc.stdout
    assert "1 failed, 1 skipped" in proc.stdout
    assert "skipped under CI=true, where only a missing GPU may skip a test: Skipped: mounting a tmpfs" in proc.stdout


def test_outside_ci_skips_stay_skips(tmp_path):
    proc = run_probe(tmp_path, "")
    assert proc.returncode == 0 and "2 skipped" in proc.stdout, proc.stdout
