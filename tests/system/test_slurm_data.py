"""The real slurm/clean_corpus.sh and slurm/build_shards.sh on a real Slurm controller with two fake nodes.

Each submission is the production path: `bash slurm/<script> --parts 3 ...` submits an array job of 3 parts and
a merge job that depends on them (afterok). Covered: duplicates placed across parts cleaned in 3 parts give the
one-machine files and report; a part killed -9 mid-way fails the array, the merge never runs, and the same
submission again re-runs only that part (which is then requeued mid-way, as a preemption does, and restarts
cleanly) with an identical result; shards built in 3 parts from the cleaned corpus equal a one-machine build as
documented (same documents, split and sample count; samples cut per part); bad input is one line in the job log.
Cost: about 2-3 minutes on 2 cores (each job starts a Python that imports ftfy/py3langid or streaming).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.helpers.data import as_samples, assert_ok, direct_tokens, run_cli, train_tokenizer
from tests.helpers.data_fixtures import local_samples
from tests.helpers.dedup_corpus import placement_corpus
from tests.helpers.slurm_cluster import SlurmCluster, unavailable_reason
from tests.helpers.train_harness import REPO, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")]

CLEAN = str(REPO / "slurm" / "clean_corpus.sh")
SHARDS = str(REPO / "slurm" / "build_shards.sh")
SEQ, VAL = 24, 0.15
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY")
JOB_ENV = {"PYTHONPATH": str(REPO), "PTBR_PYTHON": sys.executable}  # this test's Python, whatever the checkout


@pytest.fixture(scope="module")
def cluster():
    base = Path(f"/var/tmp/ptbr-slurm-data-test-{os.getpid()}")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    c = SlurmCluster(base).start()
    yield c
    c.stop()
    if not os.environ.get("PTBR_KEEP_SLURM_TEST"):
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def corpus(cluster) -> dict:
    """The placement corpus, part 1 made ~1 MB bigger (so that it runs long enough to be killed mid-way), and
    its one-machine clean."""
    from ptbr.clean.config import CleanConfig
    from ptbr.clean.pipeline import clean
    from ptbr.devtools.sample_text import portuguese_documents

    root = cluster.base / "data"
    planted = placement_corpus(root / "in")
    with open(planted.files[1], "a", encoding="utf-8") as f:
        for doc in portuguese_documents(1500, seed=99, min_sentences=6, max_sentences=10):
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
    clean(
        [str(root / "in")],
        str(root / "one"),
        CleanConfig.load(REPO / "configs" / "clean" / "pt-br.yaml"),
        workers=1,
        log=lambda _m: None,
    )
    return {"root": root, "planted": planted}


def submit(cluster: SlurmCluster, script: str, name: str, *args: str) -> tuple[int, int]:
    """`bash script --parts 3 ARGS` as a user runs it: (array job, merge job)."""
    logs = cluster.base / "logs"
    logs.mkdir(exist_ok=True)
    env = cluster.env(
        {
            **JOB_ENV,
            "PTBR_SBATCH_ARGS": f"--cpus-per-task=1 --output={logs}/{name}-%A_%a.out",
            "PTBR_MERGE_SBATCH_ARGS": f"--output={logs}/{name}-merge-%j.out",
        }
    )
    proc = subprocess.run(
        ["bash", script, "--parts", "3", *args], capture_output=True, text=True, env=env, cwd=cluster.base, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = re.search(r"array job (\d+), merge job (\d+)", proc.stdout)
    assert found, proc.stdout
    return int(found.group(1)), int(found.group(2))


def log_of(cluster: SlurmCluster, name: str) -> str:
    return "\n".join(
        f"=== {p.name}\n{p.read_text(errors='replace')}" for p in sorted((cluster.base / "logs").glob(f"{name}*.out"))
    )


def task(job: int, i: int) -> str:
    return f"{job}_{i}"


def wait_ended(cluster: SlurmCluster, job: int | str, timeout: float = 240) -> str:
    info = cluster.wait_job(job, ENDED, timeout=timeout)  # type: ignore[arg-type]
    return info["JobState"]


def wait_writing(cluster: SlurmCluster, job: str, work: Path, name: str, since: float) -> None:
    """Until the running part has written to docs.jsonl (after ``since``) and not DONE.json yet; fails at once
    if the task ended."""

    def writing() -> bool:
        state = cluster.job(job).get("JobState")  # type: ignore[arg-type]
        if state in ENDED:
            raise AssertionError(f"{job} ended ({state}) before it was caught mid-way\n{log_of(cluster, name)}")
        docs = work / "docs.jsonl"
        try:
            fresh = docs.stat().st_size > 0 and docs.stat().st_mtime > since
        except OSError:
            return False
        return state == "RUNNING" and fresh and not (work / "DONE.json").exists()

    wait_for(writing, timeout=180, what=f"{job} writing", interval=0.05)


def part_process(part: str) -> psutil.Process | None:
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "ptbr.cli" in cmd and part in cmd:
            return proc
    return None


def files_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.jsonl"))}


def report_of(out: Path) -> dict:
    r = json.loads((out / "report.json").read_text())
    r.pop("seconds"), r.pop("timing")
    return r


def test_clean_in_three_parts_survives_a_kill_and_a_requeue_and_equals_one_machine(cluster, corpus):
    root = corpus["root"]
    args = ("--input", str(root / "in"), "--output", str(root / "three"), "--progress-every", "0.2")
    work = root / "three.parts" / "part-00001-of-00003"
    t0 = time.time()
    parts, merge = submit(cluster, CLEAN, "clean", *args)
    wait_writing(cluster, task(parts, 1), work, "clean", t0)
    victim = part_process("1/3")
    assert victim is not None and not (work / "DONE.json").exists()
    victim.kill()  # kill -9, mid-way
    assert wait_ended(cluster, task(parts, 1)) == "FAILED"
    assert wait_ended(cluster, merge) == "CANCELLED"  # afterok can no longer be met
    assert not (root / "three").exists()
    assert {wait_ended(cluster, task(parts, i)) for i in (0, 2)} == {"COMPLETED"}

    t0 = time.time()
    parts2, merge2 = submit(cluster, CLEAN, "clean-again", *args)  # the same submission again
    wait_writing(cluster, task(parts2, 1), work, "clean-again", t0)
    cluster.run("scontrol", "requeue", task(parts2, 1))  # as a preemption with requeue does
    cluster.wait_job(task(parts2, 1), ("PENDING",), restarts=1, timeout=60)  # type: ignore[arg-type]
    cluster.start_now(task(parts2, 1))  # type: ignore[arg-type]
    assert wait_ended(cluster, merge2, timeout=300) == "COMPLETED", log_of(cluster, "clean-again")
    log = log_of(cluster, "clean-again")
    assert log.count("done already") == 2  # parts 0 and 2 did nothing the second time
    assert f"part 1/3: job {parts2}_1, start 2" in log and "MB read (" in log  # restarted; progress lines
    assert "clean: part 2/3:" in log and "near_dedup" in log and "dropped by rule:" in log  # the merge's summary
    assert files_of(root / "three") == files_of(root / "one")
    assert report_of(root / "three") == report_of(root / "one")
    planted = corpus["planted"]
    texts = [
        json.loads(line)["text"]
        for f in sorted((root / "three").glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    assert all(texts.count(t) == 1 for t in planted.clean)
    assert not {planted.exact[1], planted.near[1], *planted.chain[1:]} & set(texts)
    assert "Traceback" not in log_of(cluster, "clean")


@pytest.fixture(scope="module")
def shards(cluster, corpus) -> dict:
    """Shards of the one-machine clean: a one-machine build and a 3-part Slurm build."""
    from ptbr.data.build import BuildSettings, build_shards

    root = corpus["root"]
    cleaned = root / "one"
    tok = root / "tok.json"
    assert_ok(
        run_cli("tokenizer", "train", "--input", str(cleaned), "--output", str(tok), "--vocab-size", "300", "--quiet")
    )
    settings = BuildSettings(seq_len=SEQ, val_fraction=VAL, shard_size=4096)
    build_shards([str(cleaned)], tok, root / "ds-one", settings, workers=1, progress=False, log=lambda _m: None)
    args = (
        "--input",
        str(cleaned),
        "--tokenizer",
        str(tok),
        "--output",
        str(root / "ds-three"),
        "--seq-len",
        str(SEQ),
        "--val-fraction",
        str(VAL),
        "--shard-size",
        "4kb",
        "--quiet",
    )
    parts, merge = submit(cluster, SHARDS, "shards", *args)
    assert wait_ended(cluster, merge, timeout=300) == "COMPLETED", log_of(cluster, "shards")
    return {"root": root, "tok": tok, "cleaned": cleaned, "args": args}


def test_shards_in_three_parts_hold_the_one_machine_documents_split_and_samples(shards):
    from ptbr.clean.config import CleanConfig
    from ptbr.clean.part import make_plan
    from ptbr.data.corpus import ReadStats, iter_units
    from ptbr.data.parts import PartSpec

    root = shards["root"]
    one = json.loads((root / "ds-one" / "manifest.json").read_text())
    three = json.loads((root / "ds-three" / "manifest.json").read_text())
    for split in ("train", "val"):
        for key in ("samples", "tokens", "documents", "stream_tokens", "dropped_tokens"):
            assert one["splits"][split][key] == three["splits"][split][key], (split, key)
    assert three["tokenizer"]["sha256"] == one["tokenizer"]["sha256"] and three["parts"] == 3
    assert_ok(run_cli("shards", "verify", str(root / "ds-three")))
    plan = make_plan([str(shards["cleaned"])], CleanConfig())
    per_part = [[t for _, t in iter_units(plan.units_for(PartSpec(i, 3)), ReadStats())] for i in range(3)]
    assert all(per_part)
    for split in ("train", "val"):  # each part packed from its own start, then the parts' tails joined
        heads, tails = [], []
        for docs in per_part:
            stream = direct_tokens(shards["tok"], docs, val_fraction=VAL, split_seed=0)[split]
            cut = len(stream) // (SEQ + 1) * (SEQ + 1)
            heads.append(stream[:cut])
            tails.append(stream[cut:])
        expected = as_samples(np.concatenate(heads + [np.concatenate(tails)]), SEQ + 1)
        np.testing.assert_array_equal(local_samples(root / "ds-three", split), expected)


def test_the_merged_dataset_publishes_verifies_and_streams_from_s3(shards, s3_server, tmp_path):
    """The merged layout (shards in part-IIIII/ and tail/ sub-directories) through publish, remote verify and the
    streaming reader, unchanged."""
    from tests.helpers.data import isolated_environ
    from tests.helpers.train_harness import run_env

    env = run_env(s3_server.env())
    s3_server.create_bucket("merged")
    url = "s3://merged/pt-br/v1"
    assert_ok(run_cli("shards", "publish", str(shards["root"] / "ds-three"), url, env=env))
    verify = run_cli("shards", "verify", url, env=env)
    assert_ok(verify)
    assert verify.stdout.startswith("OK ")
    with isolated_environ():
        os.environ.update(s3_server.env())
        from ptbr.data import build_dataset, prepare_streaming_env

        prepare_streaming_env()
        ds = build_dataset(url, "val", cache_root=str(tmp_path / "cache"), batch_size=4, shuffle=False, seed=0)
        rows = [np.concatenate([it["input"].numpy(), it["target"].numpy()[-1:]]) for it in ds]
        np.testing.assert_array_equal(np.stack(rows), local_samples(shards["root"] / "ds-three", "val"))
        del ds


def merge_only(cluster: SlurmCluster, script: str, name: str, *args: str) -> str:
    """The merge job alone (as `sbatch script --parts 3 ARGS`); its log once it has ended."""
    logs = cluster.base / "logs"
    job = cluster.sbatch(
        "--cpus-per-task=1",
        f"--output={logs}/{name}-%j.out",
        script,
        "--parts",
        "3",
        *args,
        env=JOB_ENV,
        cwd=cluster.base,
    )
    assert wait_ended(cluster, job, timeout=120) == "FAILED", log_of(cluster, name)
    return (logs / f"{name}-{job}.out").read_text()


@pytest.mark.parametrize("case", ["missing part", "another tokenizer", "parquet without text"])
def test_bad_input_is_one_line_in_the_job_log(cluster, shards, case):
    from ptbr.data.build import BuildSettings
    from ptbr.data.build_parts import build_part
    from ptbr.data.parts import PartSpec

    root = shards["root"]
    if case == "missing part":
        log = merge_only(cluster, CLEAN, "bad-missing", "--input", str(root / "in"), "--output", str(root / "nowhere"))
        needle = "part 0/3 is missing"
    elif case == "another tokenizer":
        work = root / "mixed.parts"
        shutil.copytree(root / "ds-three.parts", work)
        other = root / "tok-other.json"
        train_tokenizer(str(shards["cleaned"]), str(other), 290)
        shutil.rmtree(work / "part-00001-of-00003")
        build_part(
            [str(shards["cleaned"])],
            other,
            work,
            BuildSettings(seq_len=SEQ, val_fraction=VAL, shard_size=4096),
            PartSpec(1, 3),
            workers=1,
            progress=False,
            log=lambda _m: None,
        )
        args = [a if a != str(root / "ds-three") else str(root / "mixed") for a in shards["args"]]
        log = merge_only(cluster, SHARDS, "bad-tok", *args, "--work", str(work))
        needle = "part 1/3 in"
        assert "another tokenizer (" in log and "tok-other.json" in log
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        (root / "pq").mkdir(exist_ok=True)
        pq.write_table(pa.table({"content": ["texto"] * 3}), root / "pq" / "web.parquet")
        parts, merge = submit(
            cluster, CLEAN, "bad-parquet", "--input", str(root / "pq"), "--output", str(root / "pq-out")
        )
        assert wait_ended(cluster, merge) == "CANCELLED"
        assert {wait_ended(cluster, task(parts, i)) for i in range(3)} == {"FAILED"}
        log = log_of(cluster, f"bad-parquet-{parts}_0")
        needle = "web.parquet: no column 'text' (columns: content)"
    errors = [line for line in log.splitlines() if "error:" in line]
    assert len(errors) == 1 and needle in errors[0], log
    assert "Traceback" not in log
