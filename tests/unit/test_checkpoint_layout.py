"""Checkpoint commit, discovery and retention on the filesystem (no DeepSpeed, no processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptbr.checkpoint import layout
from ptbr.checkpoint.checkpointer import apply_retention, commit


def fake_save(root: Path, step: int, world: int = 2, complete: bool = True, attempt_dir: Path | None = None) -> Path:
    """Write the files DeepSpeed + ptbr write for a ZeRO-2 checkpoint of ``world`` ranks."""
    path = attempt_dir or layout.new_checkpoint_dir(root, step)
    (path / "rng").mkdir(parents=True)
    (path / "mp_rank_00_model_states.pt").write_bytes(b"m" * 100)
    for r in range(world):
        (path / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"o" * (50 + r))
        (path / "rng" / f"rank_{r:05d}.pt").write_bytes(b"r" * 10)
    (path / layout.STATE).write_text(json.dumps({"step": step}))
    if complete:
        commit(path, world)
    return path


def test_commit_writes_marker_and_latest(tmp_path: Path) -> None:
    p = fake_save(tmp_path, 10)
    marker = json.loads((p / layout.MARKER).read_text())
    assert marker["files"]["zero_pp_rank_1_mp_rank_00_optim_states.pt"] == 51
    assert "rng/rank_00001.pt" in marker["files"]
    assert (tmp_path / layout.LATEST).read_text().strip() == "step_00000010"
    assert layout.newest_usable(tmp_path, print).tag == "step_00000010"


def test_commit_refuses_missing_rank_files(tmp_path: Path) -> None:
    p = fake_save(tmp_path, 10, complete=False)
    (p / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(RuntimeError, match="no optimizer state of rank 1"):
        commit(p, 2)
    (p / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"")
    with pytest.raises(RuntimeError, match="is empty"):
        commit(p, 2)
    assert not (p / layout.MARKER).exists() and not (tmp_path / layout.LATEST).exists()


def test_incomplete_and_truncated_checkpoints_are_skipped(tmp_path: Path) -> None:
    fake_save(tmp_path, 10)
    good = fake_save(tmp_path, 20)
    fake_save(tmp_path, 30, complete=False)  # killed before the marker
    warnings: list[str] = []
    assert layout.newest_usable(tmp_path, warnings.append) == layout.Checkpoint(good, 20, 0)
    assert "step_00000030 has no COMPLETE.json" in warnings[0]
    with open(good / "zero_pp_rank_0_mp_rank_00_optim_states.pt", "r+b") as f:
        f.truncate(7)
    warnings.clear()
    assert layout.newest_usable(tmp_path, warnings.append).step == 10
    assert "step_00000020/zero_pp_rank_0_mp_rank_00_optim_states.pt has 7 bytes, 50 were written" in warnings[1]


def test_new_dir_never_reuses_a_complete_checkpoint(tmp_path: Path) -> None:
    fake_save(tmp_path, 10)
    assert layout.new_checkpoint_dir(tmp_path, 10).name == "step_00000010.1"
    leftover = tmp_path / "step_00000020"
    leftover.mkdir()
    assert layout.new_checkpoint_dir(tmp_path, 20) == leftover
    later = fake_save(tmp_path, 10)
    assert later.name == "step_00000010.1"
    assert [c.tag for c in layout.list_checkpoints(tmp_path)] == ["step_00000010", "step_00000010.1", "step_00000020"]


def test_retention_keeps_newest_complete(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40):
        fake_save(tmp_path, step)
    fake_save(tmp_path, 35, complete=False)
    fake_save(tmp_path, 50, complete=False)  # newer than the newest complete one: may still be in progress
    removed = apply_retention(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["step_00000010", "step_00000020", "step_00000035"]
    assert [c.tag for c in layout.list_checkpoints(tmp_path)] == ["step_00000030", "step_00000040", "step_00000050"]
    # truncating the newest complete one makes the previous one the newest: it must survive
    with open(tmp_path / "step_00000040" / "mp_rank_00_model_states.pt", "r+b") as f:
        f.truncate(1)
    apply_retention(tmp_path, keep=2)
    assert (tmp_path / "step_00000030").is_dir()
