"""Pieces of the data pipeline: packing, dtype, corpus reading, split rule, launcher environment,
shared-memory hygiene, and the local S3 server's tooling."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest
import xxhash
import zstandard

from ptbr.data.corpus import ReadStats, discover_inputs, iter_documents
from ptbr.data.encode import is_val_document, val_threshold
from ptbr.data.packing import Packer, choose_dtype
from ptbr.data.shm import clean_stale_streaming_shm
from ptbr.data.streaming_env import job_key, prepare_streaming_env
from ptbr.devtools.sample_text import portuguese_documents
from ptbr.dist import local_world_size
from ptbr.errors import DataError, PtbrError
from tests.helpers.data import isolated_environ


def test_packer_cuts_the_stream_into_samples_and_keeps_the_tail() -> None:
    stream = np.arange(1000, dtype=np.uint32)
    packer = Packer(33, "uint16")
    parts = [packer.add(stream[a:b]) for a, b in [(0, 5), (5, 40), (40, 40), (40, 700), (700, 1000)]]
    got = np.concatenate(parts)
    assert got.dtype == np.uint16 and got.shape == (1000 // 33, 33)
    np.testing.assert_array_equal(got.reshape(-1), stream[: got.size])
    assert packer.leftover == 1000 % 33 and packer.samples_out == 1000 // 33


def test_dtype_choice() -> None:
    assert choose_dtype(32000) == "uint16" and choose_dtype(65536) == "uint16"
    assert choose_dtype(65537) == "uint32"
    with pytest.raises(DataError, match="does not fit uint16"):
        choose_dtype(70000, "uint16")


def test_reader_modes_invalid_bytes_and_bad_records(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_bytes(b"um\ndois\n\n\ntr\xc3\xaas \xff\n")
    (tmp_path / ".hidden.txt").write_text("never read")
    (tmp_path / "notes.md").write_text("not a corpus file")
    frames = zstandard.ZstdCompressor().compress(b'{"t": "a"}\n') + zstandard.ZstdCompressor().compress(
        b'{"t": "b\\ud800c"}\n{"x": 1}\n[1]\n{"t": 5}\n'
    )
    (tmp_path / "q.jsonl.zst").write_bytes(frames)
    files = discover_inputs([tmp_path])
    assert [f.rel for f in files] == ["p.txt", "q.jsonl.zst"]

    def read(mode: str) -> tuple[list[str], ReadStats]:
        stats = ReadStats()
        return list(iter_documents(files, stats, text_field="t", txt_docs=mode)), stats

    docs, stats = read("paragraph")
    assert docs == ["um\ndois", "três \ufffd", "a", "b\ufffd\ufffd\ufffdc"]
    assert stats.invalid_utf8 == 4 and stats.bad_records == 3 and stats.documents == 4
    docs, _ = read("line")
    assert docs[:3] == ["um", "dois", "três \ufffd"]
    docs, stats = read("file")
    assert docs[0] == "um\ndois\n\n\ntrês \ufffd\n" and stats.bytes_read == sum(f.size for f in files)
    with pytest.raises(DataError, match="unsupported file type"):
        discover_inputs([tmp_path / "notes.md"])


def test_split_rule_is_by_content_and_close_to_the_fraction() -> None:
    docs = portuguese_documents(3000, seed=2, max_sentences=3)
    th = val_threshold(0.1)
    flags = [is_val_document(d, th, 0) for d in docs]
    assert 0.08 < sum(flags) / len(flags) < 0.12
    # the documented rule, computed here independently: val iff xxh64(utf8(text), seed) < fraction * 2**64
    assert flags == [xxhash.xxh64_intdigest(d.encode("utf-8"), seed=0) < int(0.1 * 2**64) for d in docs]
    assert flags != [is_val_document(d, th, 1) for d in docs]
    assert not any(is_val_document(d, val_threshold(0.0), 0) for d in docs)


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, (1, "WORLD_SIZE<=1")),
        ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, (2, "LOCAL_WORLD_SIZE")),  # torchrun
        ({"WORLD_SIZE": "4", "LOCAL_SIZE": "2"}, (2, "LOCAL_SIZE")),  # deepspeed launcher
        ({"WORLD_SIZE": "6", "SLURM_NTASKS_PER_NODE": "3"}, (3, "SLURM_NTASKS_PER_NODE")),  # srun
        ({"WORLD_SIZE": "8", "SLURM_GPUS_ON_NODE": "4"}, (4, "SLURM_GPUS_ON_NODE")),
        ({"WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, (4, "OMPI_COMM_WORLD_LOCAL_SIZE")),
    ],
)
def test_local_world_size_under_each_launcher(monkeypatch: pytest.MonkeyPatch, env, expected) -> None:
    for k in (
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "LOCAL_SIZE",
        "SLURM_NTASKS_PER_NODE",
        "SLURM_GPUS_ON_NODE",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
        "MPI_LOCALNRANKS",
    ):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert local_world_size() == expected


def test_local_world_size_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in (
        "LOCAL_WORLD_SIZE",
        "LOCAL_SIZE",
        "SLURM_NTASKS_PER_NODE",
        "SLURM_GPUS_ON_NODE",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
        "MPI_LOCALNRANKS",
    ):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(PtbrError, match="LOCAL_WORLD_SIZE"):
        local_world_size()
    monkeypatch.setenv("LOCAL_SIZE", "3")
    with pytest.raises(PtbrError, match="does not divide"):
        local_world_size()


def test_job_tmpdir_is_shared_by_a_job_and_distinct_between_jobs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for k in (
        "PTBR_JOB_ID",
        "SLURM_JOB_ID",
        "TORCHELASTIC_RUN_ID",
        "MASTER_PORT",
        "WORLD_SIZE",
        "PTBR_STREAMING_ENV",
        "PTBR_TMPDIR_BASE",
        "SLURM_STEP_ID",
        "SLURM_RESTART_COUNT",
    ):
        monkeypatch.delenv(k, raising=False)
    assert job_key() == f"pid{os.getpid()}"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert job_key() == "localhost-29500"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert job_key() == "torchrun-abc"
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert job_key() == "slurm77.0"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with isolated_environ():
        import tempfile

        from ptbr.data.streaming_env import streaming_tempdir

        before = tempfile.gettempdir()
        info = prepare_streaming_env(clean_shm=False)
        job_dir = str(tmp_path / f"ptbr-{os.geteuid()}-slurm77.0")
        assert info["tmpdir"] == job_dir == os.environ["PTBR_STREAMING_TMPDIR"]
        assert os.environ["TMPDIR"] == str(tmp_path) and tempfile.gettempdir() == before  # others unaffected
        with streaming_tempdir():
            assert tempfile.gettempdir() == job_dir  # only while streaming builds a dataset
        assert tempfile.gettempdir() == before
        assert prepare_streaming_env(clean_shm=False)["tmpdir"] == job_dir  # idempotent


HOLDER = """
import sys, time
from multiprocessing import shared_memory
shm = shared_memory.SharedMemory(sys.argv[1], create=True, size=64)
print("ready", flush=True)
time.sleep(60)
"""


def test_shm_cleanup_removes_stale_segments_and_never_live_ones() -> None:
    base = 990000 + os.getpid() % 9000
    live_here, live_child, stale_a, stale_b = (
        f"{base:06d}_barrier",
        f"{base:06d}_next_epoch",
        f"{base + 1:06d}_locals",
        f"{base + 1:06d}_shard_states",
    )
    mine = shared_memory.SharedMemory(live_here, create=True, size=64)
    child = subprocess.Popen([sys.executable, "-c", HOLDER, live_child], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        for name in (stale_a, stale_b):  # what a SIGKILLed job leaves: segments nobody maps
            fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_RDWR, 0o600)
            os.ftruncate(fd, 64)
            os.close(fd)
        removed = clean_stale_streaming_shm()
        assert stale_a in removed and stale_b in removed
        assert removed.index(stale_b) < removed.index(stale_a)  # "locals" last
        assert os.path.exists(f"/dev/shm/{live_here}") and os.path.exists(f"/dev/shm/{live_child}")
        assert not os.path.exists(f"/dev/shm/{stale_a}")
    finally:
        child.kill()
        child.wait()
        mine.close()
        mine.unlink()
        for name in (live_child, stale_a, stale_b):
            if os.path.exists(f"/dev/shm/{name}"):
                os.unlink(f"/dev/shm/{name}")


MAPPER = """
import mmap, os, sys, time
fd = os.open("/dev/shm/" + sys.argv[1], os.O_CREAT | os.O_RDWR, 0o600)
os.ftruncate(fd, 4096)
buf = mmap.mmap(fd, 4096)
print("ready", flush=True)
time.sleep(60)
"""


def test_shm_cleanup_removes_leaked_deepspeed_cpu_buffers_only_when_unused() -> None:
    stale = f"deepspeed_allreduce_buffer_0_127.0.0.1_{os.getpid()}_0"
    live = f"deepspeed_allreduce_buffer_0_127.0.0.1_{os.getpid()}_1"
    # a live job maps its buffer (as DeepSpeed's C++ op does)
    child = subprocess.Popen([sys.executable, "-c", MAPPER, live], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        fd = os.open(f"/dev/shm/{stale}", os.O_CREAT | os.O_RDWR, 0o600)  # what a killed gloo job leaves
        os.ftruncate(fd, 64)
        os.close(fd)
        removed = clean_stale_streaming_shm()
        assert stale in removed and live not in removed
        assert os.path.exists(f"/dev/shm/{live}") and not os.path.exists(f"/dev/shm/{stale}")
    finally:
        child.kill()
        child.wait()
        for name in (stale, live):
            if os.path.exists(f"/dev/shm/{name}"):
                os.unlink(f"/dev/shm/{name}")


def test_week_old_job_tmpdirs_are_pruned_and_recent_ones_kept(tmp_path: Path) -> None:
    from ptbr.data.streaming_env import _prune_old_job_dirs

    uid = os.geteuid()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old, recent, mine, other, gone, alive = (
        tmp_path / f"ptbr-{uid}-old",
        tmp_path / f"ptbr-{uid}-recent",
        tmp_path / f"ptbr-{uid}-mine",
        tmp_path / "unrelated",
        tmp_path / f"ptbr-{uid}-pid{dead.pid}",
        tmp_path / f"ptbr-{uid}-pid{os.getpid()}",
    )
    for d in (old, recent, mine, other, gone, alive):
        d.mkdir()
        (d / "000000_barrier_filelock").write_text("")
    week_ago = time.time() - 8 * 24 * 3600
    for d in (old, mine, other):
        for p in (d / "000000_barrier_filelock", d):
            os.utime(p, (week_ago, week_ago))
    _prune_old_job_dirs(tmp_path, keep=mine)
    assert not old.exists() and recent.exists() and mine.exists() and other.exists()
    assert not gone.exists() and alive.exists()


def _other_job_registers_after_the_scan(monkeypatch: pytest.MonkeyPatch, other_local: str) -> list:
    """Make another job's leader register the prefix this one just found free, between its scan and its
    create (the moment two jobs starting together collide): a real segment, created at that instant."""
    from streaming.base.constant import LOCALS
    from streaming.base.shared import SharedMemory
    from streaming.base.shared import prefix as streaming_prefix

    real_scan = streaming_prefix._check_and_find_retrying
    taken: list = []

    def scan(streams_local, streams_remote, shm_name, retry):
        found = real_scan(streams_local, streams_remote, shm_name, retry)
        if shm_name == LOCALS and not taken:
            data = streaming_prefix._pack_locals([other_local], found)
            taken.append((found, SharedMemory(streaming_prefix._get_path(found, LOCALS), True, len(data))))
            taken[0][1].buf[: len(data)] = data
        return found

    monkeypatch.setattr(streaming_prefix, "_check_and_find_retrying", scan)
    return taken


def test_a_prefix_another_job_takes_between_scan_and_create_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streaming.base.shared import prefix as streaming_prefix
    from streaming.base.world import World

    from ptbr.data.shm_prefix import register_shm_prefix

    mine, other = str(tmp_path / "mine"), str(tmp_path / "other")
    single = World(num_nodes=1, ranks_per_node=1, workers_per_rank=1, worker=0)
    taken = _other_job_registers_after_the_scan(monkeypatch, other)
    with pytest.raises(FileExistsError):  # streaming's own registration: the job crashes
        streaming_prefix.get_shm_prefix([mine], ["s3://b/x"], single)
    theirs, their_shm = taken.pop()
    monkeypatch.undo()
    try:
        taken = _other_job_registers_after_the_scan(monkeypatch, str(tmp_path / "third"))
        prefix, shm = register_shm_prefix([mine], ["s3://b/x"], single)
        third, third_shm = taken.pop()
        try:
            assert prefix not in (theirs, third)
            assert streaming_prefix._unpack_locals(bytes(shm.buf)) == ([mine], prefix)
            assert streaming_prefix._unpack_locals(bytes(their_shm.buf)) == ([other], theirs)  # untouched
        finally:
            shm.cleanup()
            third_shm.cleanup()
    finally:
        their_shm.cleanup()


DEFERRED_PROBE = """
import sys
import ptbr.data
from streaming import StreamingDataset, Stream
heavy = sorted(m for m in ("sklearn", "torchvision", "streaming.text.c4", "streaming.vision.base") if m in sys.modules)
import streaming
from streaming.vision import StreamingCIFAR10
import streaming.multimodal.webvid
print(heavy, streaming.text.StreamingC4.__name__, StreamingCIFAR10.__name__, "sklearn" in sys.modules)
"""


def test_streaming_imports_without_its_bundled_dataset_classes_until_one_is_used() -> None:
    """Each rank imports streaming; its C4/ImageNet/... classes (transformers' AutoTokenizer, scikit-learn,
    torchvision) cost seconds there and are loaded only when a program uses them."""
    proc = subprocess.run([sys.executable, "-c", DEFERRED_PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["[]", "StreamingC4", "StreamingCIFAR10", "True"]
