"""One GPU check: everything that needs a CUDA card, in one run, one table and one JSON.

0. the install (``--wheelhouse DIR``: tools/offline_install.py into this Python, no network; else the time
   gpu_check.sh spent in tools/setup_env.sh) and the versions (python, torch, CUDA, triton, deepspeed, streaming,
   fla, the device);
1. the CUDA test variants (``pytest -m gpu``): the Triton WKV6 kernel against the sequential reference
   (values and gradients, extreme decays, ragged lengths), the model on CUDA;
2. the WKV6 suite (``benchmarks/wkv.py --gpu-suite``) against flash-linear-attention's ``chunk_rwkv6`` (fla-core,
   from the wheelhouse: nothing is downloaded here) at B=8 T=4096 H=32 N=64 bf16: forward and backward time, peak
   memory, error against float64;
3. single-GPU training throughput and MFU of the 140m and 1b5 presets (their configs: bf16, seq 4096; micro-batch
   8, a few dozen steps) on synthetic shards written locally, no S3, with the memory high-water mark;
4. generation tokens/s (RNN mode, bf16, batch 1) of the exported 140m run;
5. long context (``benchmarks/long_context.py``): a 400m training step at L = 4096, 16k, 64k in segments of
   4096 carrying the state, against one pass up to 16k: tokens/s and peak memory;
6. CPU inference against the ``rwkv`` pip runtime (``benchmarks/export.py --inference-only``) on the 140m
   run's fp32 weights, at 1 thread and at every core of the machine: prefill and generation tokens/s.

    bash benchmarks/gpu_check.sh --wheelhouse DIR --out OUT   # air-gapped node: install, then every step
    bash benchmarks/gpu_check.sh [--out OUT]                  # a GPU machine with network (venv first)
    bash benchmarks/gpu_check.sh --dry                        # the same steps at toy sizes on CPU (plumbing)

Every step runs in its own process group under its own time limit (LIMITS: they sum to under 8 minutes, the
install included, and no step may outlast what is left of --budget); a step that fails or runs out of time is
recorded with the last lines of its output (the whole output is in OUT/logs/) and the next step runs anyway.
``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` are rewritten after every step, so a run cut short leaves its
figures. Each row says what was compiled during the step: C++/CUDA extensions built by DeepSpeed or torch
(read off TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions, with their build time; ptbr trains with torch's
AdamW, so none are expected on a GPU) and Triton kernels compiled (TRITON_CACHE_DIR, default OUT/cache/triton:
the first run into an OUT is cold, as a first run on a node is).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import print_table  # noqa: E402  (standard library only: runs before the install)

# Seconds per step on the GPU (sum 450 s: 30 s of the 8 minutes are left for starting processes and writing
# reports) and at toy sizes on CPU (--dry; no overall budget there).
LIMITS = {
    "install": 45,
    "versions": 15,
    "pytest": 80,
    "wkv": 50,
    "shards": 20,
    "train_140m": 45,
    "train_1b5": 75,
    "generate": 30,
    "long_context": 50,
    "cpu_inference": 40,
}
DRY_LIMITS = {
    "install": 300,
    "versions": 60,
    "pytest": 300,
    "wkv": 120,
    "shards": 120,
    "train_tiny": 300,
    "generate": 120,
    "long_context": 300,
    "cpu_inference": 300,
}
BUDGET = 480  # seconds: the whole check on one H100, install included
TAIL_LINES = 8

# (preset, steps, micro-batch) at full size; the dry mode swaps in the tiny model on CPU
TRAIN_CASES = (("140m", 30, 8), ("1b5", 20, 8))
DRY_TRAIN = ("tiny", 4, 2)

VERSIONS = r"""
import importlib.metadata as md, json, platform, sys
sys.path.insert(0, sys.argv[1])
from benchmarks.common import machine_info
out = {"python": platform.python_version(), "executable": sys.executable, "machine": machine_info()}
for dist in ("torch", "triton", "deepspeed", "mosaicml-streaming", "fla-core", "rwkv", "numpy", "transformers",
             "pydantic", "ptbr"):
    try:
        out[dist] = md.version(dist)
    except md.PackageNotFoundError:
        out[dist] = None
import torch
out["cuda"] = torch.version.cuda
out["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
if torch.cuda.is_available():
    out["capability"] = "sm_%d%d" % torch.cuda.get_device_capability(0)
import deepspeed, streaming  # the imports themselves are part of the check
print(json.dumps(out))
"""


class StepFailed(Exception):
    """A step's own verdict: the message is the row's result, ``tail`` its last lines of output."""

    def __init__(self, message: str, tail: str = "", timed_out: bool = False) -> None:
        super().__init__(message)
        self.tail, self.timed_out = tail, timed_out


@dataclass
class Ctx:
    """What the steps share: the output folder, the mode, the environment of every subprocess."""

    work: Path
    dry: bool
    env: dict[str, str]
    deadline: float  # time.perf_counter() value no step may run past (inf in --dry)
    limit: float = 0.0  # the current step's limit
    started: float = 0.0
    step_key: str = ""

    def remaining(self) -> float:
        return self.limit - (time.perf_counter() - self.started)

    def run(self, cmd: list[str], name: str | None = None) -> str:
        """Run ``cmd`` within what is left of the step's limit; its output goes to OUT/logs/<step>.log;
        returns it; raises StepFailed on a non-zero exit or the limit."""
        log_dir = self.work / "logs"
        log_dir.mkdir(exist_ok=True)
        log = log_dir / f"{self.step_key}{'-' + name if name else ''}.log"
        left = max(1.0, self.remaining())
        with open(log, "w") as f:
            f.write(f"$ {shlex.join(cmd)}\n")
            f.flush()
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                code = proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                kill_group(proc)
                raise StepFailed(f"timed out after {self.limit:.0f} s", tail_of(log), timed_out=True) from None
        if code != 0:
            raise StepFailed(f"exit code {code}", tail_of(log))
        return log.read_text(errors="replace")


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the step's whole process group (DeepSpeed and the benchmarks start children), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tail_of(log: Path, n: int = TAIL_LINES) -> str:
    lines = [ln.rstrip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


# ------------------------------------------------------------------------------------------------- the steps


def step_install(ctx: Ctx, args: argparse.Namespace) -> dict:
    if args.wheelhouse is None:
        if args.install_seconds is None:
            return {"result": "not run here (benchmarks/gpu_check.py was started directly)", "seconds": 0.0}
        return {
            "result": f"tools/setup_env.sh (venv, network): {args.install_seconds:.0f} s",
            "seconds": args.install_seconds,
        }
    report = ctx.work / "install.json"
    report.unlink(missing_ok=True)
    out = ctx.run(
        ["bash", "tools/setup_env.sh", "--wheelhouse", str(args.wheelhouse.resolve()), "--report", str(report)]
    )
    lines = [ln for ln in out.splitlines() if ln.startswith("setup: ")]
    detail = json.loads(report.read_text()) if report.is_file() else {}
    return {"result": lines[-1].removeprefix("setup: ") if lines else "installed", "detail": detail}


def step_versions(ctx: Ctx, args: argparse.Namespace) -> dict:
    out = ctx.run([sys.executable, "-c", VERSIONS, str(REPO)])
    info = json.loads(out.strip().splitlines()[-1])
    parts = [
        f"python {info['python']}",
        f"torch {info['torch']} (CUDA {info['cuda']})",
        f"triton {info['triton']}",
        f"deepspeed {info['deepspeed']}",
        f"streaming {info['mosaicml-streaming']}",
        f"fla {info['fla-core']}",
        f"rwkv {info['rwkv']}",
    ]
    return {"result": ", ".join(parts) + f" on {info['device']}", "detail": info}


def step_pytest(ctx: Ctx, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    try:
        out, code = ctx.run(cmd), 0
    except StepFailed as exc:
        counts = pytest_counts((ctx.work / "logs" / "pytest.log").read_text(errors="replace"))
        if exc.timed_out or "exit code 5" not in str(exc) or not ctx.dry:  # 5: nothing collected/ran (CPU)
            if counts:
                exc.args = (f"{', '.join(f'{n} {k}' for k, n in counts.items())} ({exc})",)
            raise
        out, code = exc.tail, 5
    counts = pytest_counts(out)
    return {"result": ", ".join(f"{n} {k}" for k, n in counts.items()) or f"exit code {code}", "detail": counts}


def pytest_counts(out: str) -> dict[str, int]:
    """pytest's closing line as {outcome: count}."""
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", out)}


def step_wkv(ctx: Ctx, args: argparse.Namespace) -> dict:
    report = ctx.work / "wkv.json"
    report.unlink(missing_ok=True)
    if ctx.dry:
        cmd = [
            sys.executable,
            "benchmarks/wkv.py",
            "--device",
            "cpu",
            "--lengths",
            "64",
            "--batch",
            "1",
            "--heads",
            "2",
            "--head-size",
            "16",
            "--repeats",
            "1",
            "--json",
            str(report),
        ]
    else:
        cmd = [sys.executable, "benchmarks/wkv.py", "--gpu-suite", "--json", str(report)]
    try:
        ctx.run(cmd)
    finally:
        rows = json.loads(report.read_text()).get("rows", []) if report.is_file() else []

    def one(r: dict) -> str:
        text = f"{r.get('backend', '?')} {r.get('T', '')}: fwd+bwd {r.get('fwd_bwd_ms', float('nan')):.2f} ms"
        if "peak_mem_mib" in r:
            text += f", {r['peak_mem_mib']:,.0f} MiB"
        if "err_max" in r:
            text += f", err {r['err_max']:.1e}"
        return text

    return {"result": "; ".join(one(r) for r in rows if isinstance(r, dict)) or "no rows", "detail": rows}


def step_shards(ctx: Ctx, args: argparse.Namespace) -> dict:
    """Tokenizer and shards from the embedded sample text (benchmarks/train.py's build_dataset), local."""
    data = ctx.work / "data"
    if (data / "shards" / "manifest.json").is_file():
        return {"result": f"reused {data / 'shards'}"}
    import shutil

    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    seq_len, docs = (32, 300) if ctx.dry else (4096, 6000)
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from pathlib import Path; "
        f"from benchmarks.train import build_dataset; "
        f"build_dataset(Path({str(data)!r}), seq_len={seq_len}, vocab=512, docs={docs})"
    )
    ctx.run([sys.executable, "-c", code])
    splits = json.loads((data / "shards" / "manifest.json").read_text()).get("splits", {})
    counts = ", ".join(f"{name} {meta.get('samples', '?')}" for name, meta in splits.items())
    return {"result": f"{docs} documents -> samples of {seq_len + 1} tokens ({counts})"}


def train_step(preset: str, steps: int, micro: int) -> Callable[[Ctx, argparse.Namespace], dict]:
    def step(ctx: Ctx, args: argparse.Namespace) -> dict:
        run_dir = ctx.work / f"train_{preset}"
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh measurement each time
        if ctx.dry:
            config, extra = "configs/train/tiny_cpu.yaml", ["precision=fp32", "data.seq_len=32"]
        else:
            config, extra = f"configs/train/{preset}.yaml", []
        cmd = [
            sys.executable,
            "-m",
            "ptbr.cli",
            "train",
            "--config",
            config,
            f"data.source={ctx.work / 'data' / 'shards'}",
            f"data.cache_dir={ctx.work}/cache/streaming",
            f"train.run_dir={run_dir}",
            f"train.max_steps={steps}",
            f"batch.micro_batch_size={micro}",
            f"batch.global_batch_size={micro}",
            "train.log_every=1",
            "train.eval_every=0",
            "train.checkpoint_every=0",
            "train.eval_samples=8",
            "data.num_canonical_nodes=1",
            *extra,
            "--resume",
            "never",
        ]
        failure = None
        try:
            ctx.run(cmd)
        except StepFailed as exc:
            failure = exc
        figures = training_figures(run_dir)
        if failure is not None:  # a run cut short still leaves the steps it logged
            if figures:
                failure.args = (f"{failure}; before that: {figures['result']}",)
            raise failure
        if not figures:
            raise StepFailed(
                "no training steps were logged after the warm-up", tail_of(ctx.work / "logs" / f"{ctx.step_key}.log")
            )
        return figures

    return step


def training_figures(run_dir: Path) -> dict | None:
    metrics = run_dir / "metrics.jsonl"
    records = (
        [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    )
    train = [r for r in records if r.get("kind") == "train"][3:]  # warm-up (compilation, allocator) left out
    if not train:
        return None
    tps = statistics.median(r["tokens_per_s"] for r in train)
    mfu = statistics.median(r["mfu"] for r in train) if train[-1].get("mfu") is not None else None
    mem = max(r["memory_gib"] for r in train)
    result = f"{tps:,.0f} tok/s" + (f", MFU {mfu * 100:.1f}%" if mfu is not None else "") + f", peak {mem:.1f} GiB"
    return {"result": result, "detail": {"tokens_per_s": tps, "mfu": mfu, "memory_gib": mem, "steps": len(train)}}


def step_generate(ctx: Ctx, args: argparse.Namespace) -> dict:
    export = ctx.work / "export"
    ctx.run(
        [
            sys.executable,
            "-m",
            "ptbr.cli",
            "export",
            str(ctx.work / f"train_{first_preset(ctx)}"),
            str(export),
            "--dtype",
            "bf16",
            "--overwrite",
            "--quiet",
        ],
        name="export",
    )
    tokens = 16 if ctx.dry else 256
    out = ctx.run(
        [
            sys.executable,
            "benchmarks/gpu_check.py",
            "--measure-generation",
            str(export),
            "--tokens",
            str(tokens),
            *(["--dry"] if ctx.dry else []),
        ],
        name="measure",
    )
    rate = json.loads(out.strip().splitlines()[-1])["tokens_per_s"]
    return {"result": f"{rate:,.1f} tok/s", "detail": {"tokens_per_s": rate, "tokens": tokens}}


def measure_generation(export: Path, tokens: int, dry: bool) -> dict:
    """RNN-mode tokens/s of an export (run in its own process by step_generate)."""
    import torch

    from ptbr.infer.model_io import load_model
    from ptbr.infer.rnn import RNN

    device = "cpu" if dry else "cuda"
    lm = load_model(export, device, dtype=torch.float32 if dry else torch.bfloat16)
    rnn = RNN(lm.model)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def generate() -> None:
        state, token = lm.model.zero_state(1, device), torch.tensor([1], device=device)
        for _ in range(tokens):
            logits, state = rnn.step(token, state)
            token = logits.argmax(-1)
        sync()

    generate()  # warm-up
    t0 = time.perf_counter()
    generate()
    return {"tokens_per_s": tokens / (time.perf_counter() - t0)}


def step_long_context(ctx: Ctx, args: argparse.Namespace) -> dict:
    """Training step tokens/s and peak memory at L = S, 4S, 16S with the state carried across segments of S,
    against one pass where it fits (benchmarks/long_context.py)."""
    report = ctx.work / "long_context.json"
    report.unlink(missing_ok=True)
    if ctx.dry:
        sizes = ["--segment", "16", "--factors", "1,4", "--batch", "1", "--repeats", "1", "--cpu"]
    else:
        sizes = [
            "--model",
            "400m",
            "--segment",
            "4096",
            "--factors",
            "1,4,16",
            "--batch",
            "1",
            "--repeats",
            "1",
            "--max-one-pass",
            "16384",
        ]
    try:
        ctx.run([sys.executable, "benchmarks/long_context.py", *sizes, "--json", str(report)])
    finally:
        rows = json.loads(report.read_text()).get("rows", []) if report.is_file() else []
    if not any(r.get("mode") == "segments" and "tokens_per_s" in r for r in rows):
        raise StepFailed("no segmented row in the report")
    summary = "; ".join(
        f"{r['mode']} {r['L']}: {r['tokens_per_s']:,.0f} tok/s, {r['peak_mib']:,.0f} MiB"
        for r in rows
        if "tokens_per_s" in r
    )
    return {"result": summary, "detail": rows}


def step_cpu_inference(ctx: Ctx, args: argparse.Namespace) -> dict:
    """Prefill and generation on CPU (fp32) against the rwkv runtime at 1 thread and at every core."""
    from ptbr.data.build import default_workers  # after the install: ptbr's dependencies are there now

    report = ctx.work / "cpu_inference.json"
    report.unlink(missing_ok=True)
    preset = first_preset(ctx)
    sizes = (
        ["--prompt-len", "64", "--gen-tokens", "8", "--repeats", "1"]
        if ctx.dry
        else ["--prompt-len", "512", "--gen-tokens", "32", "--repeats", "2"]
    )
    ctx.run(
        [
            sys.executable,
            "benchmarks/export.py",
            "--preset",
            preset,
            "--run-dir",
            str(ctx.work / f"train_{preset}"),
            "--inference-only",
            "--workdir",
            str(ctx.work / "cpu_inference"),
            "--threads",
            f"1,{max(default_workers(), 2)}",
            *sizes,
            "--json",
            str(report),
        ]
    )
    data = json.loads(report.read_text()) if report.is_file() else {}
    rows = [r for r in data.get("rows", []) if r.get("case", "").endswith(": ptbr")]
    if len(rows) != 4:
        raise StepFailed(f"expected 4 ptbr rows in {report}, found {len(rows)}")
    summary = "; ".join(f"{r['case'].split(' ')[0]} {r['threads']} thr {r['ratio']:.2f}x" for r in rows)
    return {
        "result": summary,
        "detail": {"rows": data.get("rows", []), "prefill_scaling": data.get("prefill_scaling", [])},
    }


def first_preset(ctx: Ctx) -> str:
    return DRY_TRAIN[0] if ctx.dry else TRAIN_CASES[0][0]


@dataclass
class Step:
    key: str
    check: str  # the row's name
    fn: Callable[[Ctx, argparse.Namespace], dict]
    needs: str | None = None  # the key of a step whose success this one needs


def steps(dry: bool) -> list[Step]:
    toy = " (toy, cpu)" if dry else ""
    cases = (DRY_TRAIN,) if dry else TRAIN_CASES
    first = f"train_{cases[0][0]}"
    return [
        Step("install", "install", step_install),
        Step("versions", "versions", step_versions),
        Step("pytest", "pytest -m gpu", step_pytest),
        Step("wkv", "wkv6 (toy, cpu)" if dry else "wkv6 suite", step_wkv),
        Step("shards", "shards (toy)" if dry else "synthetic shards", step_shards),
        *(Step(f"train_{p}", f"train {p}{toy}", train_step(p, s, m), needs="shards") for p, s, m in cases),
        Step("generate", "generate (RNN, batch 1)" + (toy or ", bf16"), step_generate, needs=first),
        Step("long_context", "long context (toy, cpu)" if dry else "long context 400m, S=4096", step_long_context),
        Step(
            "cpu_inference",
            "cpu inference vs rwkv runtime" + (" (toy)" if dry else f", {cases[0][0]} fp32"),
            step_cpu_inference,
            needs=first,
        ),
    ]


# ------------------------------------------------------------------------------------------ what was built


def compiled_since(env: dict[str, str], t0: float) -> tuple[dict[str, float], int]:
    """(extension -> seconds to build, Triton kernels compiled) since wall-clock time ``t0``, read off torch's
    extension folder and Triton's cache (their defaults, or TORCH_EXTENSIONS_DIR / TRITON_CACHE_DIR)."""
    built: dict[str, float] = {}
    home = Path.home()
    ext = Path(env.get("TORCH_EXTENSIONS_DIR") or home / ".cache" / "torch_extensions")
    for so in ext.rglob("*.so") if ext.is_dir() else []:
        if so.stat().st_mtime >= t0:  # built now: from the first file this build wrote to the library
            files = [m for m in (p.stat().st_mtime for p in so.parent.rglob("*") if p.is_file()) if m >= t0]
            built[so.parent.name] = round(so.stat().st_mtime - min(files), 1)
    triton = Path(env.get("TRITON_CACHE_DIR") or Path(env.get("TRITON_HOME") or home) / ".triton" / "cache")
    kernels = 0
    for d in triton.iterdir() if triton.is_dir() else []:
        if d.is_dir() and d.stat().st_mtime >= t0 and any(p.suffix in (".cubin", ".hsaco") for p in d.iterdir()):
            kernels += 1
    return built, kernels


def built_text(built: dict[str, float], kernels: int) -> str:
    parts = [f"{name} ({secs:.0f} s)" for name, secs in built.items()]
    if kernels:
        parts.append(f"{kernels} Triton kernels")
    return "; ".join(parts) or "nothing"


# ------------------------------------------------------------------------------------------------ reporting


def write_reports(work: Path, report: dict) -> None:
    """JSON and markdown table, each replaced atomically (a reader never sees half a file)."""
    for name, text in (
        ("gpu_check.json", json.dumps(report, indent=2, default=str) + "\n"),
        ("gpu_check.md", markdown(report)),
    ):
        tmp = work / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(work / name)


def row_text(r: dict) -> str:
    text = r["result"] if isinstance(r["result"], str) else " | ".join(r["result"])
    return text if r["ok"] else f"{r['status'].upper()}: {text}"


def markdown(report: dict) -> str:
    head = (
        f"# GPU check on {report['device']}{' (dry)' if report['dry'] else ''}\n\n"
        f"{'complete' if report['complete'] else 'INCOMPLETE (still running, or cut short)'}: "
        f"{report['seconds']:.0f} s"
        + (f" of the {report['budget_s']:.0f} s budget" if report["budget_s"] else "")
        + f"; step limits sum to {report['limits_sum_s']} s. Versions: {report.get('versions_text', '?')}\n\n"
    )
    lines = ["| check | ok | seconds | limit s | built | result |", "|---|---|---:|---:|---|---|"]
    for r in report["checks"]:
        result = row_text(r).replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {r['check']} | {'yes' if r['ok'] else 'NO'} | {r['seconds']:.1f} | {r['limit_s']:.0f} | "
            f"{r['built']} | {result} |"
        )
    errors = [f"- {r['check']}:\n\n```\n{r['error']}\n```" for r in report["checks"] if r.get("error")]
    return (
        head
        + "\n".join(lines)
        + "\n"
        + ("\nLast lines of the failed steps:\n\n" + "\n".join(errors) + "\n" if errors else "")
    )


def run_step(step: Step, ctx: Ctx, args: argparse.Namespace, limit: float, done: dict[str, dict]) -> dict:
    ctx.limit, ctx.step_key, ctx.started = limit, step.key, time.perf_counter()
    wall0 = time.time()
    row = {
        "check": step.check,
        "ok": False,
        "status": "failed",
        "seconds": 0.0,
        "limit_s": round(limit, 1),
        "result": "",
        "error": None,
        "built": "nothing",
        "detail": None,
    }
    if step.needs and not done.get(step.needs, {}).get("ok"):
        row.update(status="skipped", result=f"skipped: needs {done.get(step.needs, {}).get('check', step.needs)}")
        return row
    if limit <= 0:
        row.update(status="skipped", result="skipped: the budget is spent")
        return row
    try:
        out = step.fn(ctx, args)
        row.update(ok=True, status="ok", result=out["result"], detail=out.get("detail"))
        row["seconds"] = out.get("seconds", time.perf_counter() - ctx.started)
    except StepFailed as exc:
        row.update(status="timed out" if exc.timed_out else "failed", result=str(exc), error=exc.tail or None)
    except Exception as exc:  # a bug or a missing package in the step's own code: record it, go on
        row.update(result=f"{type(exc).__name__}: {exc}", error=traceback.format_exc(limit=-3).strip())
    if not row["seconds"]:
        row["seconds"] = time.perf_counter() - ctx.started
    built, kernels = compiled_since(ctx.env, wall0)
    row["built"] = built_text(built, kernels)
    row["compiled"] = {"extensions_s": built, "triton_kernels": kernels}
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry", action="store_true", help="toy sizes on CPU: checks the plumbing, not the GPU")
    ap.add_argument("--out", type=Path, default=Path("gpu_check"))
    ap.add_argument(
        "--wheelhouse",
        type=Path,
        default=None,
        help="install ptbr and this wheelhouse into this Python first (tools/offline_install.py)",
    )
    ap.add_argument("--budget", type=float, default=BUDGET, help="seconds for the whole check (not in --dry)")
    ap.add_argument("--install-seconds", type=float, default=None, help=argparse.SUPPRESS)  # from gpu_check.sh
    ap.add_argument("--measure-generation", type=Path, default=None, help=argparse.SUPPRESS)  # step_generate's
    ap.add_argument("--tokens", type=int, default=256, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure_generation is not None:
        print(json.dumps(measure_generation(args.measure_generation, args.tokens, args.dry)))
        return 0
    t0 = time.perf_counter()
    if not args.dry and not cuda_device_present():
        print(
            "gpu_check: no CUDA device; run it on a GPU machine, or with --dry to test the plumbing on CPU",
            file=sys.stderr,
        )
        return 2
    work = args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PIP_NO_INDEX": "1"}
    # A Triton cache of the run's own: its kernel count is this run's compilations (a first run on a node is cold)
    env.setdefault("TRITON_CACHE_DIR", str(work / "cache" / "triton"))
    limits = DRY_LIMITS if args.dry else LIMITS
    plan = steps(args.dry)
    ctx = Ctx(work, args.dry, env, deadline=float("inf") if args.dry else t0 + args.budget)
    report = {
        "device": "cpu" if args.dry else "cuda",
        "dry": args.dry,
        "budget_s": None if args.dry else args.budget,
        "limits_sum_s": sum(limits[s.key] for s in plan),
        "seconds": 0.0,
        "complete": False,
        "wheelhouse": str(args.wheelhouse) if args.wheelhouse else None,
        "checks": [],
    }
    done: dict[str, dict] = {}
    for step in plan:
        limit = min(limits[step.key], ctx.deadline - time.perf_counter())
        row = run_step(step, ctx, args, limit, done)
        done[step.key] = row
        report["checks"].append(row)
        if step.key == "versions" and row["ok"]:
            info = row["detail"]
            report.update(
                versions=info, machine=info.get("machine"), device=info.get("device"), versions_text=row["result"]
            )
        report["seconds"] = time.perf_counter() - t0
        write_reports(work, report)
        flag = "ok" if row["ok"] else row["status"].upper()
        print(
            f"[gpu_check] {row['check']}: {flag} ({row['seconds']:.0f}/{row['limit_s']:.0f} s) {row_text(row)}",
            flush=True,
        )
    report.update(complete=True, seconds=time.perf_counter() - t0)
    write_reports(work, report)
    print(f"\nGPU check on {report['device']} ({report['seconds']:.0f} s):")
    print_table(
        [
            {
                "check": r["check"],
                "ok": "yes" if r["ok"] else "NO",
                "seconds": r["seconds"],
                "limit": r["limit_s"],
                "built": r["built"],
                "result": row_text(r),
            }
            for r in report["checks"]
        ],
        ["check", "ok", "seconds", "limit", "built", "result"],
    )
    print(f"JSON: {work / 'gpu_check.json'}  table: {work / 'gpu_check.md'}  logs: {work / 'logs'}")
    return 0 if all(r["ok"] for r in report["checks"]) else 1


def cuda_device_present() -> bool:
    """Asked in a subprocess: this process stays free of torch (it may run before the install)."""
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    try:
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


if __name__ == "__main__":
    sys.exit(main())
