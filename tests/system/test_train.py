"""DeepSpeed training on CPU: 2 gloo ranks, real S3 data, every launch path a user has."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import train_harness as h

pytestmark = pytest.mark.slow  # real multi-process runs

STEPS = 30
COMMON = (
    f"train.max_steps={STEPS}",
    "train.log_every=1",
    "train.eval_every=0",
    "train.checkpoint_every=0",
    "precision=fp32",
    "debug.record_samples=true",
)


@pytest.fixture(scope="module")
def stage_runs(tiny_dataset, tmp_path_factory) -> dict[int, Path]:
    """The same fp32 run at ZeRO 1, 2 and 3 with 2 ranks (h.torchrun)."""
    root = tmp_path_factory.mktemp("stages")
    runs = {}
    for stage in (1, 2, 3):
        run_dir = root / f"zero{stage}"
        proc = h.torchrun(2, h.train_args(run_dir, tiny_dataset.url, *COMMON, f"zero.stage={stage}"), tiny_dataset.env)
        assert proc.returncode == 0, h.describe(proc)
        assert "FutureWarning" not in proc.stderr  # DeepSpeed's deprecated collectives stay out of the job log
        runs[stage] = run_dir
    return runs


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_loss_falls(stage_runs, stage: int) -> None:
    losses = h.train_losses(stage_runs[stage])
    assert sorted(losses) == list(range(1, STEPS + 1))
    first = sum(losses[s] for s in range(1, 4)) / 3
    last = sum(losses[s] for s in range(STEPS - 2, STEPS + 1)) / 3
    assert all(math.isfinite(v) for v in losses.values())
    assert last < first - 1.0, (first, last)


def test_fp32_losses_agree_across_zero_stages(stage_runs) -> None:
    ref = h.train_losses(stage_runs[1])
    for stage in (2, 3):
        other = h.train_losses(stage_runs[stage])
        for step in ref:
            assert abs(other[step] - ref[step]) <= 1e-5 * max(1.0, abs(ref[step])), (stage, step)


def test_ranks_read_disjoint_samples_whose_union_is_the_one_rank_stream(stage_runs, tiny_dataset, tmp_path):
    per_rank = h.samples_by_rank(stage_runs[2])
    assert sorted(per_rank) == [0, 1]
    for step in range(STEPS):
        a, b = set(per_rank[0][step]), set(per_rank[1][step])
        assert len(a) == len(b) == 4 and not a & b
    # one process, `ptbr train` itself (no launcher): the same global batch of 8 as 1 x 4 x accum 2
    run_dir = tmp_path / "one_rank"
    args = h.train_args(run_dir, tiny_dataset.url, *COMMON, "train.max_steps=10", "zero.stage=2")
    proc = subprocess.run(
        [sys.executable, "-m", "ptbr.cli", "train", *args],
        env=tiny_dataset.env,
        capture_output=True,
        text=True,
        cwd=h.REPO,
        timeout=300,
    )
    assert proc.returncode == 0, h.describe(proc)
    one = h.samples_by_step(run_dir)
    two = h.samples_by_step(stage_runs[2])
    assert sorted(one) == list(range(10))
    assert all(one[s] == two[s] for s in range(10))
    seen = [i for s in range(STEPS) for i in two[s]]
    assert len(seen) == len(set(seen)) == STEPS * 8  # nothing read twice within the epoch


def test_metrics_files_and_plot(stage_runs, tmp_path) -> None:
    records = h.read_metrics(stage_runs[2])
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    for key in (
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "tokens_per_s_per_device",
        "data_wait_share",
        "memory_gib",
        "eta_s",
        "step_time_s",
        "tokens",
    ):
        assert all(key in r for r in train), key
    assert train[-1]["tokens"] == STEPS * 8 * 32
    assert 0 <= train[-1]["data_wait_share"] <= 1 and train[-1]["memory_gib"] > 0
    assert all("mfu" not in r for r in train)  # no known peak on CPU
    assert train[-1]["tokens_per_s"] == pytest.approx(2 * train[-1]["tokens_per_s_per_device"])
    assert (
        len(evals) == 1
        and evals[0]["step"] == STEPS
        and evals[0]["val_ppl"] == pytest.approx(math.exp(evals[0]["val_loss"]))
    )
    proc = subprocess.run(
        [sys.executable, "-m", "ptbr.cli", "plot", str(stage_runs[2]), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=h.REPO,
        timeout=120,
    )
    assert proc.returncode == 0, h.describe(proc)
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["dashboard.png", "loss.png", "lr.png", "throughput.png", "val_loss.png", "val_loss_by_position.png"]
    assert all((tmp_path / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def trained(launcher, run_dir: Path, dataset, *overrides: str) -> None:
    """A 2-rank run through ``launcher`` that must succeed (no evaluation but the final one)."""
    proc = launcher(2, h.train_args(run_dir, dataset.url, *overrides, "train.eval_every=0"), dataset.env)
    assert proc.returncode == 0, h.describe(proc)


def test_deepspeed_launcher_with_bf16(tiny_dataset, tmp_path) -> None:
    run_dir = tmp_path / "ds"
    trained(
        h.deepspeed_launcher,
        run_dir,
        tiny_dataset,
        "train.max_steps=6",
        "train.log_every=3",
        "precision=bf16",
        "zero.stage=1",
    )
    losses = h.train_losses(run_dir)
    assert sorted(losses) == [3, 6] and all(math.isfinite(v) for v in losses.values())
    [start] = [r for r in h.read_metrics(run_dir) if r["kind"] == "start"]
    assert (start["world_size"], start["launcher"], start["zero_stage"]) == (2, "deepspeed", 1)
    assert start["precision"] == "bf16"


@pytest.mark.parametrize(
    ("stage", "precision"),
    [(3, "fp32"), (2, "bf16"), (1, "bf16")],
    ids=["zero3-fp32", "zero2-bf16 (the presets)", "zero1-bf16 (BF16_Optimizer)"],
)
def test_nonfinite_loss_skips_the_update(tiny_dataset, tmp_path, stage, precision) -> None:
    """Where the presets run too: bf16 at ZeRO-2, and ZeRO-1 in bf16, whose DeepSpeed optimizer is another class
    (BF16_Optimizer): a NaN loss on one rank skips the update on both and is counted."""
    run_dir = tmp_path / "nan"
    trained(
        h.torchrun,
        run_dir,
        tiny_dataset,
        "train.max_steps=6",
        "train.log_every=1",
        f"zero.stage={stage}",
        f"precision={precision}",
        "debug.nonfinite_loss_at_steps=[2]",
    )
    records = [r for r in h.read_metrics(run_dir) if r["kind"] == "train"]
    assert records[-1]["skipped_steps"] == 1
    assert math.isnan(records[2]["loss"]) and all(math.isfinite(r["loss"]) for r in records[3:])
    assert all(math.isfinite(r["val_loss"]) for r in h.read_metrics(run_dir) if r["kind"] == "eval")


def test_fp16_loss_scale_search_is_not_a_run_of_nonfinite_steps(tiny_dataset, tmp_path) -> None:
    """fp16 on 2 ranks (DeepSpeed runs it on this CPU), the loss scale starting at 2^32: DeepSpeed skips a
    dozen overflowing steps while it halves the scale. That is the scaler at work and must not trip the
    non-finite guard (5 in a row); the run then trains."""
    run_dir = tmp_path / "fp16"
    trained(
        h.torchrun,
        run_dir,
        tiny_dataset,
        "train.max_steps=60",
        "train.log_every=10",
        "precision=fp16",
        "zero.stage=2",
        "deepspeed.fp16.initial_scale_power=32",
        "train.checkpoint_every=0",
    )
    train = [r for r in h.read_metrics(run_dir) if r["kind"] == "train"]
    assert train[-1]["loss_scale_skips"] >= 10 and train[-1]["skipped_steps"] == train[-1]["loss_scale_skips"]
    assert train[-1]["loss_scale"] < 2.0**32 / 2**9
    finite = [r["loss"] for r in train if math.isfinite(r["loss"])]  # windows of skipped steps only: nan
    assert len(finite) >= 3 and finite[-1] < finite[0] - 0.5, finite


def test_nonfinite_guard_holds_under_fp16(tiny_dataset, tmp_path) -> None:
    """A non-finite loss is still a non-finite step under fp16, however high the loss scale."""
    args = h.train_args(
        tmp_path / "fp16nan",
        tiny_dataset.url,
        "train.max_steps=8",
        "precision=fp16",
        "debug.nonfinite_loss_at_steps=[2,3,4]",
        "train.max_nonfinite_in_row=3",
        "train.eval_every=0",
    )
    procs = h.start_ranks(2, args, tiny_dataset.env, tmp_path / "logs")
    assert h.wait_all(procs) == [3, 3]
    assert "stopping: 3 optimizer steps in a row" in (tmp_path / "logs" / "rank0.log").read_text()


def test_too_many_nonfinite_steps_stop_the_run(tiny_dataset, tmp_path) -> None:
    run_dir = tmp_path / "nan3"
    args = h.train_args(
        run_dir,
        tiny_dataset.url,
        "train.max_steps=8",
        "train.checkpoint_every=1",
        "debug.nonfinite_loss_at_steps=[2,3,4]",
        "train.max_nonfinite_in_row=3",
        "train.eval_every=0",
    )
    procs = h.start_ranks(2, args, tiny_dataset.env, tmp_path / "logs")
    assert h.wait_all(procs) == [3, 3]  # both ranks agree and stop at the same step
    logs = [(tmp_path / "logs" / f"rank{r}.log").read_text() for r in (0, 1)]
    errors = [line for line in logs[0].splitlines() if line.startswith("ptbr: error:")]
    assert len(errors) == 1
    assert "stopping: 3 optimizer steps in a row had a non-finite loss or gradient" in errors[0]
    assert f"the last good checkpoint is {run_dir / 'checkpoints' / 'step_00000002'}" in errors[0]
    assert all("Traceback" not in log for log in logs)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["model.vocab_size=256"], "tokenized with a 512-token vocabulary but model.vocab_size is 256"),
        (["data.seq_len=64"], "hold sequences of 32 tokens but data.seq_len is 64"),
        (["data.source=s3://train-data/missing"], "s3://train-data/missing"),
        (["optim.lrr=1"], "optim.lrr: unknown key"),
    ],
)
def test_user_errors_are_one_line(tiny_dataset, tmp_path, overrides: list[str], needle: str) -> None:
    args = h.train_args(tmp_path / "bad", tiny_dataset.url, *overrides)
    proc = subprocess.run(
        [sys.executable, "-m", "ptbr.cli", "train", *args],
        env=tiny_dataset.env,
        capture_output=True,
        text=True,
        cwd=h.REPO,
        timeout=300,
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ptbr: error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
