"""Registering a dataset's shared-memory prefix when several jobs start on one node at the same moment.

mosaicml-streaming 0.13 (``streaming.base.shared.prefix.get_shm_prefix``) has every rank scan /dev/shm
for the first free prefix on its own; after a barrier the local leader creates ``<prefix>_locals`` and the
other ranks read it back. Two jobs that scan before either has created its segment pick the same prefix:
one leader dies with ``FileExistsError`` or a rank reads the other job's record ("shared memory registered
does not match local leader"). Two single-GPU jobs or array tasks sharing a node start like that.

:func:`register_shm_prefix` keeps streaming's scan and its checks (no local directory used twice), but only
the local leader scans, it creates the segment exclusively (``O_EXCL``: a prefix another job took in the
meantime makes it scan again), and the node's other ranks take the leader's prefix through an all-gather.
:func:`install` puts it in place of streaming's function for every dataset built afterwards.
"""

from __future__ import annotations

from typing import Any

from ptbr.errors import DataError

CLAIM_TRIES = 100


def _leader_claims(streams_local: list[str], streams_remote: list[str | None], retry: int) -> tuple[int, Any]:
    """The first free prefix, taken with an exclusive create; another job's claim in between means scan again."""
    from streaming.base.constant import LOCALS, SHM_TO_CLEAN
    from streaming.base.shared import SharedMemory
    from streaming.base.shared.prefix import _check_and_find_retrying, _get_path, _pack_locals

    for _ in range(CLAIM_TRIES):
        prefix_int = max(_check_and_find_retrying(streams_local, streams_remote, name, retry) for name in SHM_TO_CLEAN)
        data = _pack_locals(streams_local, prefix_int)
        try:
            shm = SharedMemory(_get_path(prefix_int, LOCALS), True, len(data))
        except FileExistsError:
            continue  # another job registered this prefix since the scan
        shm.buf[: len(data)] = data
        return prefix_int, shm
    raise DataError(
        f"could not register streaming's shared memory after {CLAIM_TRIES} tries (other jobs on this node "
        "kept taking the free prefix): start the job again"
    )


def _attach(streams_local: list[str], prefix_int: int) -> Any:
    """A non-leader rank: the leader's segment, checked to hold this rank's local directories."""
    from streaming.base.constant import LOCALS
    from streaming.base.shared import SharedMemory
    from streaming.base.shared.prefix import _get_path, _unpack_locals

    shm = SharedMemory(_get_path(prefix_int, LOCALS), False)
    their_locals, their_prefix = _unpack_locals(bytes(shm.buf))
    if their_locals != streams_local or their_prefix != prefix_int:
        raise DataError(
            f"the ranks of this node build the dataset in different local directories ({their_locals} on the "
            f"node's first rank, {streams_local} here): give every rank the same data.cache_dir"
        )
    return shm


def register_shm_prefix(
    streams_local: list[str], streams_remote: list[str | None], world: Any, retry: int = 100
) -> tuple[int, Any]:
    """Streaming's ``get_shm_prefix`` contract (prefix, ``locals`` segment), safe against concurrent jobs.

    Collective over the default process group when one is initialized (as streaming's own is)."""
    import torch.distributed as dist
    from streaming.base.shared import prefix as streaming_prefix

    streaming_prefix._check_self(streams_local)
    collective = dist.is_available() and dist.is_initialized()
    if not collective and world.ranks_per_node > 1:  # ranks without collectives: only streaming's way exists
        return streaming_prefix.get_shm_prefix(streams_local, streams_remote, world, retry)
    outcome: tuple[str, Any] = ("none", None)
    shm = None
    if world.is_local_leader:
        try:
            prefix_int, shm = _leader_claims(streams_local, streams_remote, retry)
            outcome = ("prefix", prefix_int)
        except Exception as exc:  # noqa: BLE001 - every rank of the node raises the leader's error
            outcome = ("error", exc)
    if collective:
        outcomes: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(outcomes, outcome)
        outcome = outcomes[world.node * world.ranks_per_node]
    kind, value = outcome
    if kind == "error":
        raise value
    if shm is None:
        shm = _attach(streams_local, value)
    return value, shm


def install() -> None:
    """Use :func:`register_shm_prefix` for every StreamingDataset built from now on (idempotent)."""
    import streaming.base.dataset as streaming_dataset

    streaming_dataset.get_shm_prefix = register_shm_prefix
