"""WKV6 backend benchmark: forward and forward+backward time per backend and shape.

    python benchmarks/wkv.py                      # CPU: reference vs chunked torch
    python benchmarks/wkv.py --json out/wkv.json  # also write the JSON report
    python benchmarks/wkv.py --gpu-suite          # GPU: Triton vs chunked torch vs fla's chunk_rwkv6
    TRITON_INTERPRET=1 python benchmarks/wkv.py --gpu-suite --device cpu --suite-shape 1,128,2,16
                                                  # the suite's code path on CPU (interpreter; no
                                                  # meaningful timings, no fla)

The default mode prints a table and a JSON report with forward ms, forward+backward ms, tokens/s and
the speed-up over the sequential ``reference`` backend.

``--gpu-suite`` measures the training shape B=8, T=4096, C=2048 (H=32, N=64) in bf16 (change it with
``--suite-shape B,T,H,N``): forward ms, backward ms (the backward pass alone, replayed on one
graph), forward+backward ms and the peak memory above the inputs, for ``triton``, ``torch`` (the
chunked torch path) and, when it can be imported, flash-linear-attention's ``chunk_rwkv6`` (which
takes the log-decay: it is given -exp(w) in fp32, computed inside the timed call as a model would,
and scale=1.0). It also reports every backend's relative RMS error against the chunked torch path
run in float64 (exact to ~1e-12), and whether Triton's forward+backward is no slower than fla's.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import print_table, time_call, write_report  # noqa: E402
from ptbr.ops import wkv6  # noqa: E402

SUITE_SHAPE = (8, 4096, 32, 64)
GRAD_NAMES = ("r", "k", "v", "w", "u")
Runner = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


def make(B: int, T: int, H: int, N: int, device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = {n: torch.randn(B, T, H, N, generator=g) for n in "rkv"}
    x["w"] = torch.empty(B, T, H, N).uniform_(-6.0, 1.0, generator=g)
    x["u"] = torch.randn(H, N, generator=g)
    return {n: t.to(device=device, dtype=dtype).requires_grad_(True) for n, t in x.items()}


def bench_backend(
    backend: str, shape: tuple[int, int, int, int], device: str, dtype: torch.dtype, repeats: int
) -> dict:
    B, T, H, N = shape
    x = make(B, T, H, N, device, dtype)
    sync = torch.cuda.synchronize if device == "cuda" else None

    def fwd() -> None:
        with torch.no_grad():
            wkv6(**x, backend=backend)

    def fwd_bwd() -> None:
        y, s = wkv6(**x, backend=backend)
        (y.float().sum() + s.sum()).backward()

    fwd_ms = time_call(fwd, repeats=repeats, sync=sync)
    fb_ms = time_call(fwd_bwd, repeats=repeats, sync=sync)
    return {
        "backend": backend,
        "B": B,
        "T": T,
        "H": H,
        "N": N,
        "dtype": str(dtype).split(".")[-1],
        "fwd_ms": fwd_ms,
        "fwd_bwd_ms": fb_ms,
        "tokens_per_s": B * T / (fb_ms / 1e3),
    }


# ----------------------------------------------------------------------------------------- GPU suite


def _ptbr_runner(backend: str) -> Runner:
    return lambda x: wkv6(**x, backend=backend)


def _fla_runner() -> tuple[Runner | None, str]:
    """fla's chunk_rwkv6 with this project's contract (raw decay in, fp32 final state out)."""
    try:
        from fla.ops.rwkv6 import chunk_rwkv6
    except Exception as exc:  # not installed, or an incompatible torch/triton
        return None, f"fla unavailable ({type(exc).__name__}: {exc}); pip install flash-linear-attention"

    def run(x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        log_decay = -torch.exp(x["w"].float())
        return chunk_rwkv6(x["r"], x["k"], x["v"], log_decay, x["u"], scale=1.0, output_final_state=True)

    return run, "fla.ops.rwkv6.chunk_rwkv6(r, k, v, -exp(w.float()), u, scale=1.0)"


def _timer(device: str, repeats: int) -> Callable[[Callable[[], object]], float]:
    """Median ms: triton.testing.do_bench on CUDA (events, L2 flushed), wall clock elsewhere."""
    if device == "cuda":
        import triton.testing

        return lambda fn: float(
            triton.testing.do_bench(fn, warmup=25, rep=max(100, 20 * repeats), return_mode="median")
        )
    return lambda fn: time_call(fn, repeats=repeats, warmup=1)


def _cotangents(x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, H, N = x["r"].shape
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(B, T, H, N, generator=g).to(device=x["r"].device, dtype=x["r"].dtype)
    gs = torch.randn(B, H, N, N, generator=g).to(device=x["r"].device)
    return gy, gs


def _grads(run: Runner, x: dict[str, torch.Tensor], cot) -> dict[str, torch.Tensor]:
    y, s = run(x)
    inputs = [x[n] for n in GRAD_NAMES]
    grads = torch.autograd.grad((y, s), inputs, (cot[0].to(y.dtype), cot[1].to(s.dtype)))
    return {"y": y.detach(), "state": s.detach(), **dict(zip(GRAD_NAMES, grads))}


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30))


def measure(name: str, run: Runner, x: dict[str, torch.Tensor], device: str, repeats: int) -> dict:
    """Forward, backward alone, forward+backward (ms) and peak memory above the inputs (MiB)."""
    timer = _timer(device, repeats)
    cot = _cotangents(x)
    inputs = [x[n] for n in GRAD_NAMES]

    def fwd() -> None:
        with torch.no_grad():
            run(x)

    def fwd_bwd() -> None:
        y, s = run(x)
        torch.autograd.grad((y, s), inputs, (cot[0].to(y.dtype), cot[1].to(s.dtype)))

    row = {"backend": name, "fwd_ms": timer(fwd)}
    y, s = run(x)  # one graph, its backward replayed (retain_graph): the backward pass alone
    graph = [(y, s), (cot[0].to(y.dtype), cot[1].to(s.dtype))]
    row["bwd_ms"] = timer(lambda: torch.autograd.grad(graph[0], inputs, graph[1], retain_graph=True))
    graph.clear()
    del y, s
    row["fwd_bwd_ms"] = timer(fwd_bwd)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fwd_bwd()
        torch.cuda.synchronize()
        row["peak_mem_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    B, T = x["r"].shape[:2]
    row["tokens_per_s"] = B * T / (row["fwd_bwd_ms"] / 1e3)
    return row


def precision(runs: dict[str, Runner], x: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Relative RMS error of y, the final state and every gradient against float64 (chunked torch)."""
    cot = _cotangents(x)
    wide = {n: t.detach().double().requires_grad_(True) for n, t in x.items()}
    exact = _grads(_ptbr_runner("torch"), wide, (cot[0].double(), cot[1].double()))
    out = {}
    for name, run in runs.items():
        got = _grads(run, x, cot)
        out[name] = {k: _rel_rms(got[k], exact[k]) for k in exact}
        del got
    return out


def gpu_suite(args: argparse.Namespace) -> None:
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "--gpu-suite needs a CUDA GPU and none is visible (for the CPU table, drop the flag; to run "
            "the suite's code path on CPU: TRITON_INTERPRET=1 ... --gpu-suite --device cpu "
            "--suite-shape 1,128,2,16)"
        )
    B, T, H, N = (int(v) for v in args.suite_shape.split(","))
    dtype = getattr(torch, args.dtype)
    x = make(B, T, H, N, device, dtype)
    runs: dict[str, Runner] = {"triton": _ptbr_runner("triton"), "torch": _ptbr_runner("torch")}
    fla, fla_note = _fla_runner() if device == "cuda" else (None, "fla: CUDA only")
    if fla is not None:
        runs["fla"] = fla
    rows = []
    for name, run in runs.items():
        row = {
            **measure(name, run, x, device, args.repeats),
            "B": B,
            "T": T,
            "H": H,
            "N": N,
            "dtype": str(dtype).split(".")[-1],
        }
        rows.append(row)
        print(f"  measured {name}", file=sys.stderr)
        write_report(args.json, "wkv_gpu_suite", rows, {"device": device, "suite": True}, partial=True)
    if not args.no_precision:
        for row, errs in zip(rows, precision(runs, x).values()):
            row["err_y"], row["err_dw"] = errs["y"], errs["w"]
            row["err_max"] = max(errs.values())
            row["errors"] = errs
    by_name = {r["backend"]: r for r in rows}
    target = None
    if "fla" in by_name:
        target = by_name["triton"]["fwd_bwd_ms"] <= by_name["fla"]["fwd_bwd_ms"]
        for r in rows:
            r["fwd_bwd_vs_fla"] = by_name["fla"]["fwd_bwd_ms"] / r["fwd_bwd_ms"]
    print_table(
        rows,
        [
            "backend",
            "B",
            "T",
            "H",
            "N",
            "dtype",
            "fwd_ms",
            "bwd_ms",
            "fwd_bwd_ms",
            "peak_mem_mib",
            "tokens_per_s",
            "fwd_bwd_vs_fla",
            "err_y",
            "err_dw",
            "err_max",
        ],
    )
    print(f"\n{fla_note}")
    if target is not None:
        print(f"target (Triton forward+backward no slower than fla): {'met' if target else 'NOT met'}")
    extra = {
        "device": device,
        "suite": True,
        "fla": fla_note,
        "target_met": target,
        "note": "bwd_ms = backward pass alone on a retained graph; peak_mem_mib = peak above the inputs; "
        "err_* = relative RMS vs the chunked torch path in float64",
    }
    if device == "cuda":
        extra["gpu"] = torch.cuda.get_device_name()
    write_report(args.json, "wkv_gpu_suite", rows, extra)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="default: cuda when available (always with --gpu-suite)")
    ap.add_argument("--backends", default=None, help="comma list (default: all for the device)")
    ap.add_argument("--lengths", default="256,1024")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="default float32 (bfloat16 with --gpu-suite)",
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None, help="write the JSON report here")
    ap.add_argument(
        "--gpu-suite",
        action="store_true",
        help="Triton vs chunked torch vs fla chunk_rwkv6 at the training shape (needs a GPU)",
    )
    ap.add_argument("--suite-shape", default=",".join(map(str, SUITE_SHAPE)), help="B,T,H,N for --gpu-suite")
    ap.add_argument("--no-precision", action="store_true", help="--gpu-suite: skip the float64 comparison")
    args = ap.parse_args()

    if args.gpu_suite:
        args.device = args.device or "cuda"
        args.dtype = args.dtype or "bfloat16"
        gpu_suite(args)
        return
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    default = ["reference", "torch"] + (["triton"] if args.device == "cuda" else [])
    backends = args.backends.split(",") if args.backends else default
    dtype = getattr(torch, args.dtype or "float32")
    rows = []
    for T in (int(t) for t in args.lengths.split(",")):
        shape = (args.batch, T, args.heads, args.head_size)
        base = None
        for backend in backends:
            row = bench_backend(backend, shape, args.device, dtype, args.repeats)
            if backend == "reference":
                base = row
            if base is not None:
                row["speedup_fwd"] = base["fwd_ms"] / row["fwd_ms"]
                row["speedup_fwd_bwd"] = base["fwd_bwd_ms"] / row["fwd_bwd_ms"]
            rows.append(row)
            print(f"  measured {backend} T={T}", file=sys.stderr)
            write_report(args.json, "wkv", rows, {"device": args.device}, partial=True)
    print_table(
        rows,
        [
            "backend",
            "B",
            "T",
            "H",
            "N",
            "dtype",
            "fwd_ms",
            "fwd_bwd_ms",
            "tokens_per_s",
            "speedup_fwd",
            "speedup_fwd_bwd",
        ],
    )
    write_report(args.json, "wkv", rows, {"device": args.device})


if __name__ == "__main__":
    main()
