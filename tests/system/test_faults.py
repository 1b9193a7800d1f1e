"""Faults during training, produced for real: the S3 server killed (and restarted, or not), a corrupt
cached shard, a corrupt shard at the source, a full disk during a save, an unwritable run directory,
and preemption signals sent to every process of the job under each launcher.

The data lives on an S3 server of this module's own (the tests kill it), in small shards read in
order with a short prefetch window, so that the run needs a shard it has not cached yet every ~29
steps: an outage then hits a real download.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ptbr.checkpoint import layout
from ptbr.data.hashing import xxh64_file
from tests.helpers.fixtures import SEQ_LEN, VOCAB, build_and_publish
from tests.helpers.train_harness import (
    REPO,
    free_port,
    last_step,
    resumes,
    samples_by_step,
    start_ranks,
    torchrun,
    train_args,
    wait_all,
    wait_for,
)

pytestmark = pytest.mark.slow

STEPS = 80
COMMON = (
    f"train.max_steps={STEPS}",
    "train.log_every=1",
    "train.eval_every=0",
    "train.checkpoint_every=0",
    "precision=fp32",
    "debug.record_samples=true",
    "data.shuffle=false",
    "data.predownload=8",
    "data.num_workers=2",
)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    from ptbr.devtools.local_s3 import LocalS3Server

    server = LocalS3Server(tmp_path_factory.mktemp("faults_s3")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dataset(s3, tmp_path_factory):
    """~4,300 training samples of 33 tokens in ~22 shards of 16 kB."""
    return build_and_publish(
        tmp_path_factory.mktemp("faults_data"),
        s3,
        "faults",
        docs=400,
        seq_len=SEQ_LEN,
        vocab=VOCAB,
        val_fraction=0.05,
        build_args=("--shard-size", "16kb"),
    )


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("faults_reference") / "run"
    proc = torchrun(2, train_args(run_dir, dataset.url, *COMMON), dataset.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def logs(log_dir: Path) -> str:
    return "\n".join(f.read_text(errors="replace") for f in sorted(log_dir.glob("*.log")))


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("ptbr: error:")]


def assert_clean(text: str) -> None:
    """No traceback, no worker killed by a signal, no leaked shared memory."""
    for noise in ("Traceback", "killed by signal", "leaked shared_memory", "resource_tracker"):
        assert noise not in text, f"{noise!r} in the job log:\n{text[-3000:]}"


def signal_every_process(root: psutil.Process, sig: int) -> None:
    """What Slurm does at preemption or time limit: every process of the step gets the signal."""
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)


def run_through_an_outage(s3, dataset, tmp_path: Path, retry_s: float, *, restart: bool) -> tuple[list, Path, str]:
    """2 ranks (as srun starts them); the S3 server is killed at step 5 and, with ``restart``, started
    again (same ports, same data) once a rank has retried. Returns (exit codes, run dir, job log)."""
    run_dir, log_dir = tmp_path / "run", tmp_path / "logs"
    args = train_args(run_dir, dataset.url, *COMMON, f"data.download_retry_s={retry_s}")
    procs = start_ranks(2, args, dataset.env, log_dir)
    try:
        wait_for(lambda: last_step(run_dir) >= 5, what="step 5")
        s3.stop()  # kill -9 of the whole server
        if restart:
            wait_for(lambda: "shard download attempt" in logs(log_dir), timeout=120, what="a retry")
            time.sleep(2)
            s3.start()
        codes = wait_all(procs, timeout=300)
    finally:
        s3.start()
    return codes, run_dir, logs(log_dir)


def test_s3_outage_within_the_retry_window_is_survived(s3, dataset, reference, tmp_path) -> None:
    codes, run_dir, text = run_through_an_outage(s3, dataset, tmp_path, 60, restart=True)
    assert codes == [0, 0]
    assert "data source: shard download attempt 1 of" in text and "retrying" in text
    assert error_lines(text) == []
    assert samples_by_step(run_dir) == samples_by_step(reference)
    assert_clean(text)


def test_s3_outage_beyond_the_retry_window_saves_and_exits_69(s3, dataset, reference, tmp_path) -> None:
    codes, run_dir, text = run_through_an_outage(s3, dataset, tmp_path, 3, restart=False)
    assert codes == [69, 69]
    [line] = error_lines(text)  # rank 0 only, one line
    saved = layout.newest_usable(run_dir / "checkpoints", print)
    assert saved is not None and saved.step > 5  # the run had trained on cached shards, then saved
    assert f"is unreachable at {s3.endpoint_url}" in line and "shard." in line
    assert f"step {saved.step} is saved in {saved.path}" in line and "--resume auto" in line
    assert_clean(text)

    # the source is back: the run continues from that checkpoint and reads exactly what it would have
    proc = torchrun(2, train_args(run_dir, dataset.url, *COMMON, "data.download_retry_s=3"), dataset.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [step for step, *_ in resumes(run_dir)] == [saved.step]
    assert samples_by_step(run_dir) == samples_by_step(reference)


def test_corrupt_cached_shards_are_removed_and_downloaded_again(dataset, reference, tmp_path) -> None:
    cache = tmp_path / "cache"
    first = train_args(tmp_path / "first", dataset.url, *COMMON, "train.max_steps=3", f"data.cache_dir={cache}")
    proc = torchrun(1, first, dataset.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cached = sorted(cache.glob("*/train/shard.*.mds"))
    assert cached
    flipped, truncated = cached[0], cached[-1]
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x40
    flipped.write_bytes(bytes(data))
    if truncated != flipped:
        with open(truncated, "r+b") as f:
            f.truncate(truncated.stat().st_size - 10)

    run_dir = tmp_path / "run"
    proc = torchrun(
        2, train_args(run_dir, dataset.url, *COMMON, "train.max_steps=40", f"data.cache_dir={cache}"), dataset.env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"removed corrupt cached shard {flipped} (xxh64 mismatch)" in proc.stderr
    ref = {s: ids for s, ids in samples_by_step(reference).items() if s < 40}
    assert samples_by_step(run_dir) == ref
    index = json.loads((flipped.parent / "index.json").read_text())
    want = next(
        sh["raw_data"]["hashes"]["xxh64"] for sh in index["shards"] if sh["raw_data"]["basename"] == flipped.name
    )
    assert xxh64_file(flipped) == want  # downloaded again, intact


def test_corrupt_shard_at_the_source_stops_with_one_line(s3, dataset, tmp_path) -> None:
    # a copy of the dataset whose second training shard is damaged in the bucket after publishing
    client = s3.client()
    src = dataset.url.removeprefix("s3://").split("/", 1)
    prefix = "corrupt"
    for obj in client.list_objects_v2(Bucket=src[0], Prefix=src[1] + "/")["Contents"]:
        key = prefix + obj["Key"][len(src[1]) :]
        client.copy_object(Bucket=src[0], Key=key, CopySource={"Bucket": src[0], "Key": obj["Key"]})
    bad_key = f"{prefix}/train/shard.00001.mds.zstd"
    body = bytearray(client.get_object(Bucket=src[0], Key=bad_key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    client.put_object(Bucket=src[0], Key=bad_key, Body=bytes(body))

    run_dir, log_dir = tmp_path / "run", tmp_path / "logs"
    procs = start_ranks(2, train_args(run_dir, f"s3://{src[0]}/{prefix}", *COMMON), dataset.env, log_dir)
    assert wait_all(procs, timeout=300) == [65, 65]
    text = logs(log_dir)
    [line] = error_lines(text)
    assert "shard.00001.mds.zstd" in line and "corrupt at the source" in line and "ptbr shards verify" in line
    assert "is saved in" in line
    assert_clean(text)


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting a small tmpfs needs root: {proc.stderr.decode().strip()}")


def test_full_disk_during_a_save_is_one_line_and_resumable(dataset, tmp_path) -> None:
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "12m")
    try:
        run_dir, log_dir = disk / "run", tmp_path / "logs"
        args = train_args(
            run_dir,
            dataset.url,
            *COMMON,
            "train.max_steps=30",
            "train.checkpoint_every=10",
            f"data.cache_dir={tmp_path / 'cache'}",
        )
        filler = disk / "filler"
        # one checkpoint of the tiny model takes ~3 MiB: leave room for one, not two
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        filler.write_bytes(b"\0" * max(0, free - (5 << 20)))
        procs = start_ranks(2, args, dataset.env, log_dir)
        assert wait_all(procs, timeout=300) == [74, 74]
        text = logs(log_dir)
        [line] = error_lines(text)
        ckpts = run_dir / "checkpoints"
        assert "could not write checkpoint" in line and "the filesystem is full" in line
        assert f"the last committed checkpoint is {ckpts / 'step_00000010'}" in line and "MiB" in line
        assert [c.tag for c in layout.list_checkpoints(ckpts)] == ["step_00000010"]  # the partial one is gone
        assert_clean(text)

        filler.unlink()  # space freed: the run continues from step 10
        proc = torchrun(2, args, dataset.env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert [step for step, *_ in resumes(run_dir)] == [10]
        assert layout.newest_usable(ckpts, print).step == 30
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.parametrize("key", ["train.run_dir", "data.cache_dir"])
def test_unwritable_run_or_cache_dir_is_one_line_before_any_work(dataset, tmp_path, key) -> None:
    args = [a for a in train_args(tmp_path / "unused", dataset.url, *COMMON) if not a.startswith(f"{key}=")]
    proc = subprocess.run(
        [sys.executable, "-m", "ptbr.cli", "train", *args, f"{key}=/proc/ptbr-dir"],
        env=dataset.env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 2
    [line] = error_lines(proc.stderr)
    assert line.startswith(f"ptbr: error: {key}=/proc/ptbr-dir cannot be written")
    assert "world 1" not in proc.stderr  # nothing was set up
    assert_clean(proc.stderr)


# ------------------------------------------------------------------------------------ preemption
PREEMPT = ("train.max_steps=400", "debug.pause_before_commit_s=1")


def _supervised(launcher: list[str], args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ptbr.cli", "supervise", "--", *launcher, *args]
    with open(log, "w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)


LAUNCHERS = {
    "torchrun": [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        "{port}",
        "-m",
        "ptbr.train",
    ],
    "deepspeed": [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        "{port}",
        "--module",
        "ptbr.train",
    ],
}


@pytest.mark.parametrize("launcher", ["srun", "torchrun", "deepspeed"])
def test_group_wide_sigterm_with_loader_workers_preempts_cleanly(dataset, tmp_path, launcher: str) -> None:
    run_dir, log_dir = tmp_path / "run", tmp_path / "logs"
    args = train_args(run_dir, dataset.url, *COMMON, *PREEMPT)
    log_dir.mkdir()
    if launcher == "srun":  # one process per rank, as srun starts them
        procs = start_ranks(2, args, dataset.env, log_dir)
        wait_for(lambda: last_step(run_dir) >= 5, what="step 5")
        assert any(psutil.Process(p.pid).children() for p in procs)  # the loader workers are there
        for p in procs:
            signal_every_process(psutil.Process(p.pid), signal.SIGTERM)
        codes = wait_all(procs, timeout=120)
    else:
        port = str(free_port())
        command = [part.replace("{port}", port) for part in LAUNCHERS[launcher]]
        proc = _supervised(command, args, dataset.env, log_dir / "job.log")
        wait_for(lambda: last_step(run_dir) >= 5, what="step 5")
        os.killpg(proc.pid, signal.SIGTERM)  # supervisor, launcher, ranks and loader workers alike
        codes = [proc.wait(timeout=120)]
    assert set(codes) == {75}, logs(log_dir)[-3000:]
    text = logs(log_dir)
    saved = layout.newest_usable(run_dir / "checkpoints", print)
    assert saved is not None and saved.step >= 5
    assert f"preempted: checkpoint of step {saved.step} committed" in text
    assert_clean(text)


def _catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler for ``sig`` (the SigCgt mask of /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask & (1 << (sig - 1)))


def test_a_signal_during_start_up_is_honoured_at_the_first_step(dataset, tmp_path) -> None:
    """A short --time with --signal=B:USR1@lead, or a preemption right after a requeue, signals the ranks
    while they still import torch and DeepSpeed: they must not die of it but stop at the first step
    boundary (before step 1: the checkpoint holds the initial state) and exit 75."""
    run_dir, log_dir = tmp_path / "run", tmp_path / "logs"
    procs = start_ranks(2, train_args(run_dir, dataset.url, *COMMON), dataset.env, log_dir)
    for p in procs:
        wait_for(lambda p=p: _catches(p.pid, signal.SIGUSR1), timeout=30, interval=0.01, what="the early handler")
        assert "torch" not in " ".join(m.path for m in psutil.Process(p.pid).memory_maps())  # still starting up
        p.send_signal(signal.SIGUSR1)
    codes = wait_all(procs, timeout=180)
    text = logs(log_dir)
    assert codes == [75, 75], text[-3000:]
    saved = layout.newest_usable(run_dir / "checkpoints", print)
    assert saved is not None and saved.step == 0, text[-3000:]
    assert "received SIGUSR1" in text and "preempted: checkpoint of step 0 committed" in text
    assert_clean(text)
