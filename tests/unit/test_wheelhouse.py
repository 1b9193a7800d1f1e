"""tools/wheelhouse.py's closure and tools/offline_install.py's plan, without network (fake wheels).

The real thing (download, build, install and run under ``unshare -n``) is tests/test_airgap.py.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers.train_harness import REPO


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


wh = load("wheelhouse")
oi = load("offline_install")


def fake_wheel(directory: Path, name: str, version: str, requires: list[str]) -> Path:
    dist = name.replace("-", "_")
    path = directory / f"{dist}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{dist}-{version}.dist-info/METADATA", meta)
    return path


# A toy index: name -> (version, Requires-Dist)
INDEX = {
    "deepspeed": ("0.19.8", ["pydantic>=2.0.0", "numpy", "torch>=2.0.0", "hjson"]),
    "pydantic": ("2.14.4", ["typing-extensions>=4.16.0", "annotated-types>=0.6.0"]),
    "annotated-types": ("0.8.0", []),
    "typing-extensions": ("4.16.0", []),
    "hjson": ("3.1.0", []),
    "mosaicml-streaming": (
        "0.13.0",
        [
            "numpy<2.2.0",
            "paramiko>=2.11",
            "oci>=2.88",
            "torchvision>=0.10",
            "catalogue<3,>=2",
            "brotli>=1.0.9",
            "zstd>=1.5",
            "python-snappy>=0.6.1",
            "boto3<2,>=1.21.45",
            "transformers<5",
            "xxhash<4",
            "torch<3",
        ],
    ),
    "torchvision": ("0.26.0", ["numpy", "torch==2.11.0", "pillow!=8.3.*,>=5.3.0"]),
    "catalogue": ("2.0.10", []),
    "brotli": ("1.2.1", []),
    "zstd": ("1.5.7.2", []),
    "python-snappy": ("0.7.3", ["cramjam"]),
    "cramjam": ("2.14.0", []),
    "boto3": ("1.44.18", ["botocore<1.45.0,>=1.44.18"]),
    "botocore": ("1.44.18", ["python-dateutil<3.0.0,>=2.1"]),
    "python-dateutil": ("2.9.0", ["six>=1.5"]),
    "six": ("1.17.0", []),
    "fla-core": ("0.6.0", ["einops", "triton>=3.3; extra == 'cuda'"]),
    "rwkv": ("0.8.32", ["tokenizers>=0.13.2"]),
    "setuptools": ("80.0.0", []),
}
NODE = {
    "torch": "2.11.0+cu130",
    "triton": "3.6.0",
    "numpy": "2.5.2",
    "transformers": "5.17.0",
    "xxhash": "4.1.0",
    "einops": "0.8.2",
    "tokenizers": "0.23.2",
    "pillow": "13.0.0",
    "filelock": "4.3.2",
    "tqdm": "4.70.1",
    "matplotlib": "3.11.2",
    "python-dateutil": "4.0.0",
    "typing-extensions": "4.12.0",
    "setuptools": "81.0.0",
}


@pytest.fixture
def built(tmp_path, monkeypatch):
    """build() against the toy index: pip download is replaced by copying fake wheels."""

    def download(self, reqs):
        got = {}
        for r in reqs:
            name = wh.canon(r.name)
            version, requires = INDEX[name]
            assert r.specifier.contains(version, prereleases=True), f"{r} not satisfied by the toy index"
            got[name] = fake_wheel(self.out, name, version, requires)
        return got

    monkeypatch.setattr(wh.Builder, "download", download)
    monkeypatch.setattr(
        wh,
        "ptbr_requirements",
        lambda repo: [
            "torch>=2.8",
            "deepspeed>=0.19,<0.20",
            "mosaicml-streaming>=0.13,<0.14",
            "numpy>=1.24",
            "triton>=3.4; platform_system == 'Linux'",
            "boto3>=1.34",
            "datasketch>=2.0,<3",
            "pydantic>=2.6",
            "pywin32; sys_platform == 'win32'",
        ],
    )
    monkeypatch.setattr(wh, "git_commit", lambda repo: "abc")
    target = wh.Target("3.12", "2.28", dict(NODE), "toy")
    return wh.build(target, tmp_path / "wh", (), tmp_path / "cache", log=lambda m: None), tmp_path / "wh"


def test_closure_is_what_the_node_lacks(built):
    manifest, out = built
    names = {p["name"] for p in manifest["packages"]}
    assert names == {
        "deepspeed",
        "pydantic",
        "annotated-types",
        "typing-extensions",
        "hjson",
        "mosaicml-streaming",
        "torchvision",
        "catalogue",
        "brotli",
        "zstd",
        "python-snappy",
        "cramjam",
        "boto3",
        "botocore",
        "python-dateutil",
        "six",
        "fla-core",
        "rwkv",
    }
    relies = {r["name"]: r for r in manifest["relies_on"]}
    assert {"torch", "triton", "numpy", "transformers", "xxhash", "einops", "pillow", "tokenizers"} <= set(relies)
    assert "==2.11.0" in relies["torch"]["requirement"]  # torchvision matched to the node's torch
    assert relies["numpy"]["requirement"] == "numpy>=1.24"  # streaming's numpy<2.2 cap not applied
    left = {r["name"]: r for r in manifest["left_out"]}
    assert {"paramiko", "oci", "datasketch"} <= set(left) and "sftp" in left["paramiko"]["why"]
    assert "pywin32" not in names | set(left) and "setuptools" not in names  # marker false; node's is new enough
    # the node's typing-extensions 4.12 and python-dateutil 4.0 do not satisfy: replaced
    by_name = {p["name"]: p for p in manifest["packages"]}
    assert by_name["typing-extensions"]["requirement"] == "typing-extensions>=4.16.0"
    assert by_name["python-dateutil"]["required_by"] == ["botocore"]
    assert {p.name for p in out.glob("*.whl")} == {p["file"] for p in manifest["packages"]}
    assert manifest["total_bytes"] == sum(p.stat().st_size for p in out.glob("*.whl"))


@pytest.mark.slow  # several seconds of its own: in tests/unit, out of -m "not slow"
def test_a_node_without_a_satisfying_torch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(wh, "ptbr_requirements", lambda repo: ["torch>=2.8"])
    target = wh.Target("3.12", "2.28", {"torch": "2.5.1"}, "toy")
    with pytest.raises(
        SystemExit,
        match=r"torch>=2.8 \(needed by ptbr\) must come with the node, which has "
        r"torch==2.5.1",
    ):
        wh.build(target, tmp_path / "wh", (), tmp_path / "cache", log=lambda m: None)


def test_freeze_list_and_platform_tags(tmp_path):
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("# comment\nTorch==2.11.0+cu130\nPyYAML==6.0.4\nptbr @ file:///x\n-e git+https://x#egg=y\n")
    assert wh.read_freeze(freeze) == {"torch": "2.11.0+cu130", "pyyaml": "6.0.4", "ptbr": ""}
    tags = wh.Target("3.12", "2.28", {}, "x").platforms()
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    node = wh.read_freeze(REPO / "tools" / "node_packages.txt")
    assert node["torch"].startswith("2.11") and node["triton"] == "3.6.0" and "pydantic" not in node


# ------------------------------------------------------------------------------------------ offline install


def manifest_for(tmp_path: Path, packages: list[dict], relies: list[dict]) -> Path:
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    (tmp_path / "manifest.json").write_text(
        json.dumps({"python": here, "glibc": "2.17", "packages": packages, "relies_on": relies})
    )
    return tmp_path


def entry(path: Path, name: str, requirement: str) -> dict:
    data = path.read_bytes()
    return {
        "name": name,
        "version": "1.0",
        "file": path.name,
        "bytes": len(data),
        "requirement": requirement,
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def test_plan_installs_only_what_is_missing(tmp_path):
    have = {"numpy": "2.0.0", "torch": "2.11.0", "pydantic": "1.10.0"}
    wheel = fake_wheel(tmp_path, "pydantic", "2.14.4", [])
    other = fake_wheel(tmp_path, "hjson", "3.1.0", [])
    torch = fake_wheel(tmp_path, "torch", "2.14.1", [])
    wh_dir = manifest_for(
        tmp_path,
        [
            entry(wheel, "pydantic", "pydantic>=2.6"),
            entry(other, "hjson", "hjson"),
            entry(torch, "torch", "torch>=2.8"),
        ],
        [{"name": "numpy", "requirement": "numpy>=1.24"}, {"name": "torch", "requirement": "torch>=2.8"}],
    )
    _, todo, notes = oi.plan(wh_dir, have)
    assert [e["name"] for e in todo] == ["pydantic", "hjson"]
    assert any("replaces pydantic==1.10.0" in n for n in notes) and any("refused torch" in n for n in notes)


def test_plan_says_in_one_line_what_is_missing(tmp_path):
    wheel = fake_wheel(tmp_path, "pydantic", "2.14.4", [])
    damaged = entry(wheel, "pydantic", "pydantic>=2.6")
    damaged["sha256"] = "0" * 64
    wh_dir = manifest_for(
        tmp_path,
        [
            damaged,
            {
                "name": "zstandard",
                "version": "0.25.0",
                "file": "zstandard.whl",
                "bytes": 1,
                "sha256": "x",
                "requirement": "zstandard>=0.22",
            },
        ],
        [{"name": "torch", "requirement": "torch>=2.8"}],
    )
    with pytest.raises(oi.Incomplete) as info:
        oi.plan(wh_dir, {"torch": "2.5.1"})
    text = str(info.value)
    assert "\n" not in text and "torch>=2.8 (torch==2.5.1; the node must provide it)" in text
    assert "zstandard>=0.22 (no zstandard.whl)" in text
    assert "pydantic>=2.6 (pydantic-2.14.4-py3-none-any.whl is damaged" in text


def test_installer_refuses_another_python_in_one_line(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"python": "3.9", "packages": [], "relies_on": []}))
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "offline_install.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "the wheelhouse is for CPython 3.9" in proc.stderr
    proc = subprocess.run(
        ["bash", str(REPO / "tools" / "setup_env.sh"), "--wheelhouse", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )
    assert proc.returncode == 1 and proc.stderr.strip().endswith(
        "has no manifest.json: build it with tools/wheelhouse.sh"
    )
