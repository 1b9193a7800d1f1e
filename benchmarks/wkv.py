"""WKV6 backend benchmark: forward and forward+backward time per backend and shape.

    python benchmarks/wkv.py                      # CPU: reference vs chunked torch
    python benchmarks/wkv.py --json out/wkv.json  # also write the JSON report

Prints a table and a JSON report with forward ms, forward+backward ms, tokens/s and the
speed-up over the sequential ``reference`` backend.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import print_table, time_call, write_report  # noqa: E402
from ptbr.ops import wkv6  # noqa: E402


def make(B: int, T: int, H: int, N: int, device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = {n: torch.randn(B, T, H, N, generator=g) for n in "rkv"}
    x["w"] = torch.empty(B, T, H, N).uniform_(-6.0, 1.0, generator=g)
    x["u"] = torch.randn(H, N, generator=g)
    return {n: t.to(device=device, dtype=dtype).requires_grad_(True) for n, t in x.items()}


def bench_backend(backend: str, shape: tuple[int, int, int, int], device: str, dtype: torch.dtype,
                  repeats: int) -> dict:
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
    return {"backend": backend, "B": B, "T": T, "H": H, "N": N, "dtype": str(dtype).split(".")[-1],
            "fwd_ms": fwd_ms, "fwd_bwd_ms": fb_ms, "tokens_per_s": B * T / (fb_ms / 1e3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backends", default=None, help="comma list (default: all for the device)")
    ap.add_argument("--lengths", default="256,1024")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="write the JSON report here")
    args = ap.parse_args()

    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    default = ["reference", "torch"] + (["triton"] if args.device == "cuda" else [])
    backends = args.backends.split(",") if args.backends else default
    dtype = getattr(torch, args.dtype)
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
    print_table(rows, ["backend", "B", "T", "H", "N", "dtype", "fwd_ms", "fwd_bwd_ms", "tokens_per_s",
                       "speedup_fwd", "speedup_fwd_bwd"])
    write_report(args.json, "wkv", rows, {"device": args.device})


if __name__ == "__main__":
    main()
