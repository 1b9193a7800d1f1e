"""Checkpoints under real failures: kill -9, kill during a save, SIGTERM, truncated files, and
elastic resumes: tests/test_elastic_resume.py (2 gloo ranks, real S3 data)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from ptbr.checkpoint import layout
from tests.helpers.train_harness import (
    REPO,
    describe,
    last_step,
    read_metrics,
    resumes,
    samples_by_step,
    start_ranks,
    torchrun,
    train_args,
    train_losses,
    wait_all,
    wait_for,
)

pytestmark = pytest.mark.slow  # real multi-process runs / servers

STEPS = 40
COMMON = (
    f"train.max_steps={STEPS}",
    "train.log_every=1",
    "train.eval_every=0",
    "train.checkpoint_every=10",
    "precision=fp32",
    "debug.record_samples=true",
)


def committed(run_dir: Path, step: int) -> bool:
    return (run_dir / "checkpoints" / layout.tag_for(step) / layout.MARKER).is_file()


def wait_until_gone(procs) -> None:
    """Every process of each rank's group has exited (loader workers too). A restart while they still map the
    killed job's shared memory would meet its records; Slurm never lets that happen (it waits for the whole
    step to die before the next one starts), so neither do the tests."""
    groups = {p.pid for p in procs}

    def gone() -> bool:
        for q in psutil.process_iter(["status"]):
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(q.pid) in groups and q.info["status"] != psutil.STATUS_ZOMBIE:
                    return False
        return True

    wait_for(gone, timeout=60, what="every process of the killed job to exit")


def kill_all(procs) -> None:
    """SIGKILL every process of each rank's group and wait until all of them are gone."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    wait_all(procs, timeout=60)
    wait_until_gone(procs)


@pytest.fixture(scope="module")
def reference(tiny_dataset, tmp_path_factory) -> Path:
    """The uninterrupted 2-rank run every interrupted one is compared with."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = torchrun(2, train_args(run_dir, tiny_dataset.url, *COMMON), tiny_dataset.env)
    assert proc.returncode == 0, describe(proc)
    return run_dir


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag=layout.tag_for(STEPS))


def test_kill9_of_a_rank_then_autoresume_is_bit_exact(reference, tiny_dataset, tmp_path) -> None:
    run_dir = tmp_path / "run"
    args = train_args(run_dir, tiny_dataset.url, *COMMON)
    procs = start_ranks(2, args, tiny_dataset.env, tmp_path / "logs1")
    wait_for(lambda: committed(run_dir, 10) and last_step(run_dir) >= 13, what="step 13")
    os.killpg(procs[1].pid, signal.SIGKILL)  # one rank dies; the other must not hang
    codes = wait_all(procs, timeout=120)
    assert codes[0] != 0 and codes[1] == -signal.SIGKILL
    assert not committed(run_dir, 20)
    wait_until_gone(procs)

    proc = torchrun(2, [*args, "--resume", "auto"], tiny_dataset.env)
    assert proc.returncode == 0, describe(proc)
    assert resumes(run_dir) == [(10, "native", 2, 2)]
    assert train_losses(run_dir) == train_losses(reference)  # bit-exact floats
    assert samples_by_step(run_dir) == samples_by_step(reference)
    ours, theirs = final_weights(run_dir), final_weights(reference)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_kill_during_a_save_resumes_from_the_previous_checkpoint(tiny_dataset, tmp_path) -> None:
    run_dir = tmp_path / "run"
    args = train_args(
        run_dir, tiny_dataset.url, *COMMON, "debug.pause_before_commit_s=120", "debug.pause_at_steps=[20]"
    )
    procs = start_ranks(2, args, tiny_dataset.env, tmp_path / "logs")
    log0 = tmp_path / "logs" / "rank0.log"
    wait_for(
        lambda: log0.exists() and "pausing 120.0 s before committing step_00000020" in log0.read_text(),
        timeout=180,
        what="the save of step 20",
    )
    kill_all(procs)
    ck20 = run_dir / "checkpoints" / "step_00000020"
    assert ck20.is_dir() and not (ck20 / layout.MARKER).exists()  # written, never committed
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000010"

    proc = torchrun(2, train_args(run_dir, tiny_dataset.url, *COMMON), tiny_dataset.env)
    assert proc.returncode == 0, describe(proc)
    assert "skipping checkpoint step_00000020: step_00000020 has no COMPLETE.json" in proc.stderr
    assert resumes(run_dir) == [(10, "native", 2, 2)]
    assert committed(run_dir, STEPS)


def test_sigterm_saves_and_exits_with_the_requeue_code(tiny_dataset, tmp_path) -> None:
    run_dir = tmp_path / "run"
    args = train_args(
        run_dir,
        tiny_dataset.url,
        *COMMON,
        "train.checkpoint_every=0",
        "train.max_steps=400",
        "debug.pause_before_commit_s=2",
    )
    procs = start_ranks(2, args, tiny_dataset.env, tmp_path / "logs")
    wait_for(lambda: last_step(run_dir) >= 5, what="step 5")
    for p in procs:  # as Slurm does: every task gets the signal
        os.kill(p.pid, signal.SIGTERM)
    log0 = tmp_path / "logs" / "rank0.log"
    wait_for(lambda: "debug: pausing" in log0.read_text(), what="the preemption save")
    for p in procs:  # a second signal in the middle of the save changes nothing
        os.kill(p.pid, signal.SIGTERM)
    assert wait_all(procs, timeout=120) == [75, 75]
    latest = layout.newest_usable(run_dir / "checkpoints", print)
    assert latest is not None and latest.step >= 5
    assert "received SIGTERM: will checkpoint and exit after this step" in log0.read_text()

    resume = train_args(
        run_dir, tiny_dataset.url, *COMMON, "train.checkpoint_every=0", f"train.max_steps={latest.step + 3}"
    )
    proc = torchrun(2, resume, tiny_dataset.env)
    assert proc.returncode == 0, describe(proc)
    assert resumes(run_dir) == [(latest.step, "native", 2, 2)]
    assert committed(run_dir, latest.step + 3)


def test_evaluation_does_not_depend_on_world_size(reference, tiny_dataset, tmp_path) -> None:
    """Resume the reference's final checkpoint at 1 rank and evaluate it again (no training steps)."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    src = reference / "checkpoints" / layout.tag_for(STEPS)
    subprocess.run(["cp", "-r", str(src), str(run_dir / "checkpoints")], check=True)
    proc = torchrun(1, train_args(run_dir, tiny_dataset.url, *COMMON), tiny_dataset.env)
    assert proc.returncode == 0, describe(proc)
    ev1 = [r for r in read_metrics(run_dir) if r["kind"] == "eval"][-1]
    ev2 = [r for r in read_metrics(reference) if r["kind"] == "eval"][-1]
    assert ev1["step"] == ev2["step"] == STEPS and ev1["val_tokens"] == ev2["val_tokens"]
    assert ev1["val_loss"] == pytest.approx(ev2["val_loss"], rel=1e-6)


def test_truncated_newest_checkpoint_falls_back(reference, tiny_dataset, tmp_path) -> None:
    run_dir = tmp_path / "run"
    subprocess.run(["cp", "-r", str(reference), str(run_dir)], check=True)
    newest = run_dir / "checkpoints" / layout.tag_for(STEPS)
    shard = newest / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    proc = torchrun(2, train_args(run_dir, tiny_dataset.url, *COMMON, f"train.max_steps={STEPS + 2}"), tiny_dataset.env)
    assert proc.returncode == 0, describe(proc)
    assert f"skipping checkpoint {newest.name}: {newest.name}/{shard.name} has" in proc.stderr
    assert resumes(run_dir)[-1] == (30, "native", 2, 2)


def test_refuses_to_silently_start_over(reference, tiny_dataset, tmp_path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step_00000010").mkdir(parents=True)  # only an incomplete one
    args = train_args(run_dir, tiny_dataset.url, *COMMON, "train.max_steps=2")

    def ptbr_train(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ptbr.cli", "train", *args, *extra],
            env=tiny_dataset.env,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=300,
        )

    proc = ptbr_train()
    assert proc.returncode != 0 and "holds 1 checkpoint(s) but none is complete" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = ptbr_train("--allow-fresh-start")
    assert proc.returncode == 0, describe(proc)
    assert list((run_dir / "checkpoints").glob("discarded-*/step_00000010"))

    changed = train_args(tmp_path / "copy", tiny_dataset.url, *COMMON, "model.n_layer=3")
    subprocess.run(["cp", "-r", str(reference), str(tmp_path / "copy")], check=True)
    proc = subprocess.run(
        [sys.executable, "-m", "ptbr.cli", "train", *changed],
        env=tiny_dataset.env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode != 0 and "was written for a different model" in proc.stderr


def test_an_optimizer_that_does_not_match_its_record_stops_the_resume(tiny_dataset, tmp_path):
    """End to end: the optimizer record of a checkpoint says another weight decay than the optimizer DeepSpeed
    loads (as a load that silently mixed up the param groups would): the resumed run stops with one line naming
    the difference, before any step, on every rank."""
    run_dir = tmp_path / "run"
    proc = torchrun(2, train_args(run_dir, tiny_dataset.url, *COMMON, "train.max_steps=10"), tiny_dataset.env)
    assert proc.returncode == 0, describe(proc)
    state = run_dir / "checkpoints" / layout.tag_for(10) / layout.STATE
    text = state.read_text()
    assert '"weight_decay": 0.01' in text  # the decay group (tiny_cpu.yaml)
    state.write_text(text.replace('"weight_decay": 0.01', '"weight_decay": 0.02', 1))  # same size: still complete
    procs = start_ranks(
        2, train_args(run_dir, tiny_dataset.url, *COMMON, "train.max_steps=12"), tiny_dataset.env, tmp_path / "logs"
    )
    assert wait_all(procs) == [2, 2]
    log = (tmp_path / "logs" / "rank0.log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("ptbr: error:")]
    assert (
        len(errors) == 1
        and "does not match the checkpoint: decay: weight_decay is 0.01, the checkpoint has 0.02" in errors[0]
    ), log[-3000:]
    assert "Traceback" not in log and last_step(run_dir) == 10
