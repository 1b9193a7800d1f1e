"""Long context: training throughput and peak memory with the state carried across segments.

For L = S, 4S, 16S (S = ``--segment``), one training step (forward + backward, loss in float32) of
the model over a batch of L-token samples, run two ways:

* ``segments``: ``train.segment_len = S``, full BPTT through the carried state, each segment
  recomputed in the backward pass (what ``configs/train/1b5-long.yaml`` does);
* ``one pass``: the whole L at once (where it fits: ``--max-one-pass``).

Each (mode, L) runs in a fresh process so that peak memory is its own: on CPU the growth of the peak
RSS over the process after model set-up (gradients plus activations), on CUDA
``torch.cuda.max_memory_allocated`` above the weights. ``kept_mib`` is what autograd keeps from the
forward to the backward pass: every activation in one pass; with segments only the segment inputs
and carried states (each segment's activations exist only while it is recomputed).

    python benchmarks/long_context.py [--segment 512] [--factors 1,4,16] [--batch 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import print_table, write_report  # noqa: E402


def measure(mode: str, L: int, args: argparse.Namespace) -> dict:
    """One (mode, L) in this process: median step time over ``--repeats`` and peak memory."""
    import torch

    from ptbr.model import RWKV6, RWKV6Config

    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    cfg = RWKV6Config.load(args.model)
    torch.manual_seed(0)
    model = RWKV6(cfg).to(device=device, dtype=dtype).train()
    idx = torch.randint(0, cfg.vocab_size, (args.batch, L + 1), device=device)
    segment_len = args.segment if mode == "segments" else None
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(idx[:, :-1], targets=idx[:, 1:], segment_len=segment_len)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()

    # Load every library a step touches (activation checkpointing imports ~120 MB of code on first use) on a
    # 16-token sample, so that the RSS high-water mark below counts tensors only.
    short = idx[:, :17]
    model(short[:, :-1], targets=short[:, 1:], segment_len=8).backward()
    model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # a high-water mark: take it first
    step()  # warm-up, counted in the peak (gradients and activations are allocated here first)
    times = []
    for _ in range(args.repeats):
        saved[0] = 0
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    seconds = times[len(times) // 2]
    peak = (
        torch.cuda.max_memory_allocated() - base
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    )
    return {
        "mode": mode,
        "L": L,
        "segments": -(-L // args.segment) if segment_len else 1,
        "tokens_per_s": args.batch * L / seconds,
        "step_s": seconds,
        "peak_mib": peak / 2**20,
        "kept_mib": saved[0] / 2**20,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }


def _worker(mode: str, L: int, argv: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--worker", f"{mode}:{L}"], capture_output=True, text=True, cwd=REPO, env=env
    )
    if out.returncode != 0:
        return {"mode": mode, "L": L, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_isolated(mode: str, L: int, argv: list[str]) -> dict:
    """Speed from a process with the default allocator; on CPU, memory from a second one where glibc
    serves every block above 64 KiB from its own mmap and returns it when freed (by default freed heap
    stays mapped, and the RSS peak would count garbage). That allocator is ~3x slower, hence two runs."""
    row = _worker(mode, L, argv, dict(os.environ))
    if "error" in row or row["device"] != "cpu":
        return row
    mem = _worker(
        mode,
        L,
        argv,
        {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_ARENA_MAX": "1"},
    )
    return {**row, "peak_mib": mem.get("peak_mib", float("nan"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="configs/model/tiny.yaml")
    p.add_argument("--segment", type=int, default=512)
    p.add_argument("--factors", default="1,4,16")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-one-pass", type=int, default=1 << 20, help="longest L run in one pass")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        mode, L = args.worker.split(":")
        print(json.dumps(measure(mode, int(L), args)))
        return
    argv = [
        "--model",
        args.model,
        "--segment",
        str(args.segment),
        "--batch",
        str(args.batch),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        *(["--cpu"] if args.cpu else []),
    ]
    rows = []
    for factor in (int(f) for f in args.factors.split(",")):
        length = factor * args.segment
        rows.append(run_isolated("segments", length, argv))
        if length <= args.max_one_pass:
            rows.append(run_isolated("one pass", length, argv))
    base = next(r for r in rows if r["mode"] == "segments" and r["L"] == args.segment)
    for r in rows:
        if "peak_mib" in r:
            r["peak_vs_L=S"] = r["peak_mib"] / base["peak_mib"] if base["peak_mib"] > 0 else float("nan")
    print(f"model {args.model}, batch {args.batch}, segment S = {args.segment}, device {base.get('device')}")
    print_table(
        rows, ["mode", "L", "segments", "tokens_per_s", "step_s", "peak_mib", "peak_vs_L=S", "kept_mib", "error"]
    )
    write_report(args.json, "long_context", rows, {"segment": args.segment, "batch": args.batch, "model": args.model})


if __name__ == "__main__":
    main()
