"""Build a wheelhouse for an air-gapped GPU node: the wheels ptbr and the GPU check need beyond what the node has.

Run where there is network (pip download), for the node's Python and package list:

    python3 tools/wheelhouse.py --out wheelhouse                       # the node of issue 21 (tools/node_packages.txt)
    python3 tools/wheelhouse.py --python-version 3.12 --have node.txt --out wheelhouse
        # node.txt: `python3 -m pip list --format=freeze` run on the node

Then on the node: ``bash tools/setup_env.sh --wheelhouse wheelhouse`` (tools/offline_install.py).

The closure is resolved here, by hand, so that it stays small: ptbr's requirements (pyproject.toml) and the GPU
check's (fla-core, rwkv), recursively, minus what the node already has at a version that satisfies them (its own
dependencies are then its business), minus torch and triton (always the node's CUDA build), and with
mosaicml-streaming's declared requirements replaced by what its import path really imports (STREAMING_IMPORTS).
Every wheel is for manylinux x86_64 and the node's CPython; deepspeed, which has only an sdist, is built here as
a pure-Python wheel (DS_BUILD_OPS=0: no compiled ops; ptbr uses torch's AdamW, so nothing is JIT-built either).
Writes OUT/manifest.json (what it holds, for which Python and platform, what it relies on the node for, what it
left out and why) and prints every wheel's size and the total.

Standard library only, plus pip (its vendored ``packaging`` where ``packaging`` is not installed).
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version
except ImportError:  # pip always carries it
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename
    from pip._vendor.packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
DEFAULT_NODE = Path(__file__).resolve().parent / "node_packages.txt"
MANIFEST = "manifest.json"
FORMAT = 1

# Never brought along: the node's CUDA builds stay as they are (tools/offline_install.py refuses them too).
FROM_NODE_ONLY = ("torch", "triton")
# What the GPU check needs beyond ptbr: fla's WKV6 kernels (benchmarks/wkv.py imports only fla.ops, which is
# fla-core; flash-linear-attention adds fla.layers/models and transformers>=5.6) and the rwkv runtime
# (benchmarks/export.py's CPU comparison).
GPU_CHECK = ("fla-core>=0.4", "rwkv>=0.8.26")
# ptbr requirements used only by one command, left out unless asked for with --with.
OPTIONAL = {"clean": ("ftfy", "py3langid", "datasketch"), "parquet": ("pyarrow",)}
OPTIONAL_WHY = {
    "clean": "only `ptbr corpus clean` imports them, and datasketch imports scipy (~35 MB); add them with --with clean",
    "parquet": "only reading .parquet corpora imports it (~40 MB; many site Pythons have it); "
    "add it with --with parquet",
}
# mosaicml-streaming 0.13 declares cloud SDKs it imports lazily, per URL scheme, in streaming.base.storage.
# What `import streaming` really executes (streaming/__init__ -> base, text, vision, multimodal): brotli, snappy
# and zstd (base/compression), catalogue (base/registry_utils), filelock (base/dataset), typing_extensions,
# PIL (base/format/mds/encodings), transformers (base/dataloader, text/c4), torchvision (vision/base), numpy,
# tqdm, xxhash; boto3 for s3:// (ptbr needs it anyway). Its caps numpy<2.2, transformers<5 and xxhash<4 are not
# applied: tests/test_airgap.py runs it with numpy 2.4, transformers 5 and xxhash 4.
STREAMING_IMPORTS = (
    "boto3>=1.21.45",
    "brotli>=1.0.9",
    "python-snappy>=0.6.1",
    "zstd>=1.5.2.5",
    "catalogue>=2",
    "filelock",
    "typing-extensions",
    "pillow",
    "transformers",
    "torchvision",
    "numpy",
    "tqdm",
    "xxhash",
    "matplotlib",
    "torch",
)
REPLACED_REQUIRES = {"mosaicml-streaming": STREAMING_IMPORTS}
LEFT_OUT_WHY = {
    "google-cloud-storage": "streaming imports it only for gs:// URLs",
    "paramiko": "streaming imports it only for sftp:// URLs",
    "oci": "streaming imports it only for oci:// URLs",
    "azure-storage-blob": "streaming imports it only for azure:// URLs",
    "azure-storage-file-datalake": "streaming imports it only for azure-dl:// URLs",
    "azure-identity": "streaming imports it only for azure:// URLs",
}
# Packages with no wheel on the index that are built here, and how: only pure-Python results are accepted.
SDIST_BUILDS = {"deepspeed": {"DS_BUILD_OPS": "0"}}
# ptbr itself is installed from the checkout (editable, no build isolation): the node needs its build backend.
BUILD_REQUIREMENT = "setuptools>=77"  # >= 77: SPDX license strings (PEP 639); >= 70.1: editable wheels without `wheel`


def canon(name: str) -> str:
    return canonicalize_name(name)


@dataclass
class Target:
    """The node: its CPython version, its glibc (manylinux tags) and the packages it already has."""

    python: str  # "3.12"
    glibc: str  # "2.28"
    have: dict[str, str]  # canonical name -> version
    source: str

    def marker_env(self, extra: str = "") -> dict[str, str]:
        return {
            "python_version": self.python,
            "python_full_version": f"{self.python}.0",
            "os_name": "posix",
            "sys_platform": "linux",
            "platform_system": "Linux",
            "platform_machine": "x86_64",
            "platform_python_implementation": "CPython",
            "implementation_name": "cpython",
            "implementation_version": f"{self.python}.0",
            "platform_release": "",
            "platform_version": "",
            "extra": extra,
        }

    def platforms(self) -> list[str]:
        major, minor = (int(x) for x in self.glibc.split("."))
        tags = [f"manylinux_{major}_{m}_x86_64" for m in range(minor, 16, -1)]
        return tags + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


@dataclass
class Chosen:
    name: str
    version: str
    file: str
    spec: SpecifierSet
    required_by: set[str] = field(default_factory=set)
    built: str | None = None  # how it was built from an sdist, if it was


def read_freeze(path: Path) -> dict[str, str]:
    """``pip list --format=freeze`` (or ``pip freeze``) -> canonical name -> version ('' when unknown)."""
    have: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        if "==" in line:
            name, version = line.split("==", 1)
            have[canon(name.strip())] = version.strip()
        elif " @ " in line:
            have[canon(line.split(" @ ", 1)[0].strip())] = ""
        else:
            raise SystemExit(f"wheelhouse: {path}: not a `pip list --format=freeze` line: {raw!r}")
    return have


def ptbr_requirements(repo: Path) -> list[str]:
    """``[project].dependencies`` of the checkout's pyproject.toml."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        from pip._vendor import tomli as tomllib
    return list(tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"])


def satisfied(version: str, spec: SpecifierSet) -> bool:
    """An unknown version (a direct URL install) counts as satisfying; pre-releases count too."""
    return not version or spec.contains(Version(version), prereleases=True)


def wheel_requires(path: Path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist) from a wheel's METADATA."""
    with zipfile.ZipFile(path) as zf:
        meta = next(n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        msg = email.parser.Parser().parsestr(zf.read(meta).decode("utf-8", "replace"), headersonly=True)
    return msg["Name"], msg["Version"], msg.get_all("Requires-Dist") or []


def wheel_key(path: Path) -> str:
    return canon(parse_wheel_filename(path.name)[0])


def pip_cmd(target: Target, *args: str) -> list[str]:
    plat = [a for p in target.platforms() for a in ("--platform", p)]
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        target.python,
        "--implementation",
        "cp",
        *plat,
        "--progress-bar",
        "off",
        "--disable-pip-version-check",
        "-q",
        *args,
    ]


class Builder:
    """Resolves the closure level by level (one pip call per level) and keeps the chosen wheels in ``out``."""

    def __init__(self, target: Target, out: Path, cache: Path, log=print) -> None:
        self.target, self.out, self.cache, self.log = target, out, cache, log
        self.chosen: dict[str, Chosen] = {}
        self.relies: dict[str, dict] = {}
        self.left_out: dict[str, dict] = {}
        self.specs: dict[str, SpecifierSet] = {}
        self.requires: dict[str, list[tuple[Requirement, str]]] = {}  # chosen name -> its (requirement, by)
        self.errors: list[str] = []
        self.built: dict[str, str] = {}  # name -> how it was built from its sdist

    # -- one requirement ------------------------------------------------------------------------------------

    def applies(self, req: Requirement, extras: tuple[str, ...] = ()) -> bool:
        if req.marker is None:
            return True
        return any(req.marker.evaluate(self.target.marker_env(e)) for e in ("", *extras))

    def consider(self, req: Requirement, by: str) -> Requirement | None:
        """Record ``req``; return it when something must be downloaded for it (None: the node has it, or
        the chosen wheel already satisfies it, or it is left out)."""
        name = canon(req.name)
        spec = self.specs.get(name, SpecifierSet()) & req.specifier
        self.specs[name] = spec
        have = self.target.have.get(name)
        if name in FROM_NODE_ONLY or (have is not None and satisfied(have, spec) and name not in self.chosen):
            entry = self.relies.setdefault(name, {"name": name, "node_version": have, "required_by": []})
            entry["requirement"] = f"{name}{spec}"
            entry["required_by"] = sorted({*entry["required_by"], by})
            if have is None or not satisfied(have, spec):
                self.errors.append(
                    f"{name}{spec} (needed by {by}) must come with the node, which has "
                    f"{name + '==' + have if have else 'none'}"
                )
            return None
        got = self.chosen.get(name)
        if got is not None and satisfied(got.version, spec):
            got.required_by.add(by)
            got.spec = spec
            return None
        if have is not None:
            self.log(f"wheelhouse: {name}{spec} (for {by}) replaces the node's {name}=={have}")
        return Requirement(f"{name}{spec & self.companion_spec(name)}")

    def companion_spec(self, name: str) -> SpecifierSet:
        """torchvision must match the node's torch release (torch 2.N <-> torchvision 0.(N+15)); its wheel
        then requires exactly that torch, which ``consider`` checks against the node."""
        torch = self.target.have.get("torch")
        if name != "torchvision" or not torch:
            return SpecifierSet()
        return SpecifierSet(f"==0.{Version(torch).minor + 15}.*")

    # -- downloading ----------------------------------------------------------------------------------------

    def download(self, reqs: list[Requirement]) -> dict[str, Path]:
        """Wheels for ``reqs`` (one pip call; one per requirement again if that fails) -> name -> file."""
        with tempfile.TemporaryDirectory(dir=self.out) as tmp:
            proc = subprocess.run(pip_cmd(self.target, "-d", tmp, *map(str, reqs)), capture_output=True, text=True)
            if proc.returncode != 0 and len(reqs) > 1:
                got: dict[str, Path] = {}
                for r in reqs:
                    got.update(self.download([r]))
                return got
            got = {}
            if proc.returncode != 0:
                name = canon(reqs[0].name)
                if name in SDIST_BUILDS:
                    return {name: self.build_sdist(reqs[0])}
                self.errors.append(
                    f"{reqs[0]}: no wheel for CPython {self.target.python} manylinux x86_64 ({last_line(proc.stderr)})"
                )
                return {}
            for f in Path(tmp).glob("*.whl"):
                dest = self.out / f.name
                shutil.move(str(f), dest)
                got[wheel_key(dest)] = dest
            return got

    def build_sdist(self, req: Requirement) -> Path:
        """A pure-Python wheel built from the sdist (cached per sdist under ``cache``)."""
        name = canon(req.name)
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-q",
                "--disable-pip-version-check",
                "-d",
                tmp,
                str(req),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            sdists = list(Path(tmp).iterdir())
            if proc.returncode != 0 or len(sdists) != 1:
                raise SystemExit(f"wheelhouse: cannot download the sdist of {req}: {last_line(proc.stderr)}")
            sdist = sdists[0]
            cached = self.cache / sdist.name
            wheels = list(cached.glob("*-py3-none-any.whl")) if cached.is_dir() else []
            if not wheels:
                t0 = time.perf_counter()
                how = " ".join(f"{k}={v}" for k, v in SDIST_BUILDS[name].items())
                self.log(f"wheelhouse: building {sdist.name} ({how})")
                build = Path(tmp) / "wheel"
                proc = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "pip",
                        "wheel",
                        "--no-deps",
                        "-q",
                        "--disable-pip-version-check",
                        "-w",
                        str(build),
                        str(sdist),
                    ],
                    capture_output=True,
                    text=True,
                    env={**os.environ, **SDIST_BUILDS[name]},
                )
                wheels = list(build.glob("*.whl")) if build.is_dir() else []
                if proc.returncode != 0 or len(wheels) != 1:
                    raise SystemExit(f"wheelhouse: building {sdist.name} failed: {last_line(proc.stderr)}")
                if not wheels[0].name.endswith("-py3-none-any.whl"):
                    raise SystemExit(f"wheelhouse: {wheels[0].name} is not pure Python; refusing it")
                cached.mkdir(parents=True, exist_ok=True)
                shutil.copy2(wheels[0], cached / wheels[0].name)
                self.log(f"wheelhouse: built {wheels[0].name} in {time.perf_counter() - t0:.0f} s")
                wheels = [cached / wheels[0].name]
        dest = self.out / wheels[0].name
        shutil.copy2(wheels[0], dest)
        self.built[name] = " ".join(f"{k}={v}" for k, v in SDIST_BUILDS[name].items()) + f", from {sdist.name}"
        return dest

    # -- the closure ----------------------------------------------------------------------------------------

    def resolve(self, roots: list[tuple[str, str]]) -> None:
        level = [(req, by) for req, by in ((Requirement(r), by) for r, by in roots) if self.applies(req)]
        while level:
            wanted: dict[str, tuple[Requirement, set[str]]] = {}
            for req, by in level:
                todo = self.consider(req, by)
                if todo is not None:
                    name = canon(todo.name)
                    prev = wanted.get(name)
                    merged = todo if prev is None else Requirement(f"{name}{prev[0].specifier & todo.specifier}")
                    wanted[name] = (merged, (prev[1] if prev else set()) | {by})
            got = self.download([r for r, _ in wanted.values()]) if wanted else {}
            level = []
            for name, (req, bys) in wanted.items():
                path = got.get(name)
                if path is None:
                    if not any(e.startswith(str(req)) for e in self.errors):
                        self.errors.append(f"{req}: nothing downloaded")
                    continue
                _, version, requires = wheel_requires(path)
                old = self.chosen.get(name)
                if old is not None and old.file != path.name:
                    (self.out / old.file).unlink(missing_ok=True)
                self.chosen[name] = Chosen(
                    name,
                    version,
                    path.name,
                    self.specs[name],
                    set(bys) | (old.required_by if old else set()),
                    self.built.get(name),
                )
                self.relies.pop(name, None)
                declared = [r for r in map(Requirement, requires) if self.applies(r, tuple(req.extras))]
                replaced = REPLACED_REQUIRES.get(name)
                if replaced is not None:  # what it imports instead of what it declares
                    imported = {canon(Requirement(r).name) for r in replaced}
                    for r in declared:
                        if canon(r.name) not in imported:
                            self.left_out[canon(r.name)] = {
                                "name": canon(r.name),
                                "required_by": name,
                                "why": LEFT_OUT_WHY.get(canon(r.name), f"{name} does not import it"),
                            }
                    declared = [Requirement(r) for r in replaced]
                self.requires[name] = [(r, name) for r in declared]
                level.extend(self.requires[name])
        self.prune([canon(Requirement(r).name) for r, _ in roots])

    def prune(self, roots: list[str]) -> None:
        """Drop chosen wheels that nothing reachable needs any more (a package chosen again at another version
        may have needed them)."""
        seen, stack = set(), list(roots)
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            stack.extend(canon(r.name) for r, _ in self.requires.get(name, []))
        for name in [n for n in self.chosen if n not in seen]:
            (self.out / self.chosen.pop(name).file).unlink(missing_ok=True)


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and "is ignored" not in ln]
    return lines[-1] if lines else "no output"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_commit(repo: Path) -> str | None:
    proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or None


def build(target: Target, out: Path, extras: tuple[str, ...], cache: Path, repo: Path = REPO, log=print) -> dict:
    """Resolve, download, build, write the manifest; returns it."""
    out.mkdir(parents=True, exist_ok=True)
    optional = {canon(n): comp for comp, names in OPTIONAL.items() if comp not in extras for n in names}
    roots, left_out = [], {}
    for raw in ptbr_requirements(repo):
        name = canon(Requirement(raw).name)
        if name in optional:
            left_out[name] = {"name": name, "required_by": "ptbr", "why": OPTIONAL_WHY[optional[name]]}
        else:
            roots.append((raw, "ptbr"))
    roots += [(r, "gpu check") for r in GPU_CHECK]
    if not satisfied(target.have.get("setuptools", "0"), SpecifierSet(BUILD_REQUIREMENT[len("setuptools") :])):
        roots.append((BUILD_REQUIREMENT, "ptbr's editable install"))
    t0 = time.perf_counter()
    b = Builder(target, out, cache, log)
    b.resolve(roots)
    b.left_out.update(left_out)
    if b.errors:
        raise SystemExit("wheelhouse: cannot build it for this node: " + "; ".join(b.errors))
    keep = {c.file for c in b.chosen.values()}
    for stale in out.glob("*.whl"):
        if stale.name not in keep:
            stale.unlink()
    packages = []
    for c in sorted(b.chosen.values(), key=lambda c: c.name):
        path = out / c.file
        packages.append(
            {
                "name": c.name,
                "version": c.version,
                "file": c.file,
                "bytes": path.stat().st_size,
                "sha256": sha256(path),
                "requirement": f"{c.name}{c.spec}",
                "required_by": sorted(c.required_by),
                **({"built": c.built} if c.built else {}),
            }
        )
    manifest = {
        "format": FORMAT,
        "python": target.python,
        "implementation": "cp",
        "platforms": target.platforms(),
        "glibc": target.glibc,
        "node_list": target.source,
        "components": ["ptbr", "gpu check", *extras],
        "ptbr": {"install": "editable from the checkout, no build isolation", "commit": git_commit(repo)},
        "packages": packages,
        "relies_on": sorted(b.relies.values(), key=lambda r: r["name"]),
        "left_out": sorted(b.left_out.values(), key=lambda r: r["name"]),
        "total_bytes": sum(p["bytes"] for p in packages),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def report(manifest: dict, out: Path) -> str:
    mib = 1 << 20
    rows = [(p["file"], p["bytes"] / mib, ", ".join(p["required_by"])) for p in manifest["packages"]]
    rows.sort(key=lambda r: -r[1])
    width = max(len(r[0]) for r in rows) if rows else 10
    lines = [f"{'wheel'.ljust(width)}  {'MiB':>6}  needed by"]
    lines += [f"{f.ljust(width)}  {s:6.2f}  {by}" for f, s, by in rows]
    lines.append(
        f"{'total'.ljust(width)}  {manifest['total_bytes'] / mib:6.2f}  "
        f"{len(rows)} wheels for CPython {manifest['python']} manylinux_{manifest['glibc']} x86_64"
    )
    left = ", ".join(r["name"] for r in manifest["left_out"])
    lines.append(f"left out: {left}" if left else "left out: nothing")
    lines.append(f"node provides: {', '.join(r['name'] for r in manifest['relies_on'])}")
    lines.append(f"manifest: {out / MANIFEST}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the wheelhouse directory (its *.whl are managed here)")
    ap.add_argument(
        "--python-version",
        default=None,
        help="the node's CPython X.Y (default: 3.12 with the built-in node list, else this Python's)",
    )
    ap.add_argument(
        "--have",
        type=Path,
        default=None,
        help="the node's `pip list --format=freeze` (default: tools/node_packages.txt)",
    )
    ap.add_argument("--glibc", default="2.28", help="the node's glibc, for the manylinux tags (default 2.28)")
    ap.add_argument(
        "--with",
        dest="extras",
        action="append",
        default=[],
        choices=sorted(OPTIONAL),
        help="also what one optional command needs (clean: `ptbr corpus clean`; parquet: .parquet input)",
    )
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "ptbr" / "wheelhouse-builds",
        help="where wheels built from sdists are kept",
    )
    args = ap.parse_args(argv)
    have_file = args.have or DEFAULT_NODE
    if not have_file.is_file():
        raise SystemExit(f"wheelhouse: no such package list: {have_file}")
    python = args.python_version or ("3.12" if args.have is None else f"{sys.version_info[0]}.{sys.version_info[1]}")
    if not re.fullmatch(r"3\.\d+", python) or not re.fullmatch(r"2\.\d+", args.glibc):
        raise SystemExit("wheelhouse: --python-version is X.Y (e.g. 3.12) and --glibc 2.N (e.g. 2.28)")
    target = Target(python, args.glibc, read_freeze(have_file), str(have_file))
    print(
        f"wheelhouse: for CPython {python} manylinux_{args.glibc} x86_64, node list {have_file} "
        f"({len(target.have)} packages)",
        flush=True,
    )
    manifest = build(target, args.out, tuple(args.extras), args.cache)
    print(report(manifest, args.out))
    print(f"wheelhouse: resolved and downloaded in {manifest['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
