"""W&B tracking across a preemption and an elastic resume, benchmarks during training, the dashboard.

One run of the tiny model at ZeRO-3, W&B in offline mode and ``train.bench_every=10`` on the local tasks of
tests/bench_tasks: launched with 2 ranks, preempted (SIGTERM) after step 12, resumed at 1 rank (elastic) to
step 30. About 100 s on 2 cores (2 launches, the universal-checkpoint conversion, an export, a plot).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ptbr.checkpoint import layout
from tests.helpers.bench_tasks import write_tasks
from tests.helpers.train_harness import (
    REPO,
    describe,
    last_step,
    read_metrics,
    resumes,
    run_env,
    start_ranks,
    torchrun,
    train_args,
    wait_all,
    wait_for,
)
from tests.helpers.wandb_files import history, offline_runs

pytestmark = pytest.mark.slow
STEPS = 30


@pytest.fixture(scope="module")
def run(tiny_dataset, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tracking")
    tasks = write_tasks(root / "tasks")
    run_dir = root / "run"
    args = train_args(
        run_dir,
        tiny_dataset.url,
        f"train.max_steps={STEPS}",
        "train.log_every=1",
        "train.eval_every=10",
        "train.checkpoint_every=10",
        "train.keep_checkpoints=10",
        "precision=fp32",
        "zero.stage=3",
        "train.bench_every=10",
        "train.bench_tasks=ptbr_test_mc,ptbr_test_gen",
        f"train.bench_include=[{tasks}]",
        "train.bench_limit=8",
        "train.wandb.mode=offline",
        "train.wandb.project=ptbr-test",
        "train.wandb.tags=[tiny,ci]",
    )
    env = {**tiny_dataset.env, "WANDB_SILENT": "true"}
    procs = start_ranks(2, args, env, root / "logs")
    wait_for(lambda: last_step(run_dir) >= 12, timeout=240, what="step 12")
    for p in procs:
        os.kill(p.pid, signal.SIGTERM)
    assert wait_all(procs, timeout=180) == [75, 75], (root / "logs" / "rank0.log").read_text()[-3000:]
    proc = torchrun(1, args, env)  # elastic: 2 -> 1 ranks
    assert proc.returncode == 0, describe(proc)
    return run_dir


def test_one_wandb_run_holds_every_step_once(run):
    run_id = (run / "wandb_run_id").read_text().strip()
    files = offline_runs(run / "wandb")
    assert len(files) == 2 and all(f.name == f"run-{run_id}.wandb" for f in files)  # one run, two launches
    rows = [row for f in files for row in history(f)]
    train_steps = [row["step"] for row in rows if "train/loss" in row]
    assert sorted(train_steps) == list(range(1, STEPS + 1))
    [(stop, mode, before, after)] = resumes(run)
    assert (mode, before, after) == ("elastic", 2, 1)
    assert [row["step"] for row in rows if "event/preempt" in row] == [stop]
    assert [row["step"] for row in rows if "event/resume" in row] == [stop]
    assert {row["step"] for row in rows if "eval/val_loss" in row} == {10, 20, 30}
    assert {row["step"] for row in rows if "bench/scores/ptbr_test_mc/acc_norm" in row} == {10, 20, 30}
    metrics = {k for row in rows for k in row}
    for key in (
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_s",
        "train/data_wait_share",
        "train/memory_gib",
        "eval/val_loss_by_position/0-8",
        "eval/val_loss_by_position/8-32",
        "bench/overhead",
    ):
        assert key in metrics, key


def test_no_credential_reaches_the_wandb_directory(run, tiny_dataset):
    secrets = [tiny_dataset.env[k].encode() for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    files = [f for f in (run / "wandb").rglob("*") if f.is_file()]
    assert len(files) > 4
    for f in files:
        data = f.read_bytes()
        assert not any(s in data for s in secrets), f
    [config] = list((run / "wandb").glob("offline-run-*/files/config.yaml"))[:1] or [None]
    if config is not None:  # W&B writes the config at the end of a launch
        assert "zero" in config.read_text() and "wandb" in config.read_text()


def test_benchmarks_during_training_score_the_gathered_weights(run, tmp_path):
    """The step-10 benchmark ran on 2 ZeRO-3 ranks (weights gathered); ptbr's harness on the export of the
    step-10 checkpoint gets the same scores."""
    from ptbr.bench.results import flat_scores, summarize
    from ptbr.bench.runner import evaluate, prepare
    from ptbr.infer.harness import PtbrLM

    benches = {r["step"]: r for r in read_metrics(run) if r["kind"] == "bench"}
    assert sorted(benches) == [10, 20, 30]
    assert all(r["seconds"] > 0 and r["overhead"] > 0 for r in benches.values())
    out = tmp_path / "export10"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ptbr.cli",
            "export",
            "10",
            str(out),
            "--run-dir",
            str(run),
            "--dtype",
            "fp32",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=run_env(),
        timeout=300,
    )
    assert proc.returncode == 0, describe(proc)
    assert json.loads((run / "checkpoints" / layout.tag_for(10) / layout.STATE).read_text())["world_size"] == 2
    tm, tasks = prepare(["ptbr_test_mc", "ptbr_test_gen"], [str(run.parent / "tasks")])
    lm = PtbrLM(path=str(out), device="cpu", batch_size=4)
    ours = flat_scores(summarize(evaluate(lm, tm, tasks, limit=8), lm.get_model_info()))
    assert ours == pytest.approx(benches[10]["scores"], abs=1e-9)


def test_dashboard_shows_the_run(run, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ptbr.cli", "plot", str(run), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, describe(proc)
    png = tmp_path / "dashboard.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000
    if os.environ.get("PTBR_KEEP_DASHBOARD"):  # to look at it
        Path(os.environ["PTBR_KEEP_DASHBOARD"]).write_bytes(png.read_bytes())
