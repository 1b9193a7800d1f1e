"""Export and inference against the standard tools, on a checkpoint of the 140m preset (145M parameters).

1. a ZeRO-2 checkpoint written by 2 gloo ranks (1 training step, fp32, tiny sequences: only the
   checkpoint matters);
2. ``ptbr export --dtype fp32`` vs DeepSpeed's ``zero_to_fp32`` on the same checkpoint: wall time and peak
   RSS (sampled every 10 ms) of each process; targets: ptbr's peak <= 1.3x the fp32 weight bytes and
   below zero_to_fp32's;
3. prefill tokens/s (a 512-token prompt) and generation tokens/s (one token at a time) of ptbr on the
   exported weights vs the ``rwkv`` pip runtime on the exported ``.pth`` (strategy "cpu fp32"), same
   thread count, at each of ``--threads`` (default 1 and every core); targets: generation >= 1.2x,
   prefill >= 3x.

The prefill ratio depends on the core count: the runtime ingests a prompt with matrix products over all
tokens (which use every thread) plus a Python loop over the tokens for the WKV recurrence (which uses
one), ptbr with the chunked WKV (matrix products too). With two or more thread counts the benchmark fits
Amdahl's law, t(p) = parallel/p + serial, to each one's prefill times and prints the ratio it implies at
``--predict-threads`` (an extrapolation, marked as such; measure on such a machine to confirm).

    python benchmarks/export.py [--preset 140m] [--threads 1,2] [--json out/export.json]
    python benchmarks/export.py --run-dir RUN --inference-only --threads 1,16   # an existing run's checkpoint
"""

from __future__ import annotations

import argparse
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
from benchmarks.train import build_dataset, sh, torchrun_train  # noqa: E402
from ptbr.data.build import default_workers  # noqa: E402


def peak_rss(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """(seconds, peak RSS bytes of the process and its children) of a command."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.01)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read()[-3000:]}")
    return seconds, peak


def run_to_measure(work: Path, preset: str, run_dir: Path | None) -> Path:
    """The run whose checkpoint is measured: ``run_dir`` if given, one already in ``work``, else a new one."""
    if run_dir:
        return run_dir
    if (work / "run" / "checkpoints").is_dir():
        return work / "run"
    return checkpoint(work, preset)


def checkpoint(work: Path, preset: str) -> Path:
    shards = build_dataset(work, seq_len=32, vocab=512)
    run_dir = work / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    overrides = [
        f"model={preset}",
        f"train.run_dir={run_dir}",
        f"data.source={shards}",
        f"data.cache_dir={work}/cache",
        "batch.micro_batch_size=1",
        "batch.global_batch_size=2",
        "train.max_steps=1",
        "train.eval_every=0",
        "train.eval_samples=2",
        "zero.stage=2",
        "precision=fp32",
    ]
    sh(*torchrun_train(2, overrides), env=env)
    return run_dir


def bench_export(run_dir: Path, work: Path, params: int) -> list[dict]:
    from ptbr.checkpoint import layout

    ckpt = layout.newest_usable(run_dir / "checkpoints", print)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    fp32_bytes = params * 4
    rows = []
    ours = peak_rss(
        [
            sys.executable,
            "-m",
            "ptbr.cli",
            "export",
            str(run_dir),
            str(work / "export"),
            "--dtype",
            "fp32",
            "--quiet",
            "--overwrite",
        ],
        env,
    )
    theirs = peak_rss(
        [
            sys.executable,
            "-m",
            "deepspeed.utils.zero_to_fp32",
            str(ckpt.path.parent),
            str(work / "zero_to_fp32"),
            "--tag",
            ckpt.tag,
            "--safe_serialization",
        ],
        env,
    )
    for name, (secs, rss) in (("ptbr export --dtype fp32", ours), ("deepspeed zero_to_fp32", theirs)):
        rows.append(
            {
                "case": name,
                "seconds": secs,
                "peak_rss_MiB": rss / 2**20,
                "x_fp32_weights": rss / fp32_bytes,
                "target": "<= 1.3 and < zero_to_fp32" if "ptbr" in name else "",
            }
        )
    return rows


def amdahl(times: dict[int, float]) -> tuple[float, float]:
    """(parallel seconds on one thread, serial seconds): least squares of t(p) = parallel/p + serial."""
    xs, ys = [1 / p for p in times], list(times.values())
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    parallel = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    serial = my - parallel * mx
    return parallel, max(serial, 0.0)


def bench_inference(
    run_dir: Path,
    work: Path,
    threads: list[int],
    prompt_len: int,
    gen_tokens: int,
    repeats: int,
    exported: bool = False,
) -> tuple[list[dict], dict[str, dict[int, float]]]:
    """Rows per thread count, and the median prefill seconds {"ptbr"|"runtime": {threads: s}}; ``exported``:
    bench_export has just written this run's fp32 safetensors to ``work/export``."""
    import torch

    os.environ.setdefault("RWKV_JIT_ON", "1")
    from rwkv.model import RWKV

    from ptbr.infer.generate import prefill
    from ptbr.infer.model_io import load_model
    from ptbr.infer.rnn import RNN

    formats = [("rwkv", work / "rwkv")] + ([] if exported else [("safetensors", work / "export")])
    for fmt, out in formats:  # this run's weights, whatever a reused --workdir holds
        sh(
            sys.executable,
            "-m",
            "ptbr.cli",
            "export",
            str(run_dir),
            str(out),
            "--format",
            fmt,
            "--dtype",
            "fp32",
            "--quiet",
            "--overwrite",
        )
    lm = load_model(work / "export", "cpu")
    runtime = RWKV(model=str(work / "rwkv" / "model"), strategy="cpu fp32")
    vocab = lm.model.config.vocab_size
    tokens = [
        int(t) for t in torch.randint(2, min(500, vocab), (prompt_len,), generator=torch.Generator().manual_seed(0))
    ]
    rnn = RNN(lm.model)

    def ours_prefill() -> None:
        prefill(lm, tokens)

    def theirs_prefill() -> None:
        runtime.forward(tokens, None)

    def ours_generate() -> None:
        state = lm.model.zero_state(1)
        token = torch.tensor([tokens[0]])
        for _ in range(gen_tokens):
            logits, state = rnn.step(token, state)
            token = logits.argmax(-1)

    def theirs_generate() -> None:
        state, token = None, tokens[0]
        for _ in range(gen_tokens):
            logits, state = runtime.forward([token], state)
            token = int(logits.argmax())

    rows: list[dict] = []
    prefill_s: dict[str, dict[int, float]] = {"ptbr": {}, "runtime": {}}
    fns = {
        "ours_prefill": ours_prefill,
        "theirs_prefill": theirs_prefill,
        "ours_gen": ours_generate,
        "theirs_gen": theirs_generate,
    }
    for n in threads:
        torch.set_num_threads(n)
        results: dict[str, list[float]] = {k: [] for k in fns}
        for fn in fns.values():  # warm-up (JIT, allocator)
            fn()
        for _ in range(repeats):  # interleaved: the machine may be shared
            for key, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                results[key].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in results.items()}
        prefill_s["ptbr"][n], prefill_s["runtime"][n] = med["ours_prefill"], med["theirs_prefill"]
        rate = {
            "ours_prefill": prompt_len / med["ours_prefill"],
            "theirs_prefill": prompt_len / med["theirs_prefill"],
            "ours_gen": gen_tokens / med["ours_gen"],
            "theirs_gen": gen_tokens / med["theirs_gen"],
        }
        rows += [
            {
                "case": f"prefill {prompt_len} tokens: rwkv runtime",
                "threads": n,
                "tokens_per_s": rate["theirs_prefill"],
                "ratio": 1.0,
            },
            {
                "case": f"prefill {prompt_len} tokens: ptbr",
                "threads": n,
                "tokens_per_s": rate["ours_prefill"],
                "ratio": rate["ours_prefill"] / rate["theirs_prefill"],
                "target": ">= 3",
            },
            {
                "case": f"generate {gen_tokens} tokens: rwkv runtime",
                "threads": n,
                "tokens_per_s": rate["theirs_gen"],
                "ratio": 1.0,
            },
            {
                "case": f"generate {gen_tokens} tokens: ptbr",
                "threads": n,
                "tokens_per_s": rate["ours_gen"],
                "ratio": rate["ours_gen"] / rate["theirs_gen"],
                "target": ">= 1.2",
            },
        ]
    return rows, prefill_s


def scaling_rows(prefill_s: dict[str, dict[int, float]], prompt_len: int, predict: int) -> list[dict]:
    """Amdahl fit of each one's prefill times, and the ptbr/runtime ratio it implies at ``predict`` threads."""
    fits = {name: amdahl(times) for name, times in prefill_s.items()}
    rows = [
        {
            "who": name,
            "parallel_s": par,
            "serial_s": ser,
            "serial_share_at_1": ser / (par + ser),
            f"tokens_per_s_at_{predict}": prompt_len / (par / predict + ser),
        }
        for name, (par, ser) in fits.items()
    ]
    (p_par, p_ser), (r_par, r_ser) = fits["ptbr"], fits["runtime"]
    ratio = (r_par / predict + r_ser) / (p_par / predict + p_ser)
    rows.append({"who": f"prefill ratio at {predict} threads (extrapolated)", "ratio": ratio, "target": ">= 3"})
    return rows


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
        "--predict-threads",
        type=int,
        default=16,
        help="extrapolate the prefill ratio to this many threads (Amdahl fit; needs two thread counts)",
    )
    ap.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="export this run's newest checkpoint instead of training a 2-rank ZeRO-2 one",
    )
    ap.add_argument("--inference-only", action="store_true", help="skip the export vs zero_to_fp32 comparison")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from ptbr.model import RWKV6Config, count_parameters

    params = 0 if args.inference_only else count_parameters(RWKV6Config.load(args.preset))
    with tempfile.TemporaryDirectory(prefix="ptbr-bench-export-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run_dir = run_to_measure(work, args.preset, args.run_dir)
        export_rows = []
        if not args.inference_only:
            export_rows = bench_export(run_dir, work, params)
            print(
                f"\nexport of a {args.preset} ZeRO-2 checkpoint of 2 ranks ({params:,} parameters, fp32 weights "
                f"{params * 4 / 2**20:,.0f} MiB)"
            )
            print_table(export_rows, ["case", "seconds", "peak_rss_MiB", "x_fp32_weights", "target"])
        threads = [int(n) for n in args.threads.split(",")]
        infer_rows, prefill_s = bench_inference(
            run_dir, work, threads, args.prompt_len, args.gen_tokens, args.repeats, exported=not args.inference_only
        )
        print("\ninference on the exported weights, CPU fp32, same thread count")
        print_table(infer_rows, ["case", "threads", "tokens_per_s", "ratio", "target"])
        fit_rows = []
        if len(set(threads)) > 1:
            fit_rows = scaling_rows(prefill_s, args.prompt_len, args.predict_threads)
            print("\nprefill time against threads, Amdahl fit t(p) = parallel/p + serial")
            print_table(
                fit_rows,
                [
                    "who",
                    "parallel_s",
                    "serial_s",
                    "serial_share_at_1",
                    f"tokens_per_s_at_{args.predict_threads}",
                    "ratio",
                    "target",
                ],
            )
    write_report(
        args.json,
        "export",
        export_rows + infer_rows,
        {"preset": args.preset, "parameters": params, "prefill_scaling": fit_rows},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
