"""W&B records (flattening, redaction, the kept run id), the training config keys, and the dashboard drawn
from a synthetic metrics.jsonl with a preemption, an elastic resume and benchmark records."""

from __future__ import annotations

import json

import pytest

from ptbr.train.config import TrainLoopConfig
from ptbr.train.dashboard import bench_records
from ptbr.train.plots import plot_run
from ptbr.train.tracking import flatten, redact, run_id


def test_records_flatten_to_scalars_with_events_and_the_step():
    out = flatten(
        {"kind": "eval", "step": 20, "time": 1.0, "val_loss": 2.5, "val_loss_by_position": {"0-128": 2.7}, "note": "x"}
    )
    assert out == {"step": 20, "eval/val_loss": 2.5, "eval/val_loss_by_position/0-128": 2.7}
    assert flatten({"kind": "preempt", "step": 7, "checkpoint": "/c"}) == {"step": 7, "event/preempt": 1}


def test_secrets_are_dropped_from_the_config_and_the_run_id_is_kept(tmp_path):
    cfg = {"data": {"source": "s3://b/p", "aws_secret_access_key": "s", "token": "t"}, "x": [{"api_key": 1}]}
    assert redact(cfg) == {"data": {"source": "s3://b/p"}, "x": [{}]}
    first = run_id(tmp_path)
    assert len(first) == 8 and first.isalnum() and run_id(tmp_path) == first


def test_wandb_and_bench_keys_are_off_by_default():
    t = TrainLoopConfig()
    assert t.wandb.mode == "disabled" and t.bench_every == 0 and t.bench_tasks == "ptbr_core"
    with pytest.raises(ValueError):
        TrainLoopConfig(wandb={"mode": "sometimes"})


def synthetic_run(run_dir):
    records = [{"kind": "start", "step": 0, "time": 0, "world_size": 4, "parameters": 1000}]
    for s in range(1, 41):
        if s == 21:
            records.append(
                {"kind": "resume", "step": 20, "time": 900, "mode": "elastic", "saved_world_size": 4, "world_size": 2}
            )
        records.append(
            {
                "kind": "train",
                "step": s,
                "time": s * 10 + (800 if s > 20 else 0),
                "loss": 6 - s / 10,
                "lr": 1e-3,
                "tokens_per_s": 1000.0,
                "mfu": 0.4,
                "data_wait_share": 0.01,
                "memory_gib": 3.0,
                "tokens": s * 100,
                "eta_s": 10.0,
            }
        )
        if s % 10 == 0:
            records.append(
                {
                    "kind": "eval",
                    "step": s,
                    "time": s * 10,
                    "val_loss": 6 - s / 11,
                    "val_loss_a": 5.0,
                    "val_loss_b": 5.5,
                    "val_loss_by_position": {"0-128": 5.2, "128-512": 5.0},
                }
            )
            records.append({"kind": "bench", "step": s, "time": s * 10, "scores": {"t/acc": s / 100}})
        if s == 20:
            records.append({"kind": "preempt", "step": 20, "time": 205})
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "bench.jsonl").write_text(json.dumps({"step": 40, "scores": {"t/acc": 0.5}}) + "\n")


def test_dashboard_is_written_with_the_bench_curves_of_both_sources(tmp_path):
    synthetic_run(tmp_path / "run")
    written = plot_run(tmp_path / "run", tmp_path / "plots")
    assert tmp_path / "plots" / "dashboard.png" in written
    assert (tmp_path / "plots" / "dashboard.png").stat().st_size > 50_000
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert bench_records(records, tmp_path / "run") == {
        "t/acc": {10: 0.1, 20: 0.2, 30: 0.3, 40: 0.4},
        "t/acc (export)": {40: 0.5},
    }
