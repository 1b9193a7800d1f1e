"""One GPU check: everything that needs a CUDA card, in one run, one table and one JSON.

1. the CUDA test variants (``pytest -m gpu``): the Triton WKV6 kernel against the sequential reference
   (values and gradients, extreme decays, ragged lengths), the model on CUDA;
2. the WKV6 suite (``benchmarks/wkv.py --gpu-suite``) against flash-linear-attention's ``chunk_rwkv6``
   (installed here if missing) at B=8 T=4096 H=32 N=64 bf16: forward and backward time, peak memory,
   error against float64;
3. single-GPU training throughput and MFU of the 140m and 1b5 presets (their configs: bf16, ZeRO-2,
   seq 4096, gradient checkpointing; micro-batch 8, ~30 steps) on synthetic shards written locally, no
   S3, with the memory high-water mark;
4. generation tokens/s (RNN mode, bf16, batch 1) of the exported 140m run;
5. long context (``benchmarks/long_context.py``): a 400m training step at L = 4096, 16k, 64k in segments of
   4096 carrying the state, against one pass up to 16k: tokens/s and peak memory;
6. CPU inference against the ``rwkv`` pip runtime (``benchmarks/export.py --inference-only``) on the 140m
   run's fp32 weights, at 1 thread and at every core of the machine: prefill and generation tokens/s
   (the prefill ratio grows with the core count, and a 2-core machine cannot show the 3x target).

    bash benchmarks/gpu_check.sh            # on the GPU machine; < 8 minutes on an H100-class card
    bash benchmarks/gpu_check.sh --dry      # the same steps at toy sizes on CPU (tests the plumbing)

Writes ``OUT/gpu_check.json`` (``--out``, default ``gpu_check/``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import machine_info, print_table  # noqa: E402
from benchmarks.train import build_dataset  # noqa: E402
from ptbr.data.build import default_workers  # noqa: E402

# (preset, steps, micro-batch) at full size; the dry mode swaps in the tiny model on CPU
TRAIN_CASES = (("140m", 30, 8), ("1b5", 30, 8))


def run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """(exit code, combined output, seconds); a timeout is exit code 124."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)
        return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return 124, out, time.perf_counter() - t0


def check_tests(dry: bool) -> dict:
    code, out, secs = run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"],
                          timeout=300 if not dry else 120)
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|deselected)", out)}
    ok = code == 0 or (code == 5 and dry)  # 5: nothing collected/ran (CPU)
    return {"check": "pytest -m gpu", "ok": ok, "seconds": secs,
            "result": ", ".join(f"{n} {k}" for k, n in counts.items()) or out.strip().splitlines()[-1:],
            "detail": counts}


def check_wkv(work: Path, dry: bool) -> dict:
    report = work / "wkv.json"
    if dry:
        cmd = [sys.executable, "benchmarks/wkv.py", "--device", "cpu", "--lengths", "64", "--batch", "1", "--heads",
               "2", "--head-size", "16", "--repeats", "1", "--json", str(report)]
    else:
        try:
            import fla  # noqa: F401
        except ImportError:
            run([sys.executable, "-m", "pip", "install", "-q", "flash-linear-attention"], timeout=300)
        cmd = [sys.executable, "benchmarks/wkv.py", "--gpu-suite", "--json", str(report)]
    code, out, secs = run(cmd, timeout=300)
    rows = json.loads(report.read_text()).get("rows", []) if report.is_file() else []
    def one(r: dict) -> str:
        text = f"{r.get('backend', '?')} {r.get('T', '')}: fwd+bwd {r.get('fwd_bwd_ms', float('nan')):.2f} ms"
        if "peak_mem_mib" in r:
            text += f", {r['peak_mem_mib']:,.0f} MiB"
        if "err_max" in r:
            text += f", err {r['err_max']:.1e}"
        return text

    summary = "; ".join(one(r) for r in rows if isinstance(r, dict))
    return {"check": "wkv6 suite" if not dry else "wkv6 (toy, cpu)", "ok": code == 0, "seconds": secs,
            "result": summary or out.strip().splitlines()[-1:], "detail": rows}


def check_long_context(work: Path, dry: bool) -> dict:
    """Training step tokens/s and peak memory at L = S, 4S, 16S with the state carried across segments of S,
    against one pass where it fits (benchmarks/long_context.py)."""
    report = work / "long_context.json"
    if dry:
        sizes = ["--segment", "16", "--factors", "1,4", "--batch", "1", "--repeats", "1", "--cpu"]
    else:
        sizes = ["--model", "400m", "--segment", "4096", "--factors", "1,4,16", "--batch", "1", "--repeats", "2",
                 "--max-one-pass", "16384"]
    code, out, secs = run([sys.executable, "benchmarks/long_context.py", *sizes, "--json", str(report)], timeout=600)
    rows = json.loads(report.read_text()).get("rows", []) if report.is_file() else []
    summary = "; ".join(f"{r['mode']} {r['L']}: {r['tokens_per_s']:,.0f} tok/s, {r['peak_mib']:,.0f} MiB"
                        for r in rows if "tokens_per_s" in r)
    name = "long context (toy, cpu)" if dry else "long context 400m, S=4096"
    ok = code == 0 and any(r.get("mode") == "segments" and "tokens_per_s" in r for r in rows)
    return {"check": name, "ok": ok, "seconds": secs, "result": summary or out.strip().splitlines()[-1:],
            "detail": rows}


def check_cpu_inference(work: Path, preset: str, dry: bool) -> dict:
    """Prefill and generation on CPU (fp32) against the rwkv runtime at 1 thread and at every core."""
    report = work / "cpu_inference.json"
    cores = default_workers()
    sizes = ["--prompt-len", "64", "--gen-tokens", "8", "--repeats", "1"] if dry else ["--repeats", "3"]
    code, out, secs = run([sys.executable, "benchmarks/export.py", "--preset", preset, "--run-dir",
                           str(work / f"train_{preset}"), "--inference-only", "--workdir", str(work / "cpu_inference"),
                           "--threads", f"1,{max(cores, 2)}", *sizes, "--json", str(report)], timeout=600)
    data = json.loads(report.read_text()) if report.is_file() else {}
    rows = [r for r in data.get("rows", []) if r.get("case", "").endswith(": ptbr")]
    summary = "; ".join(f"{r['case'].split(' ')[0]} {r['threads']} thr {r['ratio']:.2f}x" for r in rows)
    ok = code == 0 and len(rows) == 4
    return {"check": "cpu inference vs rwkv runtime" + (" (toy)" if dry else f", {preset} fp32"), "ok": ok,
            "seconds": secs, "result": summary or out.strip().splitlines()[-3:],
            "detail": {"rows": data.get("rows", []), "prefill_scaling": data.get("prefill_scaling", [])}}


def check_training(work: Path, shards: Path, preset: str, steps: int, micro: int, dry: bool) -> dict:
    run_dir = work / f"train_{preset}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh measurement each time
    if dry:
        config, extra = "configs/train/tiny_cpu.yaml", ["precision=fp32", "data.seq_len=32"]
    else:
        config, extra = f"configs/train/{preset}.yaml", []
    cmd = [sys.executable, "-m", "ptbr.cli", "train", "--config", config, f"data.source={shards}",
           f"data.cache_dir={work}/cache", f"train.run_dir={run_dir}", f"train.max_steps={steps}",
           f"batch.micro_batch_size={micro}", f"batch.global_batch_size={micro}", "train.log_every=1",
           "train.eval_every=0", "train.checkpoint_every=0", "train.eval_samples=8", "data.num_canonical_nodes=1",
           *extra, "--resume", "never"]
    code, out, secs = run(cmd, timeout=420)
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    train = [r for r in records if r.get("kind") == "train"][3:]  # warm-up (compilation, allocator) left out
    if code != 0 or not train:
        return {"check": f"train {preset}", "ok": False, "seconds": secs, "result": out.strip().splitlines()[-3:]}
    tps = statistics.median(r["tokens_per_s"] for r in train)
    mfu = statistics.median(r["mfu"] for r in train) if "mfu" in train[-1] else None
    mem = max(r["memory_gib"] for r in train)
    result = f"{tps:,.0f} tok/s" + (f", MFU {mfu * 100:.1f}%" if mfu is not None else "") + f", peak {mem:.1f} GiB"
    return {"check": f"train {preset}" + (" (toy, cpu)" if dry else ""), "ok": True, "seconds": secs,
            "result": result, "detail": {"tokens_per_s": tps, "mfu": mfu, "memory_gib": mem, "steps": len(train)}}


def check_generation(work: Path, preset: str, dry: bool, tokens: int = 256) -> dict:
    export = work / "export"
    code, out, secs = run([sys.executable, "-m", "ptbr.cli", "export", str(work / f"train_{preset}"), str(export),
                           "--dtype", "bf16", "--overwrite", "--quiet"], timeout=300)
    if code != 0:
        return {"check": "generate", "ok": False, "seconds": secs, "result": out.strip().splitlines()[-2:]}
    import torch

    from ptbr.infer.model_io import load_model
    from ptbr.infer.rnn import RNN

    device = "cpu" if dry else "cuda"
    lm = load_model(export, device, dtype=torch.float32 if dry else torch.bfloat16)
    rnn = RNN(lm.model)
    n = 16 if dry else tokens
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def generate() -> None:
        state, token = lm.model.zero_state(1, device), torch.tensor([1], device=device)
        for _ in range(n):
            logits, state = rnn.step(token, state)
            token = logits.argmax(-1)
        sync()

    generate()  # warm-up
    t0 = time.perf_counter()
    generate()
    rate = n / (time.perf_counter() - t0)
    return {"check": "generate (RNN, batch 1)" + (" (toy, cpu)" if dry else ", bf16"), "ok": True,
            "seconds": secs, "result": f"{rate:,.1f} tok/s", "detail": {"tokens_per_s": rate, "tokens": n}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry", action="store_true", help="toy sizes on CPU: checks the plumbing, not the GPU")
    ap.add_argument("--out", type=Path, default=Path("gpu_check"))
    args = ap.parse_args()
    import torch

    if not args.dry and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run it on a GPU machine, or with --dry to test the plumbing on CPU",
              file=sys.stderr)
        return 2
    work = args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = [check_tests(args.dry)]
    print(f"[gpu_check] tests: {rows[-1]['result']}", flush=True)
    rows.append(check_wkv(work, args.dry))
    print(f"[gpu_check] wkv: {'ok' if rows[-1]['ok'] else 'FAILED'}", flush=True)
    shards = work / "data" / "shards"
    if not (shards / "manifest.json").is_file():
        (work / "data").mkdir(exist_ok=True)
        build_dataset(work / "data", seq_len=32 if args.dry else 4096, vocab=512,
                      docs=300 if args.dry else 6000)
    cases = (("tiny", 4, 2),) if args.dry else TRAIN_CASES
    for preset, steps, micro in cases:
        rows.append(check_training(work, shards, preset, steps, micro, args.dry))
        print(f"[gpu_check] train {preset}: {rows[-1]['result']}", flush=True)
    first = cases[0][0]
    rows.append(check_generation(work, first, args.dry) if rows[2]["ok"] else
                {"check": "generate", "ok": False, "seconds": 0.0, "result": "skipped: training failed"})
    rows.append(check_long_context(work, args.dry))
    print(f"[gpu_check] long context: {rows[-1]['result']}", flush=True)
    rows.append(check_cpu_inference(work, first, args.dry) if rows[2]["ok"] else
                {"check": "cpu inference vs rwkv runtime", "ok": False, "seconds": 0.0,
                 "result": "skipped: training failed"})
    print(f"[gpu_check] cpu inference: {rows[-1]['result']}", flush=True)
    report = {"machine": machine_info(), "device": torch.cuda.get_device_name(0) if torch.cuda.is_available()
              else "cpu", "dry": args.dry, "seconds": time.perf_counter() - t0, "checks": rows}
    (work / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nGPU check on {report['device']} ({report['seconds']:.0f} s):")
    print_table([{"check": r["check"], "ok": "yes" if r["ok"] else "NO", "seconds": r["seconds"],
                  "result": r["result"] if isinstance(r["result"], str) else " | ".join(r["result"])}
                 for r in rows], ["check", "ok", "seconds", "result"])
    print(f"JSON: {work / 'gpu_check.json'}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
