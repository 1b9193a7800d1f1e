"""Streaming reader: a published (s3://) or local dataset as a StreamingDataset of token samples.

Typical use in a training process (every rank, before building any DataLoader)::

    from ptbr.data import prepare_streaming_env, build_dataset
    prepare_streaming_env()
    ds = build_dataset("s3://bucket/ptbr/v1", "train", cache_root="/scratch/ptbr-cache",
                       batch_size=per_rank_batch, shuffle=True, seed=1234, num_canonical_nodes=8)
    if resume_state is not None:
        ds.load_state_dict(resume_state)        # BEFORE the first iteration (see TokenDataset)
    loader = torch.utils.data.DataLoader(ds, batch_size=per_rank_batch, num_workers=2)

Cache safety: shards are cached under ``cache_root/<dataset_hash[:16]>/<split>``, and the
dataset hash covers every shard's xxh64 (through index.json), so a re-published remote gets a
new directory and never serves stale samples; index.json is downloaded by us and checked against
the manifest, and shards are validated (xxh64) on download.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptbr.data.cache import check_cached_shards
from ptbr.data.faults import download_attempts, install_retry_logging
from ptbr.data.hashing import sha256_bytes
from ptbr.data.manifest import INDEX, MANIFEST, SUCCESS, parse_manifest, success_matches
from ptbr.data.s3 import is_s3
from ptbr.data.store import open_store
from ptbr.dist import local_world_size
from ptbr.errors import DataError
from ptbr.log import info

if TYPE_CHECKING:
    from ptbr.data.token_dataset import TokenDataset

_ENV_DONE = "PTBR_STREAMING_ENV"
_TMP_ENV = "PTBR_STREAMING_TMPDIR"


def read_manifest(source: str) -> dict[str, Any]:
    """The manifest of a dataset directory or a published s3:// prefix.

    Remotely the prefix must be committed: ``_SUCCESS`` present and equal to sha256(manifest.json).
    """
    store = open_store(source)
    data = store.get(MANIFEST)
    if data is None:
        raise DataError(f"{source}: no {MANIFEST} (not a ptbr dataset, or its build/publish did not finish)")
    if store.remote:
        success = store.get(SUCCESS)
        if success is None:
            raise DataError(f"{source}: no {SUCCESS} marker: the dataset is not (completely) published; "
                            f"re-run 'ptbr shards publish'")
        if not success_matches(success, data):
            raise DataError(f"{source}: {SUCCESS} does not match {MANIFEST} (a publish is in progress or was "
                            f"interrupted); re-run 'ptbr shards publish'")
    return parse_manifest(data, source)


# ------------------------------------------------------------------------------ environment
def job_key() -> str:
    """An id shared by the ranks of one job on a node and distinct between concurrent jobs."""
    if os.environ.get("PTBR_JOB_ID"):
        return os.environ["PTBR_JOB_ID"]
    if os.environ.get("SLURM_JOB_ID"):
        parts = [os.environ["SLURM_JOB_ID"], os.environ.get("SLURM_STEP_ID", ""),
                 os.environ.get("SLURM_RESTART_COUNT", "")]
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
    from ptbr.data.shm import clean_stale_streaming_shm

    if job_id:
        os.environ["PTBR_JOB_ID"] = job_id
    report: dict[str, Any] = {}
    lws, source = local_world_size()
    os.environ["LOCAL_WORLD_SIZE"] = str(lws)
    report["local_world_size"] = (lws, source)
    key = job_key()
    if os.environ.get(_ENV_DONE) != key:
        base = Path(os.environ.get("TMPDIR") or tempfile.gettempdir())
        tmp = base / f"ptbr-{os.geteuid()}-{key}"
        tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.environ[_TMP_ENV] = str(tmp)
        os.environ[_ENV_DONE] = key
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
    import time

    cutoff = time.time() - max_age_s
    prefix = f"ptbr-{os.geteuid()}-"
    for d in base.glob(prefix + "*"):
        try:
            if d == keep or not d.is_dir() or d.is_symlink():
                continue
            key = d.name[len(prefix):]
            dead_pid = key.startswith("pid") and key[3:].isdigit() and not Path(f"/proc/{key[3:]}").exists()
            newest = max([d.stat().st_mtime, *(p.stat().st_mtime for p in d.iterdir())])
            if dead_pid or newest < cutoff:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            continue


# --------------------------------------------------------------------------------- dataset
def dataset_cache_dir(cache_root: str | os.PathLike[str], manifest: dict[str, Any], split: str) -> Path:
    """Where a split of this dataset version is cached: one directory per dataset hash."""
    return Path(cache_root) / manifest["dataset_hash"][:16] / split


def join_source(source: str, *parts: str) -> str:
    if is_s3(source):
        return "/".join([source.rstrip("/"), *parts])
    return str(Path(source).resolve().joinpath(*parts))


def place_index(source: str, split: str, local: Path, manifest: dict[str, Any]) -> None:
    """Download the split's index.json into the cache, verified against the manifest."""
    want = manifest["splits"][split]["index_sha256"]
    target = local / INDEX
    if target.is_file() and sha256_bytes(target.read_bytes()) == want:
        return
    data = open_store(source).get(f"{split}/{INDEX}")
    if data is None:
        raise DataError(f"{source}: {split}/{INDEX} is missing")
    if sha256_bytes(data) != want:
        raise DataError(f"{source}: {split}/{INDEX} does not match the manifest (the dataset changed while "
                        f"being read, or is damaged: run 'ptbr shards verify {source}')")
    local.mkdir(parents=True, exist_ok=True)
    tmp = local / f".{INDEX}.{os.getpid()}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, target)


def default_num_canonical_nodes(shuffle_algo: str, physical_nodes: int) -> int:
    """The value streaming picks when none is given (``StreamingDataset._resume``): 64 per node for the
    py1s/py2s shuffles, one per node otherwise. Resolved here, in the process that saves the resume
    state: streaming resolves it lazily inside whichever process iterates, so with DataLoader workers
    the main process never learns it and a saved state would carry ``None``, which streaming refuses
    on the resume."""
    return (64 if shuffle_algo in ("py1s", "py2s") else 1) * max(1, physical_nodes)


def working_node_counts(num_canonical_nodes: int, limit: int = 128) -> list[int]:
    """Node counts a run with ``num_canonical_nodes`` can use (streaming requires that one divides the
    other), up to ``limit``."""
    return [n for n in range(1, limit + 1) if num_canonical_nodes % n == 0 or n % num_canonical_nodes == 0]


def check_canonical_nodes(num_canonical_nodes: int, nodes: int, samples: int, key: str = "data.num_canonical_nodes",
                          ) -> None:
    """One line, before any work, instead of streaming's error inside a loader: the node count must
    divide ``num_canonical_nodes`` or be a multiple of it, and every canonical node needs samples."""
    if num_canonical_nodes > samples:
        raise DataError(f"{key}={num_canonical_nodes} exceeds the {samples} training samples (every canonical node "
                        f"needs at least one); set {key} to a value <= {samples} that your node counts divide")
    if num_canonical_nodes % nodes and nodes % num_canonical_nodes:
        works = ", ".join(map(str, working_node_counts(num_canonical_nodes, limit=max(64, 2 * nodes))))
        raise DataError(f"{nodes} nodes cannot read a stream of {num_canonical_nodes} canonical nodes (one must divide "
                        f"the other); node counts that work: {works}. The canonical node count is fixed when a run "
                        f"starts: choose {key} divisible by every node count you may use (e.g. 6720)")


def physical_nodes() -> int:
    """Nodes of this job as streaming counts them (WORLD_SIZE / LOCAL_WORLD_SIZE)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return max(1, world // local_world_size()[0])


def prepare_split_cache(source: str, split: str, cache_root: str, manifest: dict[str, Any]) -> Path:
    """The split's cache directory with its verified index, cached shards checked (once per job and node)."""
    local = dataset_cache_dir(cache_root, manifest, split)
    place_index(source, split, local, manifest)
    check_cached_shards(local, json.loads((local / INDEX).read_text(encoding="utf-8")), job_key(), info)
    return local


def streaming_options(streaming_kwargs: dict[str, Any], num_canonical_nodes: int | None, download_retry_s: float,
                      download_timeout_s: float) -> int:
    """Fill ``streaming_kwargs`` with ptbr's defaults (hash check, retries, timeout; retry log lines on) and
    return the canonical node count to use (streaming's own default, resolved here: see
    :func:`default_num_canonical_nodes`)."""
    install_retry_logging()
    streaming_kwargs.setdefault("validate_hash", "xxh64")
    streaming_kwargs.setdefault("download_retry", download_attempts(download_retry_s))
    streaming_kwargs.setdefault("download_timeout", download_timeout_s)
    if num_canonical_nodes is None:
        num_canonical_nodes = default_num_canonical_nodes(streaming_kwargs.get("shuffle_algo", "py1e"),
                                                          physical_nodes())
    return num_canonical_nodes


def build_dataset(source: str, split: str, *, cache_root: str, batch_size: int, shuffle: bool, seed: int,
                  num_canonical_nodes: int | None = None, download_retry_s: float = 300.0,
                  download_timeout_s: float = 60.0, **streaming_kwargs: Any) -> TokenDataset:
    """A TokenDataset over ``split`` of the dataset at ``source`` (s3://bucket/prefix or a directory).

    Items are ``{"input": int64[seq_len], "target": int64[seq_len], "sample_id": int}``.
    ``streaming_kwargs`` go to StreamingDataset (predownload, cache_limit, shuffle_algo, ...);
    ``validate_hash`` defaults to "xxh64". A shard download is retried (streaming's backoff, botocore's
    adaptive mode) for at least ``download_retry_s`` seconds; cached shards that no longer match the
    published hashes are deleted first (once per job and node) so that they are downloaded again.
    """
    from ptbr.data.token_dataset import TokenDataset

    if os.environ.get(_ENV_DONE) is None:
        prepare_streaming_env()
    source = str(source).rstrip("/") if is_s3(source) else str(source)
    manifest = read_manifest(source)
    if split not in manifest["splits"]:
        raise DataError(f"{source}: no split {split!r} (has {', '.join(manifest['splits'])})")
    local = prepare_split_cache(source, split, cache_root, manifest)
    num_canonical_nodes = streaming_options(streaming_kwargs, num_canonical_nodes, download_retry_s,
                                            download_timeout_s)
    # streaming's default (8 batches) is far less than one shard of our small samples, and makes the
    # iterator wait on its "ready" thread every few dozen samples; two shards ahead costs no more disk
    split_info = manifest["splits"][split]
    per_shard = -(-int(split_info["samples"]) // max(int(split_info["shards"]), 1))
    streaming_kwargs.setdefault("predownload", max(8 * batch_size, 2 * per_shard))
    try:
        with streaming_tempdir():
            ds = TokenDataset(manifest=manifest, source=source, retry_window_s=download_retry_s,
                              remote=join_source(source, split), local=str(local), batch_size=batch_size,
                              shuffle=shuffle, shuffle_seed=seed, num_canonical_nodes=num_canonical_nodes,
                              **streaming_kwargs)
    except ValueError as exc:
        if "Reused local directory" not in str(exc):
            raise
        raise DataError(f"{split} of dataset {manifest['dataset_hash'][:16]} is already open in this job: "
                        f"streaming allows one live dataset per cache directory ({local}); drop the other "
                        f"one first (del + gc.collect()) or use another cache_root") from None
    if ds.num_samples != manifest["splits"][split]["samples"]:
        raise DataError(f"{source}: {split} has {ds.num_samples} samples, manifest says "
                        f"{manifest['splits'][split]['samples']}")
    return ds
