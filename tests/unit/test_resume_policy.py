"""The resume policy (ptbr.checkpoint.checkpointer.decide) on fake checkpoint directories: no processes,
no DeepSpeed. The multi-process tests (test_resume.py, test_elastic_resume.py) check that the plans load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptbr.checkpoint import layout
from ptbr.checkpoint.checkpointer import commit, decide
from ptbr.errors import CheckpointError

FP = {"model": "m1", "seq_len": "32", "dataset": "d1"}


def fake(
    root: Path, step: int, *, world: int = 2, batch: int = 8, fp: dict | None = None, complete: bool = True
) -> Path:
    path = layout.new_checkpoint_dir(root, step)
    (path / "rng").mkdir(parents=True)
    (path / "mp_rank_00_model_states.pt").write_bytes(b"m" * 10)
    for r in range(world):
        (path / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"o" * 10)
        (path / "rng" / f"rank_{r:05d}.pt").write_bytes(b"r")
    state = {"step": step, "world_size": world, "global_batch_size": batch, "fingerprint": fp or FP}
    (path / layout.STATE).write_text(json.dumps(state))
    if complete:
        commit(path, world)
    return path


def plan(root: Path, mode: str = "auto", *, world: int = 2, batch: int = 8, fp: dict | None = None, **flags):
    return decide(
        root, mode, fingerprint=fp or FP, world_size=world, global_batch_size=batch, log=lambda _m: None, **flags
    )


def test_empty_directory_is_a_fresh_start(tmp_path: Path) -> None:
    assert plan(tmp_path) is None and plan(tmp_path / "missing") is None
    assert plan(tmp_path, "never") is None


def test_auto_takes_the_newest_intact_checkpoint(tmp_path: Path) -> None:
    fake(tmp_path, 10)
    newest = fake(tmp_path, 20)
    fake(tmp_path, 30, complete=False)
    p = plan(tmp_path)
    assert (p.path, p.tag, p.elastic, p.load_dir) == (newest, "step_00000020", False, tmp_path)
    assert p.record["step"] == 20


def test_never_refuses_a_directory_with_checkpoints(tmp_path: Path) -> None:
    fake(tmp_path, 10)
    with pytest.raises(CheckpointError, match="--resume never would mix two runs"):
        plan(tmp_path, "never")


def test_explicit_path(tmp_path: Path) -> None:
    old = fake(tmp_path, 10)
    fake(tmp_path, 20)
    assert plan(tmp_path, str(old)).path == old
    with pytest.raises(CheckpointError, match="is not a ptbr checkpoint directory"):
        plan(tmp_path, str(tmp_path / "elsewhere"))
    broken = fake(tmp_path, 30, complete=False)
    with pytest.raises(CheckpointError, match="has no COMPLETE.json"):
        plan(tmp_path, str(broken))


def test_only_incomplete_checkpoints_refuse_unless_allowed(tmp_path: Path) -> None:
    fake(tmp_path, 10, complete=False)
    with pytest.raises(CheckpointError, match="holds 1 checkpoint\\(s\\) but none is complete"):
        plan(tmp_path)
    assert plan(tmp_path, allow_fresh_start=True) is None
    assert list(tmp_path.glob("discarded-*/step_00000010")) and not (tmp_path / "step_00000010").exists()


@pytest.mark.parametrize("key", ["model", "seq_len", "dataset"])
def test_changed_config_refused_unless_allowed(tmp_path: Path, key: str) -> None:
    fake(tmp_path, 10)
    other = {**FP, key: "changed"}
    with pytest.raises(CheckpointError, match=f"was written for a different {key}"):
        plan(tmp_path, fp=other)
    assert plan(tmp_path, fp=other, allow_config_change=True).tag == "step_00000010"


def test_other_world_size_is_elastic_and_keeps_the_global_batch(tmp_path: Path) -> None:
    fake(tmp_path, 10, world=2, batch=8)
    assert plan(tmp_path, world=2).elastic is False
    p = plan(tmp_path, world=4)
    assert p.elastic and p.load_dir == tmp_path  # converted by the Checkpointer, not by the policy
    with pytest.raises(CheckpointError, match="the same global batch: set batch.global_batch_size=8"):
        plan(tmp_path, world=4, batch=16)
