"""A real Slurm cluster on this host for the tests: one slurmctld and a slurmd per fake node.

Each fake node runs in its own mount namespace with a private tmpfs on /dev/shm (streaming names its
shared memory per node: two nodes on one /dev/shm would collide). The file system is shared, as a
cluster's is (the job script keeps one cache directory per node). The Slurm state lives under
``base``. Needs root (mount namespaces, SlurmUser=root) and Debian's slurm-wlm; every
daemon and job step is stopped by PID at the end. auth/none: the cluster listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil

from ptbr.dist import free_ports

SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "srun")


def unavailable_reason() -> str | None:
    missing = [b for b in SLURM_BINARIES if shutil.which(b) is None]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing; tools/test.sh installs slurm-wlm as root)"
    if os.geteuid() != 0:
        return "the Slurm test cluster needs root (mount namespaces for per-node /dev/shm, SlurmUser=root)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is missing"
    return None


class SlurmCluster:
    def __init__(self, base: Path, nodes: tuple[str, ...] = ("node1", "node2"), cpus: int = 2) -> None:
        self.base, self.nodes, self.cpus = base, nodes, cpus
        self.conf = base / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self.namespaces: set[str] = set()

    # ------------------------------------------------------------------ lifecycle
    def write_conf(self) -> None:
        ctl, *node_ports = free_ports(1 + len(self.nodes))
        host = socket.gethostname()
        b = self.base
        lines = [
            "ClusterName=ptbrtest",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctl}",
            "AuthType=auth/none",
            "CredType=cred/none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            f"StateSaveLocation={b}/state",
            f"SlurmdSpoolDir={b}/spool/%n",
            f"SlurmctldPidFile={b}/slurmctld.pid",
            f"SlurmdPidFile={b}/slurmd-%n.pid",
            f"SlurmctldLogFile={b}/log/slurmctld.log",
            f"SlurmdLogFile={b}/log/slurmd-%n.log",
            "SlurmUser=root",
            "SlurmdUser=root",
            "ReturnToService=2",
            "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny",
            "MpiDefault=none",
            "JobRequeue=1",
            "KillWait=10",
            "MinJobAge=3600",
            "InactiveLimit=0",
            "SlurmdTimeout=60",
        ]
        for node, port in zip(self.nodes, node_ports):
            lines.append(
                f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs={self.cpus} "
                "RealMemory=4000 State=UNKNOWN"
            )
        lines.append(f"PartitionName=test Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP")
        for d in ("state", "log", *(f"spool/{n}" for n in self.nodes)):
            (b / d).mkdir(parents=True, exist_ok=True)
        self.conf.write_text("\n".join(lines) + "\n")

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf), **(extra or {})}

    def start(self) -> SlurmCluster:
        self.write_conf()
        log = open(self.base / "log" / "daemons.out", "ab")  # noqa: SIM115 - closed with the processes
        self.procs["slurmctld"] = subprocess.Popen(
            ["slurmctld", "-D", "-i", "-f", str(self.conf)], stdout=log, stderr=subprocess.STDOUT, env=self.env()
        )
        for node in self.nodes:
            inner = f"mount -t tmpfs -o size=512m tmpfs /dev/shm && exec slurmd -D -f {self.conf} -N {node}"
            self.procs[node] = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", inner],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = self.run("sinfo", "-h", "-o", "%T %D", check=False).stdout.split()
            if out[:1] == ["idle"] and out[1:2] == [str(len(self.nodes))]:
                for node in self.nodes:
                    with contextlib.suppress(OSError):
                        self.namespaces.add(os.readlink(f"/proc/{self.procs[node].pid}/ns/mnt"))
                return self
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}; see {self.base / 'log'}")
            time.sleep(0.5)
        raise RuntimeError(f"the Slurm test cluster did not come up; see {self.base / 'log'}")

    def stop(self) -> None:
        """Cancel every job, then stop the daemons and any job step left, by PID."""
        self.run("scancel", "--full", "--user", "root", check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.run("squeue", "-h", check=False).stdout.strip():
            time.sleep(0.5)
        for p in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for proc in self.node_processes():  # slurmstepd and what they started, in our namespaces
            with contextlib.suppress(psutil.Error):
                proc.kill()

    def node_processes(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.readlink(f"/proc/{proc.pid}/ns/mnt") in self.namespaces:
                    found.append(proc)
        return found

    # ------------------------------------------------------------------ jobs
    def run(self, *cmd: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, env=self.env(env), timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
        return proc

    def sbatch(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        proc = subprocess.run(
            ["sbatch", "--parsable", *args], capture_output=True, text=True, env=self.env(env), cwd=cwd, timeout=60
        )
        if proc.returncode != 0:
            raise RuntimeError(f"sbatch failed: {proc.stderr.strip()}")
        return int(proc.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        out = self.run("scontrol", "show", "job", str(job_id), "-o", check=False).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_job(
        self,
        job_id: int,
        states: tuple[str, ...],
        timeout: float = 300,
        restarts: int | None = None,
    ) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states and (restarts is None or int(info.get("Restarts", 0)) >= restarts):
                return info
            time.sleep(0.5)
        raise TimeoutError(
            f"job {job_id} not in {states} after {timeout} s: {info.get('JobState')} {info.get('Reason')}"
        )

    def start_now(self, job_id: int, timeout: float = 60) -> None:
        """A requeued job waits for its BeginTime (about 2 minutes): let it start now. The requeue may set
        the BeginTime after a first update, so repeat until the job has left PENDING.

        Slurm revokes the old incarnation's credential at the requeue and refuses a launch whose credential
        is not strictly newer, at one-second resolution ("Job credential revoked": the new start fails at
        once), so the update waits until the nodes are idle and two more seconds have passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.job(job_id).get("JobState") != "PENDING":
                return
            # the previous incarnation must be gone from the nodes first
            if set(self.run("sinfo", "-h", "-o", "%T", check=False).stdout.split()) <= {"idle"}:
                time.sleep(2)
                self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)
            time.sleep(2)
        raise TimeoutError(f"job {job_id} did not start after its requeue")
