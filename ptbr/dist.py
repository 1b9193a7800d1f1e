"""Rank and world detection for every launcher, in one place.

Launchers disagree on what they export:

* ``torchrun``: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT.
* ``deepspeed`` launcher: the same, but LOCAL_SIZE instead of LOCAL_WORLD_SIZE (streaming reads
  LOCAL_WORLD_SIZE and otherwise believes every rank is its own node).
* Slurm ``srun`` (one task per GPU): only SLURM_* variables; DeepSpeed would then try MPI
  discovery and fail, so they are translated here.

:func:`setup` exports the complete torchrun-style set for everyone downstream (DeepSpeed's
``env://`` init, mosaicml-streaming) and initialises the process group.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import re
import socket
import sys
import warnings
from dataclasses import dataclass
from typing import Any

from ptbr.errors import AGREED_EXIT_CODES, PtbrError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun", "deepspeed", "slurm" or "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def node_rank(self) -> int:
        return self.rank // max(1, self.local_world_size)

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm node list such as ``gpu[01-03,07],login1`` into host names."""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for item in ranges.split(","):
            if "-" in item:
                lo, hi = item.split("-", 1)
                width = len(lo)
                hosts.extend(f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1))
            else:
                hosts.append(f"{prefix}{item}{suffix}")
    return hosts


def expand_tasks_per_node(spec: str) -> list[int]:
    """Expand SLURM_TASKS_PER_NODE such as ``4(x2),2`` into ``[4, 4, 2]``."""
    counts: list[int] = []
    for item in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if not m:
            raise PtbrError(f"cannot parse SLURM_TASKS_PER_NODE={spec!r}")
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    return counts


def deepspeed_hostfile(nodelist: str, slots: int) -> str:
    """A DeepSpeed/pdsh hostfile (``host slots=N`` per line) for a Slurm node list."""
    if slots <= 0:
        raise PtbrError(f"slots per node must be positive, got {slots}")
    return "".join(f"{host} slots={slots}\n" for host in expand_nodelist(nodelist))


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def _int_env(env: dict[str, str], *names: str) -> tuple[str, int] | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            head = value.split("(")[0].split(",")[0]  # SLURM forms like "4(x2)" or "4,4"
            if head.isdigit() and int(head) > 0:
                return name, int(head)
    return None


def local_world_size(env: dict[str, str] | None = None) -> tuple[int, str]:
    """Processes of this job on this node, and which variable said so (mosaicml-streaming needs it as
    LOCAL_WORLD_SIZE, which only torchrun sets)."""
    env = dict(os.environ if env is None else env)
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 1, "WORLD_SIZE<=1"
    found = _int_env(
        env,
        "LOCAL_WORLD_SIZE",
        "LOCAL_SIZE",
        "SLURM_NTASKS_PER_NODE",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
        "MPI_LOCALNRANKS",
        "SLURM_GPUS_ON_NODE",
    )
    if found is None:
        raise PtbrError(
            "cannot tell how many ranks run on this node: set LOCAL_WORLD_SIZE (torchrun does; "
            "the deepspeed launcher sets LOCAL_SIZE; srun needs --ntasks-per-node)"
        )
    name, value = found
    if world % value:
        raise PtbrError(
            f"{name}={value} does not divide WORLD_SIZE={world}; set LOCAL_WORLD_SIZE to the number of ranks per node"
        )
    return value, name


def _slurm_env(env: dict[str, str]) -> DistEnv:
    rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
    local_rank = int(env.get("SLURM_LOCALID", "0"))
    if "SLURM_TASKS_PER_NODE" in env:
        per_node = expand_tasks_per_node(env["SLURM_TASKS_PER_NODE"])
        local_world = per_node[int(env.get("SLURM_NODEID", "0"))]
    else:
        local_world = int(env.get("SLURM_NTASKS_PER_NODE", env.get("SLURM_GPUS_ON_NODE", "1")))
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
    master_addr = env.get("MASTER_ADDR") or expand_nodelist(nodelist)[0]
    # A job-specific port lets several jobs share a node without colliding.
    job_id = int(env.get("SLURM_JOB_ID", "0") or 0)
    master_port = int(env.get("MASTER_PORT") or 20000 + job_id % 20000)
    return DistEnv(rank, world, local_rank, local_world, master_addr, master_port, "slurm")


def detect(env: dict[str, str] | None = None) -> DistEnv:
    """Work out this process's place in the job from whatever the launcher exported."""
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = "deepspeed" if "LOCAL_SIZE" in env and "LOCAL_WORLD_SIZE" not in env else "torchrun"
        world = int(env["WORLD_SIZE"])
        found = _int_env(env, "LOCAL_WORLD_SIZE", "LOCAL_SIZE")
        local_world = found[1] if found else world
        return DistEnv(
            int(env["RANK"]),
            world,
            int(env.get("LOCAL_RANK", "0")),
            local_world,
            env.get("MASTER_ADDR", "127.0.0.1"),
            int(env.get("MASTER_PORT", "29500")),
            launcher,
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "SLURM_STEP_ID" in env:
        return _slurm_env(env)
    return DistEnv(0, 1, 0, 1, "127.0.0.1", int(env.get("MASTER_PORT") or free_port()), "single")


def export(d: DistEnv) -> None:
    """Publish the torchrun-style variables that DeepSpeed and streaming read."""
    os.environ.update(
        {
            "RANK": str(d.rank),
            "WORLD_SIZE": str(d.world_size),
            "LOCAL_RANK": str(d.local_rank),
            "LOCAL_WORLD_SIZE": str(d.local_world_size),
            "MASTER_ADDR": d.master_addr,
            "MASTER_PORT": str(d.master_port),
        }
    )


# DeepSpeed calls these two collectives by the names torch 2.9+ deprecates, and every rank would print a
# FutureWarning for each at its first step, into the job log. Only these two messages are silenced.
DEEPSPEED_DEPRECATED_COLLECTIVES = (
    r"`torch\.distributed\.all_gather_into_tensor` is deprecated",
    r"`torch\.distributed\.reduce_scatter_tensor` is deprecated",
)


def quiet_deepspeed_deprecations() -> None:
    for message in DEEPSPEED_DEPRECATED_COLLECTIVES:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)


def setup(timeout_s: float = 1800.0) -> DistEnv:
    """Detect, export and initialise torch.distributed (NCCL on GPU, gloo on CPU). ``timeout_s`` bounds
    how long a collective waits for a rank that is gone (train.collective_timeout_s).

    Collective. Every rank needs a GPU of its own under NCCL: two ranks on one GPU (more ranks per node
    than GPUs, e.g. a 2-rank CPU command on a one-GPU workstation) are refused with one line
    (:func:`shared_gpu_problem`) instead of NCCL's "Duplicate GPU detected" in the middle of set-up.
    ``CUDA_VISIBLE_DEVICES=`` runs the same command on CPU with gloo."""

    import torch

    d = detect()
    export(d)
    cuda = torch.cuda.is_available()
    if cuda:
        # local_rank modulo the visible count: under srun --gpus-per-task=1 every task sees one GPU, its own
        torch.cuda.set_device(d.local_rank % torch.cuda.device_count())
    else:
        # One thread per rank: CPU ranks otherwise oversubscribe the cores (10 steps: 0.1 s vs 2.5 s).
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    import deepspeed

    quiet_deepspeed_deprecations()
    deepspeed.init_distributed(
        dist_backend="nccl" if cuda else "gloo", auto_mpi_discovery=False, timeout=datetime.timedelta(seconds=timeout_s)
    )
    if cuda and d.world_size > 1:
        check_one_gpu_per_rank(timeout_s)
    return d


def check_one_gpu_per_rank(timeout_s: float) -> None:
    """Collective: every rank learns whether two ranks of a node share a GPU, and all refuse together."""

    import torch
    import torch.distributed as tdist

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    mine = (socket.gethostname(), str(getattr(props, "uuid", torch.cuda.current_device())))
    group = tdist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
    problem = shared_gpu_problem(gather(mine, group))
    tdist.destroy_process_group(group)
    if problem:
        raise PtbrError(problem)


def shared_gpu_problem(gpus: list[tuple[str, str]]) -> str | None:
    """One line if two ranks use the same GPU (``gpus``: (host, device uuid) of every rank, in rank order)."""
    first: dict[tuple[str, str], int] = {}
    for rank, gpu in enumerate(gpus):
        if gpu in first:
            per_host = len({uuid for host, uuid in gpus if host == gpu[0]})
            return (
                f"ranks {first[gpu]} and {rank} share one GPU on {gpu[0]} ({per_host} GPU(s) for "
                f"{sum(host == gpu[0] for host, _ in gpus)} ranks): NCCL needs a GPU per rank; start "
                f"{per_host} rank(s) per node, or run on CPU with CUDA_VISIBLE_DEVICES="
            )
        first[gpu] = rank
    return None


def control_group(timeout_s: float) -> Any:
    """A CPU (gloo) process group for the small step-boundary agreements (stop signal, data faults).
    Its timeout may be longer than the training group's: one rank may be retrying a download while
    the others wait for it there."""

    import torch.distributed as tdist

    if not tdist.is_initialized():
        return None
    return tdist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))


def broadcast(obj: Any, group: Any = None) -> Any:
    """Rank 0's ``obj`` on every rank."""
    import torch.distributed as tdist

    if not tdist.is_initialized():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def gather(obj: Any, group: Any = None) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    import torch.distributed as tdist

    if not tdist.is_initialized():
        return [obj]
    out: list[Any] = [None] * tdist.get_world_size(group)
    tdist.all_gather_object(out, obj, group=group)
    return out


def shutdown(exit_code: int = 0, exit_as: int | None = None) -> None:
    """Leave cleanly and together: exit handlers (streaming's shared memory, loader workers) first; then,
    for an agreed ending (``ptbr.errors.AGREED_EXIT_CODES``; a crash or a user error found by one rank may
    leave the others elsewhere, so those ranks leave without waiting), a barrier so that all ranks exit at
    once (``srun --kill-on-bad-exit`` ends the step when the first task exits non-zero, which would
    otherwise cut a slower rank's clean-up short); then destroy the group and ``os._exit`` (avoids the
    exit-time abort gloo sometimes produces).
    ``exit_as``: the process's exit code if not ``exit_code`` (see ptbr.train.supervise.report)."""
    import torch.distributed as tdist

    try:
        _run_exit_handlers()
        if tdist.is_available() and tdist.is_initialized():
            if exit_code in AGREED_EXIT_CODES:
                tdist.barrier()
            tdist.destroy_process_group()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code if exit_as is None else exit_as)


def _run_exit_handlers() -> None:
    """What a normal interpreter exit would run (os._exit skips it): mosaicml-streaming unlinks its
    shared memory there, without which Python's resource tracker warns about leaked segments."""

    with contextlib.suppress(Exception):  # exiting anyway; a failing handler must not change the exit code
        atexit._run_exitfuncs()
