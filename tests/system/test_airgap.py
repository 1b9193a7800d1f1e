"""The air-gapped GPU node, here: wheelhouse -> offline install -> gpu_check --dry and a short training, no network.

A Python environment that mimics the node of issue 21 (tools/mimic_node.py: torch with its triton and the node's
preinstalled packages, nothing of ptbr's own requirements; built once per machine in about 3 minutes, then cloned
with hard links in a second) gets a wheelhouse built for its Python and its `pip list` by tools/wheelhouse.py
(network), and everything after that runs inside `unshare -n`: a network namespace with only a loopback
interface, so any download attempt (pip, a hub, an S3 endpoint) fails the test. That the dry check, every ptbr
module's import and a training run from local shards all pass there is the proof that the packages the
wheelhouse leaves out (streaming's cloud SDKs, the corpus-cleaning extras) are not needed by them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.helpers.train_harness import REPO

pytestmark = pytest.mark.slow

MIB = 1 << 20
# Installed on the node after the offline install: none of what the wheelhouse leaves out may be there.
LEFT_OUT = (
    "google-cloud-storage",
    "paramiko",
    "oci",
    "azure-storage-blob",
    "azure-storage-file-datalake",
    "azure-identity",
    "datasketch",
    "scipy",
    "ftfy",
    "py3langid",
)

PROOF = r"""
import importlib, importlib.metadata as md, json, pkgutil, sys
bad = {}
# third-party first: ptbr.devtools.triton_compile_check turns Triton's interpreter off for the process
for name in ("streaming", "deepspeed", "deepspeed.checkpoint.ds_to_universal", "deepspeed.utils.zero_to_fp32",
             "boto3", "pydantic", "zstandard", "rwkv.model", "fla.ops.rwkv6"):
    try:
        importlib.import_module(name)
    except Exception as exc:
        bad[name] = repr(exc)
import ptbr
modules = [m.name for m in pkgutil.walk_packages(ptbr.__path__, "ptbr.") if not m.name.endswith("__main__")]
for name in modules:
    try:
        importlib.import_module(name)
    except Exception as exc:
        bad[name] = repr(exc)
present = {}
for dist in sys.argv[1:]:
    try:
        present[dist] = md.version(dist)
    except md.PackageNotFoundError:
        pass
print(json.dumps({"modules": len(modules), "failed": bad, "left_out_present": present, "ptbr": ptbr.__file__}))
"""


def _unshare_works() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A fresh clone of the cached mimic environment and a wheelhouse built for it (with network)."""
    if not _unshare_works():
        pytest.skip("needs root and `unshare -n` (a network namespace) with iproute2's `ip`")
    tmp = tmp_path_factory.mktemp("airgap")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "tools/mimic_node.py", "--clone", str(tmp / "node")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    env_seconds = time.perf_counter() - t0
    python = tmp / "node" / "bin" / "python"
    freeze = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (tmp / "freeze.txt").write_text(freeze)
    version = subprocess.run(
        [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "tools/wheelhouse.py",
            "--python-version",
            version,
            "--have",
            str(tmp / "freeze.txt"),
            "--out",
            str(tmp / "wheelhouse"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(proc.stdout)
    print(f"mimic env (cached or built) + clone: {env_seconds:.0f} s; wheelhouse: {time.perf_counter() - t0:.0f} s")
    return {"dir": tmp, "python": python, "wheelhouse": tmp / "wheelhouse", "freeze": freeze}


def offline(cmd: list[str], node: dict, timeout: float) -> subprocess.CompletedProcess:
    """``cmd`` inside a new network namespace (loopback up, nothing else), with the node's Python first on PATH
    and nothing of this test run's environment (no PYTHONPATH, no venv)."""
    env = {
        "PATH": f"{node['python'].parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "PYTHON": str(node["python"]),
        "TMPDIR": str(node["dir"]),
        "OMP_NUM_THREADS": "1",
        "LANG": "C.UTF-8",
        # DeepSpeed's CPU comm op is JIT-built per install path: keep the clone's build out of the shared cache
        "TORCH_EXTENSIONS_DIR": str(node["dir"] / "torch_extensions"),
    }
    return subprocess.run(
        ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_network_namespace_has_no_network(node):
    proc = offline(
        [str(node["python"]), "-c", "import socket; socket.create_connection(('pypi.org', 443), 5)"], node, timeout=60
    )
    assert proc.returncode != 0 and ("gaierror" in proc.stderr or "unreachable" in proc.stderr), proc.stderr


def test_wheelhouse_holds_only_what_the_node_lacks(node):
    manifest = json.loads((node["wheelhouse"] / "manifest.json").read_text())
    names = {p["name"] for p in manifest["packages"]}
    assert {"deepspeed", "mosaicml-streaming", "pydantic", "boto3", "zstandard", "fla-core", "rwkv"} <= names
    assert not names & {"torch", "triton", *LEFT_OUT} and not any(n.startswith("nvidia-") for n in names)
    assert {r["name"] for r in manifest["left_out"]} >= set(LEFT_OUT) - {"scipy"}
    deepspeed = next(p for p in manifest["packages"] if p["name"] == "deepspeed")
    assert deepspeed["file"].endswith("-py3-none-any.whl") and "DS_BUILD_OPS=0" in deepspeed["built"]
    assert manifest["total_bytes"] < 60 * MIB
    on_disk = {p.name for p in node["wheelhouse"].glob("*.whl")}
    assert on_disk == {p["file"] for p in manifest["packages"]}


def test_install_and_gpu_check_dry_run_without_network(node):
    out = node["dir"] / "gpu_check"
    t0 = time.perf_counter()
    proc = offline(
        ["bash", "benchmarks/gpu_check.sh", "--wheelhouse", str(node["wheelhouse"]), "--dry", "--out", str(out)],
        node,
        timeout=1500,
    )
    seconds = time.perf_counter() - t0
    print(proc.stdout[-6000:])
    print(f"gpu_check.sh --wheelhouse --dry under unshare -n: {seconds:.0f} s")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((out / "gpu_check.json").read_text())
    checks = {c["check"]: c for c in report["checks"]}
    assert report["complete"] and all(c["ok"] for c in checks.values())
    install = checks["install"]["detail"]  # built for exactly this environment: every wheel is needed
    manifest = json.loads((node["wheelhouse"] / "manifest.json").read_text())
    assert len(install["installed"]) == len(manifest["packages"]) > 10
    assert install["ptbr"] == "installed" and install["site_packages"].startswith(str(node["dir"]))
    versions = checks["versions"]["detail"]
    assert versions["deepspeed"] and versions["mosaicml-streaming"] and versions["fla-core"] and versions["rwkv"]
    assert checks["train tiny (toy, cpu)"]["detail"]["tokens_per_s"] > 0
    # torch, triton and the CUDA wheels are exactly as the node had them
    after = subprocess.run(
        [str(node["python"]), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def stack(text: str) -> set[str]:
        return {ln for ln in text.splitlines() if ln.lower().startswith(("torch==", "triton==", "nvidia-"))}

    assert stack(after) == stack(node["freeze"]) and stack(after)


def test_every_module_imports_and_left_out_packages_are_absent(node):
    proc = offline([str(node["python"]), "-c", PROOF, *LEFT_OUT], node, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["modules"] > 50 and result["failed"] == {} and result["left_out_present"] == {}
    assert result["ptbr"].startswith(str(REPO))


def test_short_training_from_local_shards_without_network(node):
    shards = node["dir"] / "gpu_check" / "data" / "shards"  # built inside the namespace by the dry check
    if not (shards / "manifest.json").is_file():
        pytest.skip("the dry check did not build its shards")
    run_dir = node["dir"] / "run"
    proc = offline(
        [
            str(node["python"]),
            "-m",
            "ptbr.cli",
            "train",
            "--config",
            "configs/train/tiny_cpu.yaml",
            f"data.source={shards}",
            f"data.cache_dir={node['dir']}/cache",
            f"train.run_dir={run_dir}",
            "train.max_steps=6",
            "train.log_every=1",
            "train.eval_every=3",
            "train.eval_samples=8",
            "train.checkpoint_every=3",
            "data.seq_len=32",
            "data.num_canonical_nodes=1",
            "--resume",
            "never",
        ],
        node,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r.get("kind") == "train"]
    assert len(losses) == 6 and all(0 < loss < 100 for loss in losses)
    assert any(r.get("kind") == "eval" for r in records)
    assert any((run_dir / "checkpoints").iterdir())
