"""A Python environment that mimics the air-gapped GPU node of issue 21, for tests of the offline install.

    python tools/mimic_node.py                    # build (or find) the cached environment; prints its path
    python tools/mimic_node.py --clone DIR        # and a writable copy of it in DIR (hard links, seconds)

It holds what the node holds and nothing of ptbr's own requirements: torch (this machine's 2.14.1, with the
triton and CUDA wheels it pulls) and the node's preinstalled list (NODE_PACKAGES), resolved by pip from the
index. Everything is a real pip install into a fresh venv, so the environment is exactly what pip makes of that
list, with no link into another environment (a symlinked torch from the project's own .venv would work too, but
that venv also holds deepspeed, streaming and pydantic, and anything resolving paths through the links could
find them: the test would then prove less). The ~5.5 GB install is paid once per machine: the environment is
cached under ~/.cache/ptbr/mimic-node/, keyed by the Python version and the package list, and each test works on
a clone made of hard links (files are only ever replaced by pip and Python, never written in place, so the cached
environment stays as built).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

# The node's preinstalled packages (issue 21), besides torch and triton.
NODE_PACKAGES = (
    "numpy",
    "pyyaml",
    "psutil",
    "tqdm",
    "matplotlib",
    "xxhash",
    "msgpack",
    "py-cpuinfo",
    "ninja",
    "einops",
    "safetensors",
    "tokenizers",
    "transformers",
    "pytest",
    "tensorboard",
)
# typer (through transformers) requires pydantic from 0.29 on; the node has no pydantic.
PINS = ("typer<0.29",)
TORCH = "torch==2.14.1"  # the CUDA build this machine serves from its disk; it brings its triton
VERSION = 1  # bump to rebuild every cached environment
CACHE = Path.home() / ".cache" / "ptbr" / "mimic-node"
MARKER = ".ptbr-mimic-node.json"


def base_python() -> str:
    """The interpreter under this one's venv, if any (a venv made from a venv's python points at the base)."""
    return getattr(sys, "_base_executable", sys.executable)


def python_version(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def key(version: str) -> str:
    spec = json.dumps(
        {"python": version, "torch": TORCH, "packages": NODE_PACKAGES, "pins": PINS, "version": VERSION}, sort_keys=True
    )
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def run(cmd: list[str], timeout: float) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed: " + " | ".join(tail))


def ensure(python: str | None = None, cache: Path = CACHE, log=print) -> Path:
    """The cached environment's directory, built first if needed (under a lock: one builder at a time)."""
    python = python or base_python()
    version = python_version(python)
    env = cache / f"py{'.'.join(version.split('.')[:2])}-{key(version)}"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{env.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (env / MARKER).is_file():
            return env
        shutil.rmtree(env, ignore_errors=True)  # a build that was cut short
        t0 = time.perf_counter()
        log(f"mimic-node: building {env} (Python {version}, {TORCH}, {len(NODE_PACKAGES)} packages; once)")
        run([python, "-m", "venv", str(env)], timeout=300)
        py = str(env / "bin" / "python")
        run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--upgrade", "pip"], timeout=600)
        run(
            [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", TORCH, *NODE_PACKAGES, *PINS],
            timeout=3600,
        )
        freeze = subprocess.run(
            [py, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        names = {line.split("==")[0].lower() for line in freeze.splitlines()}
        if names & {"pydantic", "deepspeed", "mosaicml-streaming", "boto3", "zstandard"}:
            raise RuntimeError(f"mimic-node: {env} holds a package the node does not have; fix PINS")
        seconds = time.perf_counter() - t0
        (env / MARKER).write_text(
            json.dumps({"python": version, "seconds": round(seconds, 1), "freeze": freeze.splitlines()}, indent=1)
            + "\n"
        )
        log(f"mimic-node: built in {seconds:.0f} s")
    return env


def clone(env: Path, dest: Path) -> Path:
    """A writable copy made of hard links (the cached environment is never modified through it: pip and
    Python replace files, they do not write into existing ones)."""
    if dest.exists():
        raise FileExistsError(dest)
    subprocess.run(["cp", "-al", str(env), str(dest)], check=True)
    (dest / MARKER).unlink()
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=None, help="the interpreter to base it on (default: this one's base)")
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--clone", type=Path, default=None, help="also make a writable copy here")
    args = ap.parse_args(argv)
    env = ensure(args.python, args.cache, log=lambda m: print(m, file=sys.stderr))
    print(clone(env, args.clone) if args.clone else env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
