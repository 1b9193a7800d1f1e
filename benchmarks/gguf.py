"""The GGUF export and llama.cpp on CPU, on a checkpoint of the 140m preset (145M parameters).

1. ``ptbr export --format gguf`` at f32, f16 and q8_0, from the checkpoint (fp32 master weights exported
   first, then converted) and from an existing fp32 export directory (no torch): wall time and peak RSS of
   the process and its children (sampled every 10 ms), against the size of the f32 GGUF (the largest output);
2. prefill tokens/s (a 512-token prompt) and generation tokens/s (one token at a time, greedy) of the
   export in llama.cpp (llama-cpp-python, one process per dtype so that its OpenMP threads never share a
   process with torch's) against ``ptbr generate``'s code path and the ``rwkv`` pip runtime (both fp32, as
   ``benchmarks/export.py`` measures them), at the same thread counts.

    python benchmarks/gguf.py [--preset 140m] [--threads 1,2] [--json out/gguf.json]
    python benchmarks/gguf.py --run-dir RUN --threads 1,16        # an existing run's checkpoint

On a machine shared with other work, every inference measurement is taken in ``--rounds`` rounds and the
fastest round counts (other work can only slow a measurement down); the load average is reported with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import print_table, write_report  # noqa: E402
from benchmarks.export import bench_inference, peak_rss, run_to_measure  # noqa: E402
from ptbr.data.build import default_workers  # noqa: E402

GGUF_DTYPES = ("f32", "f16", "q8_0")


def bench_gguf_export(run_dir: Path, work: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "ptbr.cli", "export"]
    secs, rss = peak_rss([*cli, str(run_dir), str(work / "export"), "--dtype", "fp32", "--quiet", "--overwrite"], env)
    rows = [
        {
            "case": "ptbr export --dtype fp32 (safetensors)",
            "source": "checkpoint",
            "seconds": secs,
            "peak_rss_MiB": rss / 2**20,
            "output_MiB": (work / "export" / "model.safetensors").stat().st_size / 2**20,
        }
    ]
    for source_name, source in (("checkpoint", run_dir), ("export dir", work / "export")):
        for dtype in GGUF_DTYPES:
            out = work / f"gguf-{dtype}"
            secs, rss = peak_rss(
                [*cli, str(source), str(out), "--format", "gguf", "--dtype", dtype, "--quiet", "--overwrite"], env
            )
            rows.append(
                {
                    "case": f"ptbr export --format gguf --dtype {dtype}",
                    "source": source_name,
                    "seconds": secs,
                    "peak_rss_MiB": rss / 2**20,
                    "output_MiB": (out / "model.gguf").stat().st_size / 2**20,
                }
            )
    largest = (work / "gguf-f32" / "model.gguf").stat().st_size / 2**20
    for r in rows:
        r["x_f32_gguf"] = r["peak_rss_MiB"] / largest
    return rows


def _rates(llm, tokens: list[int], gen_tokens: int, repeats: int) -> tuple[float, float]:
    """Median (prefill, generation) tokens/s of one loaded model, measured interleaved after a warm-up."""

    def prefill() -> None:
        llm.reset()
        llm.eval(tokens)

    def generate() -> None:
        llm.greedy(tokens[:1], gen_tokens)

    times: dict[str, list[float]] = {"prefill": [], "generate": []}
    prefill(), generate()  # warm-up
    for _ in range(repeats):
        for key, fn in (("prefill", prefill), ("generate", generate)):
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return len(tokens) / statistics.median(times["prefill"]), gen_tokens / statistics.median(times["generate"])


def llama_worker(model: str, threads: list[int], tokens: list[int], gen_tokens: int, repeats: int) -> list[dict]:
    """In its own process: prefill and generation tokens/s of one GGUF file at each thread count."""
    from ptbr.devtools.llamacpp import LlamaCpp

    rows = []
    for n in threads:
        llm = LlamaCpp(model, threads=n, n_ctx=len(tokens) + gen_tokens + 8, n_batch=len(tokens))
        prefill, generate = _rates(llm, tokens, gen_tokens, repeats)
        rows.append({"threads": n, "prefill_tokens_per_s": prefill, "generate_tokens_per_s": generate})
    return rows


def bench_llama(work: Path, threads: list[int], prompt_len: int, gen_tokens: int, repeats: int) -> list[dict]:
    import torch

    vocab = 32000
    tokens = [
        int(t) for t in torch.randint(2, min(500, vocab), (prompt_len,), generator=torch.Generator().manual_seed(0))
    ]  # benchmarks/export.py's
    rows = []
    for dtype in GGUF_DTYPES:
        spec = json.dumps(
            {
                "model": str(work / f"gguf-{dtype}" / "model.gguf"),
                "threads": threads,
                "tokens": tokens,
                "gen_tokens": gen_tokens,
                "repeats": repeats,
            }
        )
        proc = subprocess.run(
            [sys.executable, __file__, "--llama-worker", spec],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        if proc.returncode != 0:
            raise SystemExit(f"llama.cpp worker ({dtype}) failed:\n{proc.stderr[-3000:]}")
        for r in json.loads(proc.stdout.strip().splitlines()[-1]):
            rows.append(
                {
                    "case": f"prefill {prompt_len} tokens: llama.cpp {dtype}",
                    "threads": r["threads"],
                    "tokens_per_s": r["prefill_tokens_per_s"],
                }
            )
            rows.append(
                {
                    "case": f"generate {gen_tokens} tokens: llama.cpp {dtype}",
                    "threads": r["threads"],
                    "tokens_per_s": r["generate_tokens_per_s"],
                }
            )
    return rows


def best_of(rounds: list[list[dict]]) -> list[dict]:
    """Per (case, threads), the round with the most tokens/s: on a shared machine other work only slows a
    measurement down, so the fastest round is the one least disturbed."""
    best: dict[tuple[str, int], dict] = {}
    for rows in rounds:
        for r in rows:
            key = (r["case"], r["threads"])
            if key not in best or r["tokens_per_s"] > best[key]["tokens_per_s"]:
                best[key] = r
    return list(best.values())


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each row's tokens/s against the rwkv runtime's for the same task and thread count."""
    base = {(r["case"].split(":")[0], r["threads"]): r["tokens_per_s"] for r in rows if "rwkv runtime" in r["case"]}
    return [
        {
            **{k: v for k, v in r.items() if k not in ("ratio", "target")},
            "x_rwkv_runtime": r["tokens_per_s"] / base[(r["case"].split(":")[0], r["threads"])],
        }
        for r in rows
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="140m")
    cores = default_workers()
    ap.add_argument(
        "--threads",
        default=",".join(str(n) for n in sorted({1, cores})),
        help="comma-separated thread counts (default: 1 and every core)",
    )
    ap.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="export this run's newest checkpoint instead of training a 2-rank ZeRO-2 one",
    )
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per round (their median counts)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every measurement; the fastest counts")
    ap.add_argument("--skip-export", action="store_true", help="reuse the exports already in --workdir")
    ap.add_argument("--export-only", action="store_true", help="measure the exports only")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--llama-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.llama_worker:
        spec = json.loads(args.llama_worker)
        print(
            json.dumps(
                llama_worker(spec["model"], spec["threads"], spec["tokens"], spec["gen_tokens"], spec["repeats"])
            )
        )
        return 0
    threads = [int(n) for n in args.threads.split(",")]
    with tempfile.TemporaryDirectory(prefix="ptbr-bench-gguf-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run_dir = run_to_measure(work, args.preset, args.run_dir)
        export_rows: list[dict] = []
        if not args.skip_export:
            export_rows = bench_gguf_export(run_dir, work)
            print(
                f"\nGGUF export of a {args.preset} checkpoint (ZeRO-2, 2 ranks); peak RSS of the process and children"
            )
            print_table(export_rows, ["case", "source", "seconds", "peak_rss_MiB", "output_MiB", "x_f32_gguf"])
        rows: list[dict] = []
        load = [os.getloadavg()[0]]
        if not args.export_only:
            rounds = []
            for _ in range(args.rounds):
                infer_rows, _ = bench_inference(
                    run_dir, work, threads, args.prompt_len, args.gen_tokens, args.repeats, exported=True
                )
                rounds.append(infer_rows + bench_llama(work, threads, args.prompt_len, args.gen_tokens, args.repeats))
                load.append(os.getloadavg()[0])
            rows = with_ratios(best_of(rounds))
            rows.sort(key=lambda r: (r["case"].split(":")[0], r["threads"], -r["tokens_per_s"]))
            print(
                f"\nCPU inference, same thread count (ptbr and the rwkv runtime in fp32), fastest of {args.rounds} "
                f"rounds; 1-minute load average {', '.join(f'{x:.1f}' for x in load)}"
            )
            print_table(rows, ["case", "threads", "tokens_per_s", "x_rwkv_runtime"])
    write_report(
        args.json,
        "gguf",
        export_rows + rows,
        {"preset": args.preset, "threads": threads, "rounds": args.rounds, "load_average": load},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
