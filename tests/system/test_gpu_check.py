"""benchmarks/gpu_check.sh's plumbing, on CPU: --dry runs every step at toy sizes and writes one JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.train_harness import REPO


@pytest.mark.slow
def test_gpu_check_dry_runs_every_step(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--dry", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = {c["check"]: c for c in report["checks"]}
    assert report["dry"] and set(checks) == {
        "install",
        "versions",
        "pytest -m gpu",
        "wkv6 (toy, cpu)",
        "shards (toy)",
        "train tiny (toy, cpu)",
        "generate (RNN, batch 1) (toy, cpu)",
        "long context (toy, cpu)",
        "cpu inference vs rwkv runtime (toy)",
    }
    assert report["complete"] and all(c["ok"] for c in checks.values())
    assert all(c["limit_s"] > 0 and c["seconds"] <= c["limit_s"] + 5 and c["built"] for c in checks.values())
    assert report["versions"]["torch"] and report["versions"]["deepspeed"] and report["device"] == "cpu"
    table = (tmp_path / "gpu_check.md").read_text()
    assert all(f"| {name} | yes |" in table for name in checks)
    assert checks["train tiny (toy, cpu)"]["detail"]["tokens_per_s"] > 0
    assert checks["generate (RNN, batch 1) (toy, cpu)"]["detail"]["tokens_per_s"] > 0
    assert checks["wkv6 (toy, cpu)"]["detail"]  # the backends' rows
    assert {(r["mode"], r["L"]) for r in checks["long context (toy, cpu)"]["detail"]} == {
        ("segments", 16),
        ("one pass", 16),
        ("segments", 64),
        ("one pass", 64),
    }
    inference = checks["cpu inference vs rwkv runtime (toy)"]["detail"]
    assert {(r["case"].split(":")[1].strip(), r["threads"]) for r in inference["rows"]} == {
        (who, n) for who in ("ptbr", "rwkv runtime") for n in (1, 2)
    }
    assert all(r["tokens_per_s"] > 0 for r in inference["rows"])
    assert {r["who"] for r in inference["prefill_scaling"]} >= {"ptbr", "runtime"}
    assert "GPU check on cpu" in proc.stdout and "train tiny" in proc.stdout


def test_gpu_check_refuses_to_run_without_a_gpu_unless_dry(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
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


def test_a_failed_or_timed_out_step_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch):
    """Each step under its own limit (its whole process group killed), the error's last lines kept, a step that
    needs a failed one skipped, the others run, and the JSON and table rewritten after every step."""
    import benchmarks.gpu_check as gc

    pid_file = tmp_path / "grandchild.pid"
    hang = (
        "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
        f"time.sleep(120)']); open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); "
        "time.sleep(120)"
    )

    def slow(ctx, args):
        ctx.run([sys.executable, "-c", hang])
        return {"result": "never"}

    def broken(ctx, args):
        ctx.run([sys.executable, "-c", "print('first line'); print('the cause'); raise SystemExit(3)"])
        return {"result": "never"}

    def fine(ctx, args):
        return {"result": "fine", "detail": {"x": 1}}

    plan = [
        gc.Step("slow", "slow", slow),
        gc.Step("broken", "broken", broken),
        gc.Step("fine", "fine", fine),
        gc.Step("after", "after broken", fine, needs="broken"),
    ]
    monkeypatch.setattr(gc, "steps", lambda dry: plan)
    monkeypatch.setattr(gc, "DRY_LIMITS", {"slow": 3, "broken": 30, "fine": 30, "after": 30})
    snapshots = []
    write = gc.write_reports
    monkeypatch.setattr(
        gc,
        "write_reports",
        lambda work, report: (write(work, report), snapshots.append(json.loads((work / "gpu_check.json").read_text()))),
    )
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--dry", "--out", str(tmp_path)])
    t0 = time.perf_counter()
    assert gc.main() == 1
    assert time.perf_counter() - t0 < 30
    rows = {r["check"]: r for r in snapshots[-1]["checks"]}
    assert rows["slow"]["status"] == "timed out" and "started" in rows["slow"]["error"]
    assert rows["broken"]["status"] == "failed" and rows["broken"]["result"] == "exit code 3"
    assert rows["broken"]["error"].splitlines()[-1] == "the cause"
    assert rows["fine"]["ok"] and rows["fine"]["detail"] == {"x": 1}
    assert rows["after broken"]["status"] == "skipped" and not rows["after broken"]["ok"]
    assert [len(s["checks"]) for s in snapshots] == [1, 2, 3, 4, 4]
    assert [s["complete"] for s in snapshots] == [False] * 4 + [True]
    assert not alive(int(pid_file.read_text()))  # the timed-out step's grandchild went with it
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| slow | NO |" in table and "TIMED OUT" in table and "the cause" in table


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its reaper."""
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state == "Z":
            return False
        time.sleep(0.1)
    return True


def test_the_step_limits_fit_the_budget():
    import benchmarks.gpu_check as gc

    keys = [s.key for s in gc.steps(dry=False)]
    assert set(keys) == set(gc.LIMITS) and {s.key for s in gc.steps(dry=True)} == set(gc.DRY_LIMITS)
    assert sum(gc.LIMITS.values()) <= gc.BUDGET - 20 and gc.BUDGET <= 8 * 60
    assert gc.pytest_counts("== 3 failed, 20 passed, 2 skipped, 300 deselected in 9.1s ==") == {
        "failed": 3,
        "passed": 20,
        "skipped": 2,
        "deselected": 300,
    }
