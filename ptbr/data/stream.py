"""Reading a published dataset: one StreamingDataset of token samples over one source or a weighted mixture.

Typical use in a training process (every rank, before building any DataLoader)::

    from ptbr.data import prepare_streaming_env, build_dataset
    prepare_streaming_env()
    ds = build_dataset("s3://bucket/ptbr/v1", "train", cache_root="/scratch/ptbr-cache",
                       batch_size=per_rank_batch, shuffle=True, seed=1234, num_canonical_nodes=8)
    if resume_state is not None:
        ds.load_state_dict(resume_state)        # BEFORE the first iteration (see TokenDataset)
    loader = torch.utils.data.DataLoader(ds, batch_size=per_rank_batch, num_workers=2)

A single source is a mixture of one: :func:`build_dataset` takes a path or URL, or a list of weighted
sources (``data.sources``), and builds every dataset the same way (cache layout, index check, hash
validation, retries, predownload, canonical nodes, error messages, sample-count check).

Cache safety: shards are cached under ``cache_root/<dataset_hash[:16]>/<split>``, and the
dataset hash covers every shard's xxh64 (through index.json), so a re-published remote gets a
new directory and never serves stale samples; index.json is downloaded by us and checked against
the manifest, and shards are validated (xxh64) on download.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ptbr.data.cache import check_cached_shards
from ptbr.data.faults import download_attempts, install_retry_logging
from ptbr.data.hashing import sha256_bytes
from ptbr.data.manifest import INDEX
from ptbr.data.mixture import read_mixture
from ptbr.data.s3 import is_s3
from ptbr.data.store import open_store
from ptbr.data.streaming_env import ENV_DONE, job_key, prepare_streaming_env, streaming_tempdir
from ptbr.dist import local_world_size
from ptbr.errors import DataError
from ptbr.fsutil import atomic_write_bytes
from ptbr.log import info

if TYPE_CHECKING:
    from ptbr.data.token_dataset import TokenDataset


class Source(Protocol):
    """One weighted dataset of a mixture (the training config's ``SourceSpec`` is one)."""

    source: str
    weight: float

    def label(self) -> str: ...


@dataclass(frozen=True)
class OneSource:
    """A dataset on its own: the mixture of one that a plain path or URL stands for."""

    source: str
    weight: float = 1.0

    def label(self) -> str:
        return self.source


def as_sources(source: str | os.PathLike[str] | Sequence[Source]) -> list[Source]:
    """A path or URL as a mixture of one; a list of sources as it is. URLs lose a trailing slash."""
    specs: list[Source] = [OneSource(str(source))] if isinstance(source, str | os.PathLike) else list(source)
    if not specs:
        raise DataError("no data source given")
    return [
        OneSource(s.source.rstrip("/"), s.weight) if is_s3(s.source) and s.source.endswith("/") else s for s in specs
    ]


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
        raise DataError(
            f"{source}: {split}/{INDEX} does not match the manifest (the dataset changed while "
            f"being read, or is damaged: run 'ptbr shards verify {source}')"
        )
    local.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, data)


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


def check_canonical_nodes(
    num_canonical_nodes: int,
    nodes: int,
    samples: int,
    key: str = "data.num_canonical_nodes",
) -> None:
    """One line, before any work, instead of streaming's error inside a loader: the node count must
    divide ``num_canonical_nodes`` or be a multiple of it, and every canonical node needs samples."""
    if num_canonical_nodes > samples:
        raise DataError(
            f"{key}={num_canonical_nodes} exceeds the {samples} training samples (every canonical node "
            f"needs at least one); set {key} to a value <= {samples} that your node counts divide"
        )
    if num_canonical_nodes % nodes and nodes % num_canonical_nodes:
        works = ", ".join(map(str, working_node_counts(num_canonical_nodes, limit=max(64, 2 * nodes))))
        raise DataError(
            f"{nodes} nodes cannot read a stream of {num_canonical_nodes} canonical nodes (one must divide "
            f"the other); node counts that work: {works}; {key} is fixed when a run starts (e.g. 6720)"
        )


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


def streaming_options(
    streaming_kwargs: dict[str, Any],
    num_canonical_nodes: int | None,
    download_retry_s: float,
    download_timeout_s: float,
) -> int:
    """Fill ``streaming_kwargs`` with ptbr's defaults (hash check, retries, timeout; retry log lines on) and
    return the canonical node count to use (streaming's own default, resolved here: see
    :func:`default_num_canonical_nodes`)."""
    install_retry_logging()
    streaming_kwargs.setdefault("validate_hash", "xxh64")
    streaming_kwargs.setdefault("download_retry", download_attempts(download_retry_s))
    streaming_kwargs.setdefault("download_timeout", download_timeout_s)
    if num_canonical_nodes is None:
        num_canonical_nodes = default_num_canonical_nodes(
            streaming_kwargs.get("shuffle_algo", "py1e"), physical_nodes()
        )
    return num_canonical_nodes


def predownload_default(manifest: dict[str, Any], split: str, batch_size: int) -> int:
    """Samples to download ahead: two shards. streaming's default (8 batches) is far less than one shard of
    ptbr's small samples, and makes the iterator wait on its "ready" thread every few dozen samples; two
    shards ahead costs no more disk."""
    split_info = manifest["splits"][split]
    per_shard = -(-int(split_info["samples"]) // max(int(split_info["shards"]), 1))
    return max(8 * batch_size, 2 * per_shard)


def build_dataset(
    source: str | os.PathLike[str] | Sequence[Source],
    split: str,
    *,
    cache_root: str,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_canonical_nodes: int | None = None,
    download_retry_s: float = 300.0,
    download_timeout_s: float = 60.0,
    manifest: dict[str, Any] | None = None,
    **streaming_kwargs: Any,
) -> TokenDataset:
    """A TokenDataset over ``split`` of one dataset (s3://bucket/prefix or a directory) or of a weighted
    mixture of several (each source's share of the samples is its weight over the sum: streaming's
    ``Stream(proportion=...)``).

    Items are ``{"input": int64[seq_len], "target": int64[seq_len], "sample_id": int}``.
    ``manifest``: the one :func:`ptbr.data.mixture.read_mixture` returned for these sources, if the caller
    already read it. ``streaming_kwargs`` go to StreamingDataset (predownload, cache_limit, shuffle_algo,
    ...); ``validate_hash`` defaults to "xxh64". A shard download is retried (streaming's backoff, botocore's
    adaptive mode) for at least ``download_retry_s`` seconds; cached shards that no longer match the
    published hashes are deleted first (once per job and node) so that they are downloaded again.
    """
    from streaming import Stream

    from ptbr.data import shm_prefix
    from ptbr.data.token_dataset import TokenDataset

    if os.environ.get(ENV_DONE) is None:
        prepare_streaming_env()
    specs = as_sources(source)
    manifest = manifest or read_mixture(specs)
    if split not in manifest["splits"]:
        raise DataError(f"{specs[0].source}: no split {split!r} (has {', '.join(manifest['splits'])})")
    # one stream per source; a single one draws every sample once per epoch (no proportion)
    parts = manifest.get("mixture") or [{**manifest, "source": specs[0].source, "weight": None}]
    streams, locals_ = [], []
    for part in parts:
        local = prepare_split_cache(part["source"], split, cache_root, part)
        locals_.append(local)
        streams.append(Stream(remote=join_source(part["source"], split), local=str(local), proportion=part["weight"]))
    num_canonical_nodes = streaming_options(streaming_kwargs, num_canonical_nodes, download_retry_s, download_timeout_s)
    streaming_kwargs.setdefault("predownload", predownload_default(manifest, split, batch_size))
    shm_prefix.install()  # concurrent jobs on a node must not take the same shared-memory prefix
    try:
        with streaming_tempdir():
            ds = TokenDataset(
                manifest=manifest,
                source=specs[0].source,
                retry_window_s=download_retry_s,
                streams=streams,
                batch_size=batch_size,
                shuffle=shuffle,
                shuffle_seed=seed,
                num_canonical_nodes=num_canonical_nodes,
                **streaming_kwargs,
            )
    except ValueError as exc:
        if "Reused local directory" not in str(exc):
            raise
        raise DataError(
            f"{split} of dataset {manifest['dataset_hash'][:16]} is already open in this job (one per "
            "cache directory): drop the other (del + gc.collect()) or use another cache_root"
        ) from None
    if ds.num_samples != manifest["splits"][split]["samples"]:
        raise DataError(
            f"{specs[0].source}: {split} has {ds.num_samples} samples, manifest says "
            f"{manifest['splits'][split]['samples']}"
        )
    return ds
