"""Install ptbr and a wheelhouse (tools/wheelhouse.py) into THIS Python environment, with no network.

    python3 tools/offline_install.py WHEELHOUSE [--repo .] [--report FILE]
    (or: bash tools/setup_env.sh --wheelhouse WHEELHOUSE)

For an air-gapped GPU node whose own python3 holds CUDA torch and triton: no venv, no index, no build isolation.
Before pip runs, the plan is computed from the wheelhouse's manifest against what is installed here
(importlib.metadata): a wheel is installed only where this environment lacks a version that satisfies what ptbr
needs, and anything missing (a wheel the manifest names but the directory lacks, or a package the manifest relies
on the node for) is reported in one line, with nothing installed. torch, triton and NVIDIA's CUDA wheels are never
installed from here (refused), and every wheel goes in with --no-deps, so pip cannot try to upgrade them; their
versions are checked unchanged afterwards. ptbr itself is installed editable from the checkout.

Standard library only, plus pip (its vendored ``packaging`` where ``packaging`` is not installed).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the builder's helpers (standard library + pip's packaging): one sha256 and one version logic for both tools
from wheelhouse import Requirement, Version, canonicalize_name, sha256  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FROM_NODE_ONLY = ("torch", "triton")  # never from a wheelhouse: the node's CUDA stack stays (nvidia-* neither)


class Incomplete(Exception):
    """The wheelhouse cannot make this environment complete; the message is the one line to print."""


def installed() -> dict[str, str]:
    """Canonical name -> version of every distribution this interpreter sees."""
    out: dict[str, str] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name and canonicalize_name(name) not in out:
            out[canonicalize_name(name)] = dist.version
    return out


def satisfies(version: str | None, requirement: str) -> bool:
    return version is not None and Requirement(requirement).specifier.contains(Version(version), prereleases=True)


def refused(name: str) -> bool:
    return name in FROM_NODE_ONLY or name.startswith("nvidia-")


def plan(wheelhouse: Path, have: dict[str, str]) -> tuple[dict, list[dict], list[str]]:
    """(manifest, wheels to install, notes); raises Incomplete with what is missing."""
    path = wheelhouse / "manifest.json"
    if not path.is_file():
        raise Incomplete(f"{wheelhouse} has no manifest.json: build it with tools/wheelhouse.sh")
    manifest = json.loads(path.read_text())
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if manifest.get("python") != here or sys.implementation.name != "cpython":
        raise Incomplete(
            f"the wheelhouse is for CPython {manifest.get('python')}, this is "
            f"{sys.implementation.name} {here}: rebuild it with --python-version {here}"
        )
    if platform.machine() != "x86_64":
        raise Incomplete(f"the wheelhouse is for x86_64, this machine is {platform.machine()}")
    libc, libc_version = platform.libc_ver()
    if libc == "glibc" and Version(libc_version) < Version(manifest.get("glibc", "2.17")):
        raise Incomplete(
            f"the wheelhouse needs glibc >= {manifest['glibc']}, this node has {libc_version}: "
            f"rebuild it with --glibc {libc_version}"
        )
    missing, todo, notes = [], [], []
    for entry in manifest.get("relies_on", []):
        name, req = entry["name"], entry["requirement"]
        if not satisfies(have.get(name), req):
            found = f"{name}=={have[name]}" if name in have else "not installed"
            missing.append(f"{req} ({found}; the node must provide it)")
    for entry in manifest.get("packages", []):
        name, req = entry["name"], entry["requirement"]
        if refused(name):
            notes.append(f"refused {entry['file']}: {name} always comes with the node")
            continue
        if satisfies(have.get(name), req):
            continue
        wheel = wheelhouse / entry["file"]
        if not wheel.is_file():
            missing.append(f"{req} (no {entry['file']})")
        elif wheel.stat().st_size != entry["bytes"] or sha256(wheel) != entry["sha256"]:
            missing.append(f"{req} ({entry['file']} is damaged: size or sha256 differs from the manifest)")
        else:
            if name in have:
                notes.append(f"replaces {name}=={have[name]} with {entry['version']} ({req})")
            todo.append(entry)
    for extra in sorted(wheelhouse.glob("*.whl")):
        name = canonicalize_name(extra.name.split("-")[0])
        if refused(name):
            notes.append(f"ignored {extra.name}: {name} always comes with the node")
    if missing:
        raise Incomplete(
            f"the wheelhouse {wheelhouse} is incomplete for this Python ({sys.executable}): missing "
            + ", ".join(missing)
        )
    return manifest, todo, notes


def ptbr_installed_from(repo: Path) -> bool:
    """ptbr is installed editable from this checkout (so the checkout's code is what runs)."""
    try:
        text = md.distribution("ptbr").read_text("direct_url.json")
    except md.PackageNotFoundError:
        return False
    info = json.loads(text or "{}")
    url = info.get("url", "")
    return info.get("dir_info", {}).get("editable", False) and url.removeprefix("file://") == str(repo.resolve())


def pip(*args: str) -> None:
    # --isolated: no pip config or PIP_* variables (an index or constraint from them must not apply here)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "--isolated",
        "--disable-pip-version-check",
        "install",
        "--no-index",
        "--no-deps",
        "--no-build-isolation",
        "--no-cache-dir",
        "--progress-bar",
        "off",
        "-q",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).strip().splitlines() if ln.strip()]
        raise Incomplete(f"pip failed: {lines[-1] if lines else 'exit ' + str(proc.returncode)}")


def install(wheelhouse: Path, repo: Path) -> dict:
    """Install what is missing; returns a report (what was installed, how long it took)."""
    t0 = time.perf_counter()
    purelib = Path(sysconfig.get_paths()["purelib"])
    have = installed()
    manifest, todo, notes = plan(wheelhouse, have)
    before = {n: have.get(n) for n in FROM_NODE_ONLY}
    need_ptbr = not ptbr_installed_from(repo)
    if (todo or need_ptbr) and not os.access(purelib, os.W_OK):
        raise Incomplete(
            f"cannot write to {purelib}: make a venv on top of this Python "
            f"(python3 -m venv --system-site-packages DIR) and run this with DIR/bin/python"
        )
    if todo:
        pip(*(str(wheelhouse / e["file"]) for e in todo))
    if need_ptbr:
        pip("-e", str(repo))
    after = installed()
    for name, version in before.items():
        if after.get(name) != version:
            raise Incomplete(f"{name} changed from {version} to {after.get(name)}: this must not happen")
    still = [
        e["requirement"]
        for e in manifest["packages"]
        if not refused(e["name"]) and not satisfies(after.get(e["name"]), e["requirement"])
    ]
    if still:
        raise Incomplete("installed, but these are still not satisfied: " + ", ".join(still))
    return {
        "python": sys.executable,
        "site_packages": str(purelib),
        "seconds": round(time.perf_counter() - t0, 2),
        "installed": [f"{e['name']}=={e['version']}" for e in todo],
        "installed_bytes": sum(e["bytes"] for e in todo),
        "ptbr": "installed" if need_ptbr else "already there",
        "untouched": {n: v for n, v in before.items()},
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheelhouse", type=Path)
    ap.add_argument("--repo", type=Path, default=REPO, help="the ptbr checkout to install (editable)")
    ap.add_argument("--report", type=Path, default=None, help="also write the report as JSON here")
    ap.add_argument("--check", action="store_true", help="only say what would be installed or is missing")
    args = ap.parse_args(argv)
    try:
        if args.check:
            _, todo, notes = plan(args.wheelhouse, installed())
            for note in notes:
                print(f"setup: {note}")
            print(f"setup: would install {len(todo)} wheels: {', '.join(e['file'] for e in todo) or 'none'}")
            return 0
        rep = install(args.wheelhouse, args.repo)
    except Incomplete as exc:
        print(f"setup: {exc}", file=sys.stderr)
        return 1
    for note in rep["notes"]:
        print(f"setup: {note}")
    untouched = ", ".join(f"{n} {v}" for n, v in rep["untouched"].items())
    print(
        f"setup: {len(rep['installed'])} wheels ({rep['installed_bytes'] / (1 << 20):.1f} MiB) and ptbr "
        f"({rep['ptbr']}) in {rep['seconds']:.1f} s into {rep['site_packages']}; {untouched} untouched"
    )
    if args.report:
        args.report.write_text(json.dumps(rep, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
