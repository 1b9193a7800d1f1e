"""benchmarks/gpu_check.sh's plumbing, on CPU: --dry runs every step at toy sizes and writes one JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.train_harness import REPO


@pytest.mark.slow
def test_gpu_check_dry_runs_every_step(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = {c["check"]: c for c in report["checks"]}
    assert report["dry"] and set(checks) == {"pytest -m gpu", "wkv6 (toy, cpu)", "train tiny (toy, cpu)",
                                             "generate (RNN, batch 1) (toy, cpu)", "long context (toy, cpu)",
                                             "cpu inference vs rwkv runtime (toy)"}
    assert all(c["ok"] for c in checks.values())
    assert checks["train tiny (toy, cpu)"]["detail"]["tokens_per_s"] > 0
    assert checks["generate (RNN, batch 1) (toy, cpu)"]["detail"]["tokens_per_s"] > 0
    assert checks["wkv6 (toy, cpu)"]["detail"]  # the backends' rows
    assert {(r["mode"], r["L"]) for r in checks["long context (toy, cpu)"]["detail"]} == {
        ("segments", 16), ("one pass", 16), ("segments", 64), ("one pass", 64)}
    inference = checks["cpu inference vs rwkv runtime (toy)"]["detail"]
    assert {(r["case"].split(":")[1].strip(), r["threads"]) for r in inference["rows"]} == {
        (who, n) for who in ("ptbr", "rwkv runtime") for n in (1, 2)}
    assert all(r["tokens_per_s"] > 0 for r in inference["rows"])
    assert {r["who"] for r in inference["prefill_scaling"]} >= {"ptbr", "runtime"}
    assert "GPU check on cpu" in proc.stdout and "train tiny" in proc.stdout


def test_gpu_check_refuses_to_run_without_a_gpu_unless_dry(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr and "Traceback" not in proc.stderr


def test_prefill_scaling_fit_recovers_serial_and_parallel_time():
    from benchmarks.export import amdahl, scaling_rows

    assert amdahl({1: 1.2, 2: 0.7, 4: 0.45}) == pytest.approx((1.0, 0.2))
    # ptbr: 0.9 s of parallel work and 0.01 s serial; the runtime: 0.6 s parallel and 0.3 s serial (its token loop)
    times = {"ptbr": {p: 0.9 / p + 0.01 for p in (1, 2)}, "runtime": {p: 0.6 / p + 0.3 for p in (1, 2)}}
    rows = {r["who"]: r for r in scaling_rows(times, prompt_len=512, predict=16)}
    expected = (0.6 / 16 + 0.3) / (0.9 / 16 + 0.01)
    assert rows["prefill ratio at 16 threads (extrapolated)"]["ratio"] == pytest.approx(expected)
    assert rows["runtime"]["serial_s"] == pytest.approx(0.3)
