"""Launch real multi-process training runs for the tests and read back what they wrote.

Every launch path a user has is exercised as a subprocess: ``torchrun``, the ``deepspeed``
launcher, and one process per rank with the variables set by hand (what ``srun`` does).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from ptbr.dist import free_port

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = str(REPO / "configs" / "train" / "tiny_cpu.yaml")


def run_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for key in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "LOCAL_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "SLURM_STEP_ID",
    ):
        env.pop(key, None)
    # CPU ranks under gloo, also on a GPU machine (where several ranks would share one GPU)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""})
    env.update(extra or {})
    return env


def train_args(
    run_dir: Path, source: str, *overrides: str, config: str = TINY_CONFIG, flags: tuple[str, ...] = ()
) -> list[str]:
    return [
        "--config",
        config,
        f"train.run_dir={run_dir}",
        f"data.source={source}",
        f"data.cache_dir={run_dir.parent / 'cache'}",
        *overrides,
        *flags,
    ]


def torchrun_command(n: int, *target: str) -> list[str]:
    """torchrun with ``n`` local ranks on 127.0.0.1 running ``target`` (``-m module ...`` or a script)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(n),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        *target,
    ]


def torchrun(n: int, args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = torchrun_command(n, "-m", "ptbr.train", *args)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def run_probe(probe: str, out: Path, cases: tuple[str, ...], timeout: float) -> dict[str, Any]:
    """A probe script of tests/helpers on 2 gloo ranks: it runs ``cases`` and writes its findings to ``out``."""
    cmd = torchrun_command(2, str(REPO / "tests" / "helpers" / probe), str(out), ",".join(cases))
    proc = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def deepspeed_launcher(
    n: int, args: list[str], env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        str(n),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "--module",
        "ptbr.train",
        *args,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def start_ranks(n: int, args: list[str], env: dict[str, str], log_dir: Path) -> list[subprocess.Popen]:
    """One process per rank with RANK/WORLD_SIZE/... set by hand, as under srun."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for rank in range(n):
        rank_env = {
            **env,
            "RANK": str(rank),
            "WORLD_SIZE": str(n),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(n),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        log = open(log_dir / f"rank{rank}.log", "w")  # noqa: SIM115 - closed by the process's exit
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "ptbr.train", *args],
                env=rank_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )
        )
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float = 300) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                with_suppress_kill(q)
            raise
    return codes


def with_suppress_kill(p: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)


def wait_for(predicate, timeout: float = 120, what: str = "condition", interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_losses(run_dir: Path) -> dict[int, float]:
    """Per-step training loss (the latest record for each step, as after a resume)."""
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


def resumes(run_dir: Path) -> list[tuple[int, str, int, int]]:
    """(step, "native" | "elastic", saved world size, world size) of every resume of the run."""
    return [
        (r["step"], r["mode"], r["saved_world_size"], r["world_size"])
        for r in read_metrics(run_dir)
        if r["kind"] == "resume"
    ]


def last_step(run_dir: Path) -> int:
    steps = [r["step"] for r in read_metrics(run_dir) if r.get("kind") == "train"]
    return max(steps, default=0)


def _sample_records(run_dir: Path) -> list[dict[str, Any]]:
    records = []
    for f in sorted((run_dir / "samples").glob("rank_*.jsonl")):
        rank = int(f.stem.split("_")[1])
        records += [{**json.loads(line), "rank": rank} for line in f.read_text().splitlines() if line.strip()]
    # A step re-done after a resume was also logged by the launch that died: keep the latest launch.
    latest: dict[int, int] = {}
    for r in records:
        latest[r["step"]] = max(latest.get(r["step"], 0), r["launch"])
    return [r for r in records if r["launch"] == latest[r["step"]]]


def samples_by_rank(run_dir: Path) -> dict[int, dict[int, list[int]]]:
    """{rank: {step: [sample ids read in that step]}} from debug.record_samples."""
    out: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for r in _sample_records(run_dir):
        out[r["rank"]][r["step"]] += r["ids"]
    return {rank: dict(steps) for rank, steps in out.items()}


def samples_by_step(run_dir: Path) -> dict[int, list[int]]:
    """{step: sorted sample ids read by all ranks in that step}."""
    merged: dict[int, list[int]] = defaultdict(list)
    for r in _sample_records(run_dir):
        merged[r["step"]] += r["ids"]
    return {s: sorted(ids) for s, ids in sorted(merged.items())}


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
