"""Elastic resume at another world size keeps the training trajectory (ZeRO 1, 2 and 3).

For every stage an uninterrupted run at 1 rank and one at 2 ranks serve both as references and as
the sources of the resumes: the step-20 checkpoint of one is resumed at the other world size and
trained 40 more steps. The resumed run must read exactly the reference's samples and follow its
loss curve. Only the float summation order of the gradient differs between 1 and 2 ranks (and so
between the source and the reference before step 20), which Adam amplifies to a few 1e-3; a
defect in the optimizer state after the load (collapsed param groups, a wrong Adam step) shows as
a drift that grows past 1e-2 (it reached 0.06 at ZeRO-3 before the fix).

The loader-worker settings are mixed on purpose: the 1-rank runs use ``num_workers=0``, the 2-rank
runs ``num_workers=2`` (DataConfig's default), so every resume also changes the worker count, and
``num_canonical_nodes`` is left at its default, as in a first run of a user's own config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ptbr.checkpoint import layout
from tests.helpers.train_harness import describe, resumes, samples_by_step, torchrun, train_args, train_losses

pytestmark = pytest.mark.slow

STEPS, RESUME_AT = 60, 20
COMMON = (
    f"train.max_steps={STEPS}",
    "train.log_every=1",
    "train.eval_every=0",
    "train.checkpoint_every=20",
    "train.keep_checkpoints=10",
    "precision=fp32",
    "debug.record_samples=true",
)
WORKERS = {1: 0, 2: 2}
TOLERANCE = 1e-2


@pytest.fixture(scope="module")
def uninterrupted(tiny_dataset, tmp_path_factory):
    """``get(stage, world)``: the run directory of an uninterrupted run (made once, on first use)."""
    root = tmp_path_factory.mktemp("elastic")
    made: dict[tuple[int, int], Path] = {}

    def get(stage: int, world: int) -> Path:
        if (stage, world) not in made:
            run_dir = root / f"zero{stage}_world{world}"
            args = train_args(
                run_dir, tiny_dataset.url, *COMMON, f"zero.stage={stage}", f"data.num_workers={WORKERS[world]}"
            )
            proc = torchrun(world, args, tiny_dataset.env)
            assert proc.returncode == 0, describe(proc)
            made[stage, world] = run_dir
        return made[stage, world]

    return get


def resume_from(source: Path, tag: str, run_dir: Path, world: int, dataset, *overrides: str):
    """Start a new run directory from ``source``'s checkpoint ``tag`` at ``world`` ranks."""
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(source / "checkpoints" / tag, run_dir / "checkpoints" / tag)
    args = train_args(run_dir, dataset.url, *COMMON, *overrides)
    proc = torchrun(world, args, dataset.env)
    assert proc.returncode == 0, describe(proc)
    return proc


def state_of(run_dir: Path, tag: str) -> dict:
    return json.loads((run_dir / "checkpoints" / tag / layout.STATE).read_text())


def after(steps: dict[int, list[int]] | dict[int, float], first: int) -> dict:
    return {s: v for s, v in steps.items() if s >= first}


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize(("before", "world"), [(1, 2), (2, 1)])
def test_elastic_resume_follows_the_uninterrupted_run(uninterrupted, tiny_dataset, tmp_path, stage, before, world):
    source, reference = uninterrupted(stage, before), uninterrupted(stage, world)
    run_dir = tmp_path / "run"
    resume_from(
        source,
        layout.tag_for(RESUME_AT),
        run_dir,
        world,
        tiny_dataset,
        f"zero.stage={stage}",
        f"data.num_workers={WORKERS[world]}",
    )

    assert resumes(run_dir) == [(RESUME_AT, "elastic", before, world)]

    # The optimizer after the elastic load (its record is written right after the load, from the live optimizer
    # at the new world size) against what it must be, independently of the repair that used the saved record:
    # the groups of the uninterrupted run at this world size (never repaired), the config's settings, Adam's
    # step, and the weights and both Adam moments, checksummed position by position on the new layout.
    saved = state_of(source, layout.tag_for(RESUME_AT))["optimizer"]
    again = state_of(run_dir, layout.tag_for(RESUME_AT, 1))
    assert again["world_size"] == world
    unrepaired = state_of(reference, layout.tag_for(RESUME_AT))["optimizer"]["groups"]
    assert again["optimizer"]["groups"] == unrepaired
    groups = {g["name"]: g for g in again["optimizer"]["groups"]}
    assert groups["decay"]["weight_decay"] == 0.01 and groups["no_decay"]["weight_decay"] == 0.0  # tiny_cpu.yaml
    assert groups["time_decay"]["lr_scale"] == 2.0 and {g["step"] for g in groups.values()} == {float(RESUME_AT)}
    assert set(again["optimizer"]["params"]) == set(saved["params"])
    for name, per_key in saved["params"].items():
        assert set(again["optimizer"]["params"][name]) == set(per_key) == {"fp32", "exp_avg", "exp_avg_sq"}
        for key, sums in per_key.items():
            assert again["optimizer"]["params"][name][key] == pytest.approx(sums, rel=1e-9, abs=1e-12), (name, key)

    # exactly the reference's samples at every step after the resume, none lost or read twice
    ours, ref = samples_by_step(run_dir), after(samples_by_step(reference), RESUME_AT)
    assert ours == ref and sorted(ours) == list(range(RESUME_AT, STEPS))

    losses, ref_losses = train_losses(run_dir), after(train_losses(reference), RESUME_AT + 1)
    assert sorted(losses) == sorted(ref_losses) == list(range(RESUME_AT + 1, STEPS + 1))
    worst = max(abs(losses[s] - ref_losses[s]) for s in ref_losses)
    assert worst < TOLERANCE, f"largest loss difference {worst:.4f} after the resume"


def test_same_size_resume_with_the_presets_loader_workers_is_bit_exact(uninterrupted, tiny_dataset, tmp_path):
    """2 -> 2 ranks with 4 loader workers (configs/train/1b5.yaml) and the default num_canonical_nodes:
    the resume that crashed in every loader worker before; now bit-exact against the reference."""
    reference = uninterrupted(2, 2)
    run_dir = tmp_path / "run"
    resume_from(reference, layout.tag_for(RESUME_AT), run_dir, 2, tiny_dataset, "zero.stage=2", "data.num_workers=4")
    assert [mode for _, mode, _, _ in resumes(run_dir)] == ["native"]
    assert samples_by_step(run_dir) == after(samples_by_step(reference), RESUME_AT)
    assert train_losses(run_dir) == after(train_losses(reference), RESUME_AT + 1)  # bit-exact floats
    data = state_of(reference, layout.tag_for(RESUME_AT))["data"]
    assert data["num_canonical_nodes"] == 1  # streaming's default for one node, resolved and saved


@pytest.mark.parametrize("overrides", [("data.shuffle=false",), ("data.num_canonical_nodes=4",)])
def test_resume_with_workers_for_other_stream_settings(tiny_dataset, tmp_path, overrides):
    """Shuffle off, or num_canonical_nodes set: the step-20 checkpoint of a 2-rank run with 2 loader
    workers, resumed at 1 rank with 2 workers, continues with what an uninterrupted 1-rank run reads."""
    common = (*COMMON, "zero.stage=2", "data.num_workers=2", *overrides)
    short = (*common, f"train.max_steps={RESUME_AT}")
    source, reference = tmp_path / "source", tmp_path / "reference"
    for run_dir, world, settings in ((source, 2, short), (reference, 1, common)):
        proc = torchrun(world, train_args(run_dir, tiny_dataset.url, *settings), tiny_dataset.env)
        assert proc.returncode == 0, describe(proc)
    run_dir = tmp_path / "run"
    resume_from(source, layout.tag_for(RESUME_AT), run_dir, 1, tiny_dataset, *common[len(COMMON) :])
    assert samples_by_step(run_dir) == after(samples_by_step(reference), RESUME_AT)
