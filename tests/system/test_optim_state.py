"""ptbr.checkpoint.optim_state on real DeepSpeed engines (2 gloo ranks): the load check notices a changed
moment, a changed group setting and a shared Adam step counter, and ``repair`` undoes the last two."""

from __future__ import annotations

import pytest

from tests.helpers.train_harness import run_probe

pytestmark = pytest.mark.slow
CASES = ("zero1", "zero2", "zero3", "zero1_bf16")


@pytest.fixture(scope="module")
def findings(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("optim") / "findings.json"
    return run_probe("optim_probe.py", out, CASES, timeout=600)


@pytest.mark.parametrize("case", CASES)
def test_verify_and_repair(findings, case: str) -> None:
    f = findings[case]
    assert f["groups"] == ["no_decay", "time_decay", "decay"]
    assert f["steps"] == [3.0, 3.0, 3.0]
    assert f["clean"] == []
    assert f["moment"] == [f"values differ for {f['damaged']}.exp_avg"]  # heard on every rank
    assert "decay: weight_decay is 0.0, the checkpoint has 0.1" in f["hparams"]
    assert "several param groups share one Adam step counter" in f["hparams"]
    assert f["repair_log"] and "decay.weight_decay" in f["repair_log"][0]
    assert f["repaired"] == []
