"""Shared test set-up: deterministic CPU execution, small thread counts."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Without a GPU, Triton kernels run in the interpreter; it must be chosen before triton is imported.
HAS_CUDA_DEVICE = os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")
if not HAS_CUDA_DEVICE:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("PTBR_TEST_THREADS", "2")))


SERVER_FIXTURES = {"s3_server", "tiny_dataset"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tiers: a test that needs the S3 server is ``slow`` (so are the multi-process modules, marked in
    the module); ``bash tools/test.sh -m "not slow"`` is the fast tier for day-to-day work."""
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real SeaweedFS S3 server on 127.0.0.1 (ptbr.devtools.local_s3), shared by the session, killed at the end."""
    from ptbr.devtools.local_s3 import LocalS3Server

    server = LocalS3Server(tmp_path_factory.mktemp("s3server")).start()
    yield server
    server.stop()


# The published tiny dataset (real CLI pipeline on the real S3 server), shared by training tests.
from tests.fixtures_train import tiny_dataset  # noqa: E402, F401
