"""mosaicml-streaming's process environment, made safe under any launcher (one job, one node, many ranks).

Streaming reads ``LOCAL_WORLD_SIZE`` to tell nodes apart, keeps file locks in the temporary directory (and
leaks two per dataset), and names shared-memory segments after the dataset: :func:`prepare_streaming_env`
sets all three up before any dataset is built; :func:`streaming_tempdir` gives each job its own lock
directory; stale segments are removed by ``ptbr.data.shm``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ptbr.data.shm import clean_stale_streaming_shm
from ptbr.dist import local_world_size

ENV_DONE = "PTBR_STREAMING_ENV"
_TMP_ENV = "PTBR_STREAMING_TMPDIR"


def job_key() -> str:
    """An id shared by the ranks of one job on a node and distinct between concurrent jobs."""
    if os.environ.get("PTBR_JOB_ID"):
        return os.environ["PTBR_JOB_ID"]
    if os.environ.get("SLURM_JOB_ID"):
        parts = [
            os.environ["SLURM_JOB_ID"],
            os.environ.get("SLURM_STEP_ID", ""),
            os.environ.get("SLURM_RESTART_COUNT", ""),
        ]
        return "slurm" + ".".join(p for p in parts if p)
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if run_id and run_id != "none":
        return "torchrun-" + run_id
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and os.environ.get("MASTER_PORT"):
        return f"{os.environ.get('MASTER_ADDR', 'localhost')}-{os.environ['MASTER_PORT']}"
    return f"pid{os.getpid()}"


def prepare_streaming_env(*, job_id: str | None = None, clean_shm: bool = True) -> dict[str, Any]:
    """Make mosaicml-streaming safe under any launcher; call before building datasets (idempotent).

    * ``LOCAL_WORLD_SIZE`` from LOCAL_SIZE (deepspeed), SLURM_NTASKS_PER_NODE / SLURM_GPUS_ON_NODE
      (srun), OMPI_COMM_WORLD_LOCAL_SIZE (mpirun) when missing; otherwise every rank believes it
      is a node of its own and ranks collide on shared-memory names.
    * a temporary directory per job for streaming's file locks (it leaks two per dataset and skips
      their prefixes), shared by all ranks of the job on the node since the locks must be common
      to them. Only streaming uses it (see :func:`streaming_tempdir`): the process's TMPDIR stays
      as it is, so e.g. torch's compile caches keep living across jobs.
    * stale streaming segments in /dev/shm removed, never a live one (see ptbr.data.shm).
    """
    if job_id:
        os.environ["PTBR_JOB_ID"] = job_id
    report: dict[str, Any] = {}
    lws, source = local_world_size()
    os.environ["LOCAL_WORLD_SIZE"] = str(lws)
    report["local_world_size"] = (lws, source)
    key = job_key()
    if os.environ.get(ENV_DONE) != key:
        base = Path(os.environ.get("TMPDIR") or tempfile.gettempdir())
        tmp = base / f"ptbr-{os.geteuid()}-{key}"
        tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.environ[_TMP_ENV] = str(tmp)
        os.environ[ENV_DONE] = key
        if key.startswith("pid"):  # a single process owns it: remove it when the process ends
            atexit.register(shutil.rmtree, tmp, True)
        _prune_old_job_dirs(base, keep=tmp)
    report["tmpdir"] = os.environ[_TMP_ENV]
    report["removed_shm"] = clean_stale_streaming_shm() if clean_shm else []
    return report


@contextlib.contextmanager
def streaming_tempdir() -> Iterator[str]:
    """Point ``tempfile.gettempdir()`` at the job's directory while a StreamingDataset is created.

    Streaming reads the temporary directory only in its constructor (lock paths are stored in the
    dataset, and travel with it to DataLoader workers), so the switch can be this narrow.
    """
    path = os.environ.get(_TMP_ENV)
    if not path:
        prepare_streaming_env()
        path = os.environ[_TMP_ENV]
    saved = tempfile.tempdir
    tempfile.tempdir = path
    try:
        yield path
    finally:
        tempfile.tempdir = saved


JOB_DIR_MAX_AGE_S = 7 * 24 * 3600


def _prune_old_job_dirs(base: Path, keep: Path, max_age_s: float = JOB_DIR_MAX_AGE_S) -> None:
    """Remove this user's per-job dirs of dead single processes, or untouched for a week.

    Ranks of a multi-process job cannot tell when the last of them is done with the directory, so
    they do not delete it at exit; a single process does (atexit), unless it ends by os._exit or a
    signal: then its dead pid gives it away here.
    """
    cutoff = time.time() - max_age_s
    prefix = f"ptbr-{os.geteuid()}-"
    for d in base.glob(prefix + "*"):
        try:
            if d == keep or not d.is_dir() or d.is_symlink():
                continue
            key = d.name[len(prefix) :]
            dead_pid = key.startswith("pid") and key[3:].isdigit() and not Path(f"/proc/{key[3:]}").exists()
            newest = max([d.stat().st_mtime, *(p.stat().st_mtime for p in d.iterdir())])
            if dead_pid or newest < cutoff:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            continue
