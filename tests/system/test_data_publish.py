"""Publishing under failure: the uploader or the S3 server killed mid-way, then a re-run.

No hooks or throttles: a real ``ptbr shards publish`` process (or the real SeaweedFS server) gets
SIGKILL as soon as the first shard objects are visible in the bucket.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptbr.data.build import BuildSettings, build_shards
from ptbr.data.tokenizer import train_tokenizer
from ptbr.devtools.local_s3 import LocalS3Server
from ptbr.devtools.sample_text import portuguese_documents
from ptbr.errors import DataError
from tests.helpers.data import REPO, assert_ok, assert_one_line_error, isolated_environ, run_cli

pytestmark = pytest.mark.slow  # real multi-process runs / servers


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset of a few hundred tiny shards, so that an upload takes long enough to interrupt."""
    root = tmp_path_factory.mktemp("many")
    docs = portuguese_documents(700, seed=21, max_sentences=10)
    (root / "corpus").mkdir()
    (root / "corpus" / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tok = train_tokenizer(docs, vocab_size=300)
    tok.save(str(root / "tok.json"))
    out = root / "ds"
    build_shards(
        [str(root / "corpus")],
        root / "tok.json",
        out,
        BuildSettings(seq_len=32, val_fraction=0.05, shard_size=1024),
        workers=1,
        progress=False,
        log=lambda _: None,
    )
    return out


def shard_count(dataset: Path) -> int:
    return sum(s["shards"] for s in json.loads((dataset / "manifest.json").read_text())["splits"].values())


def keys(server: LocalS3Server, bucket: str, prefix: str) -> list[str]:
    out = []
    for page in server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        out.extend(o["Key"][len(prefix) + 1 :] for o in page.get("Contents", []))
    return out


def start_publish(dataset: Path, url: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ptbr.cli", "shards", "publish", str(dataset), url, "--jobs", "1", "--quiet"],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_shards(
    server: LocalS3Server, bucket: str, prefix: str, proc: subprocess.Popen, n: int = 3, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(k.startswith("train/shard.") for k in keys(server, bucket, prefix)) >= n:
            return
        assert proc.poll() is None, f"publish finished before it could be interrupted: {proc.communicate()}"
        time.sleep(0.01)
    raise AssertionError("no shard appeared in the bucket")


def test_publish_killed_midway_then_rerun_sends_only_the_rest(
    s3_server, many_shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_server.create_bucket("interrupt")
    env = s3_server.env()
    url = "s3://interrupt/ds"
    total_shards = shard_count(many_shards)
    assert total_shards > 150

    proc = start_publish(many_shards, url, env)
    wait_for_shards(s3_server, "interrupt", "ds", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    present = keys(s3_server, "interrupt", "ds")
    shards_present = [k for k in present if "/shard." in k]
    assert 0 < len(shards_present) < total_shards
    assert "_SUCCESS" not in present and "manifest.json" not in present
    assert not any(k.endswith("index.json") for k in present)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with isolated_environ():
        from ptbr.data import read_manifest

        with pytest.raises(DataError, match="no manifest.json"):
            read_manifest(url)
    assert_one_line_error(run_cli("shards", "verify", url, env=env), "no manifest.json")

    # the thin wrapper tools/publish_shards.py is the same command
    rerun = subprocess.run(
        [sys.executable, str(REPO / "tools" / "publish_shards.py"), str(many_shards), url, "--json", "--quiet"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_ok(rerun)
    report = json.loads(rerun.stdout)
    assert report["skipped"] == len(shards_present)
    assert report["uploaded"] == report["objects"] - len(shards_present)
    after = keys(s3_server, "interrupt", "ds")
    assert "_SUCCESS" in after and "_PUBLISHING" not in after
    assert_ok(run_cli("shards", "verify", url, "--quiet", env=env))


def test_server_killed_midway_then_restarted_publish_completes(many_shards: Path, tmp_path: Path) -> None:
    server = LocalS3Server(tmp_path / "s3").start()
    try:
        server.create_bucket("crash")
        url = "s3://crash/ds"
        proc = start_publish(many_shards, url, server.env())
        wait_for_shards(server, "crash", "ds", proc)
        server.stop()  # SIGKILL to the whole SeaweedFS process group
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 69 and "Traceback" not in stderr  # the data source is unreachable (EXIT_CODES)
        assert stderr.strip().startswith("ptbr: error: ") and "cannot reach S3" in stderr
        assert len(stderr.strip().splitlines()) == 1

        server.start()  # same data directory, new ports
        present = keys(server, "crash", "ds")
        assert "_SUCCESS" not in present
        done = run_cli("shards", "publish", str(many_shards), url, "--json", "--quiet", env=server.env())
        assert_ok(done)
        report = json.loads(done.stdout)
        assert report["skipped"] >= 1 and report["uploaded"] < report["objects"]
        assert_ok(run_cli("shards", "verify", url, "--quiet", env=server.env()))
    finally:
        server.stop()


def test_prefix_with_foreign_objects_is_refused_unless_force(s3_server, many_shards: Path) -> None:
    s3_server.create_bucket("foreign")
    client = s3_server.client()
    client.put_object(Bucket="foreign", Key="ds/notes.txt", Body=b"somebody else's data")
    env = s3_server.env()
    refused = run_cli("shards", "publish", str(many_shards), "s3://foreign/ds", "--quiet", env=env)
    assert_one_line_error(refused, "not a ptbr dataset", "--force")
    assert keys(s3_server, "foreign", "ds") == ["notes.txt"]
    forced = run_cli("shards", "publish", str(many_shards), "s3://foreign/ds", "--force", "--json", "--quiet", env=env)
    assert_ok(forced)
    assert json.loads(forced.stdout)["deleted"] == 1
    assert "notes.txt" not in keys(s3_server, "foreign", "ds")


@pytest.mark.parametrize("marker", [None, b"0" * 64 + b"\n"], ids=["missing", "another manifest's"])
def test_readers_and_verify_refuse_a_prefix_without_its_commit_marker(s3_server, many_shards: Path, marker):
    """The commit rule of publishing: manifest.json present but _SUCCESS missing (a publish still running or
    interrupted before its last write), or a _SUCCESS that names another manifest (a re-publish in progress)."""
    from ptbr.data.manifest import read_manifest

    bucket = "commit-" + ("missing" if marker is None else "mismatch")
    s3_server.create_bucket(bucket)
    url, env = f"s3://{bucket}/ds", s3_server.env()
    assert_ok(run_cli("shards", "publish", str(many_shards), url, "--quiet", env=env))
    client = s3_server.client()
    if marker is None:
        client.delete_object(Bucket=bucket, Key="ds/_SUCCESS")
        needle = "no _SUCCESS marker: the dataset is not (completely) published"
    else:
        client.put_object(Bucket=bucket, Key="ds/_SUCCESS", Body=marker)
        needle = "_SUCCESS does not match manifest.json"
    assert "manifest.json" in keys(s3_server, bucket, "ds")
    with isolated_environ(), pytest.raises(DataError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        os.environ.update(env)
        read_manifest(url)
    verify = run_cli("shards", "verify", url, "--quiet", env=env)  # lists every problem, then one error line
    assert verify.returncode != 0 and "Traceback" not in verify.stderr
    problem = "problem: _SUCCESS: missing" if marker is None else "problem: _SUCCESS: does not match manifest.json"
    assert problem in verify.stderr and verify.stderr.strip().splitlines()[-1].endswith("1 problem(s) found")
    assert_one_line_error(
        run_cli("train", "--dry-run", "--config", "configs/train/tiny_cpu.yaml", f"data.source={url}", env=env), needle
    )
