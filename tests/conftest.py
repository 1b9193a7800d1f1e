"""Shared test set-up: deterministic CPU execution, small thread counts."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Without a GPU, Triton kernels run in the interpreter; it must be chosen before triton is imported.
HAS_CUDA_DEVICE = os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")
if not HAS_CUDA_DEVICE:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("PTBR_TEST_THREADS", "2")))


# Fixtures shared by many test modules: the S3 server and the published tiny dataset, the data tests' datasets.
pytest_plugins = ["tests.helpers.fixtures", "tests.helpers.data_fixtures"]
SERVER_FIXTURES = {"s3_server", "tiny_dataset"}
SYSTEM = Path(__file__).resolve().parent / "system"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tiers by place: everything under tests/system/ (real processes: multi-rank training, the S3 server, the
    Slurm daemons) is ``slow``; tests/unit/ is the fast tier (``bash tools/test.sh tests/unit``), and a unit
    test that asks for a server is in the wrong place."""
    for item in items:
        if SYSTEM in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.slow)
        elif servers := SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            raise pytest.UsageError(f"{item.nodeid} needs a server ({', '.join(sorted(servers))}): move it to "
                                    "tests/system/")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)
