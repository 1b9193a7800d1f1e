"""The local S3 server the tests and the quickstart use: loopback only, keys never on disk, the tool starts and
stops it."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.data import REPO


def test_local_s3_server_listens_on_loopback_only(s3_server) -> None:
    import psutil

    env = s3_server.env()
    assert set(env) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_ENDPOINT_URL", "AWS_DEFAULT_REGION"}
    assert env["S3_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    proc = psutil.Process(s3_server.pid)
    listening = [
        c.laddr
        for p in [proc, *proc.children(recursive=True)]
        for c in p.net_connections("inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening)
    assert not any(
        s3_server.secret_key in p.read_text(errors="ignore")
        for p in Path(s3_server.data_dir).rglob("*")
        if p.is_file() and p.stat().st_size < 1 << 20
    )


def test_s3_server_tool_background_start_and_stop(tmp_path: Path) -> None:
    tool = [sys.executable, str(REPO / "tools" / "s3_server.py")]
    d = tmp_path / "srv"
    out = subprocess.run(
        [*tool, "start", "--dir", str(d), "--bucket", "ptbr", "--background"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    state = json.loads((d / "server.json").read_text())
    try:
        assert stat.S_IMODE((d / "s3.env").stat().st_mode) == 0o600
        env = dict(line.removeprefix("export ").split("=", 1) for line in (d / "s3.env").read_text().splitlines())
        assert env["AWS_SECRET_ACCESS_KEY"] not in out.stdout + out.stderr
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=env["S3_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["ptbr"]
    finally:
        stopped = subprocess.run([*tool, "stop", "--dir", str(d)], capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    import psutil

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 10
    while running(state["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(state["pid"])
    assert not (d / "s3.env").exists() and not (d / "server.json").exists()
    assert not any(
        Path(f"/tmp/seaweedfs-{k}-grpc-{state['ports'][k + '_grpc']}.sock").exists()
        for k in ("master", "volume", "filer", "s3")
    )
