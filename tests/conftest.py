"""Shared test set-up: deterministic CPU execution, small thread counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch  # (does not import triton)

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Without a usable GPU, Triton kernels run in the interpreter; it must be chosen before triton is imported. The
# driver decides, not device files: a container may show /dev/nvidia* without a working GPU.
HAS_CUDA_DEVICE = torch.cuda.is_available()
if not HAS_CUDA_DEVICE:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Under CI (CI=true) a test may skip only for want of a GPU: any other skip (no root, a tool missing, a server
# that did not start) would hide a test that never ran, so it fails instead.
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
GPU_SKIP = ("CUDA", "GPU")

torch.set_num_threads(int(os.environ.get("PTBR_TEST_THREADS", "2")))


# Fixtures shared by many test modules: the S3 server and the published tiny dataset, the data tests' datasets.
pytest_plugins = ["tests.helpers.fixtures", "tests.helpers.data_fixtures"]
SERVER_FIXTURES = {"s3_server", "tiny_dataset"}
SYSTEM = Path(__file__).resolve().parent / "system"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tiers by place: everything under tests/system/ (real processes: multi-rank training, the S3 server, the
    Slurm daemons) is ``slow``; tests/unit/ less its several-second tests is the fast tier (``-m "not slow"``),
    and a unit test that asks for a server is in the wrong place."""
    for item in items:
        if SYSTEM in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.slow)
        elif servers := SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            raise pytest.UsageError(
                f"{item.nodeid} needs a server ({', '.join(sorted(servers))}): move it to tests/system/"
            )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped:
        reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
        if not any(word in reason for word in GPU_SKIP):
            report.outcome = "failed"
            report.longrepr = f"skipped under CI=true, where only a missing GPU may skip a test: {reason}"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)
