"""CPU proxy of scaling: step time and checkpoint save time at 1, 2 and 4 gloo ranks (weak scaling: the
micro-batch per rank is fixed, so the global batch grows with the ranks, as it does across nodes).

What it shows and what it does not: the growth of the communication share (ZeRO-2 reduce-scatter and
all-gather over gloo) and of the per-rank checkpoint files with the rank count. On a 2-core machine
4 ranks share 2 cores, so their compute time doubles too; the table reports compute-normalised figures
(step time x ranks / cores) next to the raw ones. Numbers for GPUs are planned in docs/scaling.md.

    python benchmarks/scaling.py [--ranks 1,2,4] [--json out/scaling.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import print_table, write_report  # noqa: E402
from benchmarks.train import build_dataset, model_overrides, sh, torchrun_train  # noqa: E402


def train(ranks: int, run_dir: Path, shards: Path, args: argparse.Namespace) -> tuple[list[float], float, int]:
    """(step times after warm-up, seconds of the last checkpoint save, checkpoint bytes)."""
    overrides = [
        *model_overrides(args),
        f"train.run_dir={run_dir}",
        f"data.source={shards}",
        f"data.cache_dir={run_dir.parent}/cache",
        f"data.seq_len={args.seq_len}",
        f"batch.micro_batch_size={args.micro}",
        f"batch.global_batch_size={args.micro * ranks}",
        f"train.max_steps={args.steps}",
        "train.log_every=1",
        "train.eval_every=0",
        f"train.checkpoint_every={args.steps}",
        "train.eval_samples=4",
        "zero.stage=2",
        "precision=fp32",
        "data.num_workers=0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    log = sh(*torchrun_train(ranks, overrides), env=env)
    text = log.stdout + log.stderr
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step_time_s"] for r in records if r["kind"] == "train"][3:]
    saves = re.findall(r"checkpoint step_\S+ committed in ([\d.]+) s", text)
    size = sum(f.stat().st_size for f in (run_dir / "checkpoints").rglob("*") if f.is_file())
    return steps, float(saves[-1]) if saves else float("nan"), size


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--ranks", default="1,2,4")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="ptbr-bench-scaling-") as tmp_s:
        tmp = Path(tmp_s)
        shards = build_dataset(tmp, args.seq_len, args.vocab)
        for ranks in (int(r) for r in args.ranks.split(",")):
            steps, save_s, size = train(ranks, tmp / f"r{ranks}", shards, args)
            step = statistics.median(steps)
            rows.append(
                {
                    "ranks": ranks,
                    "tokens_per_step": args.micro * ranks * args.seq_len,
                    "step_s": step,
                    "step_s_per_core_share": step * min(1.0, cores / ranks),
                    "save_s": save_s,
                    "checkpoint_MB": size / 2**20,
                }
            )
            print(f"  measured {ranks} rank(s)", file=sys.stderr)
    base = rows[0]
    for r in rows:
        r["step_vs_1"] = r["step_s_per_core_share"] / base["step_s_per_core_share"]
        r["save_vs_1"] = r["save_s"] / base["save_s"]
    print(
        f"\nweak scaling on {cores} cores, ZeRO-2 fp32 over gloo, {args.layers}x{args.width} model, "
        f"micro-batch {args.micro} x {args.seq_len} tokens per rank"
    )
    print_table(
        rows,
        [
            "ranks",
            "tokens_per_step",
            "step_s",
            "step_s_per_core_share",
            "step_vs_1",
            "save_s",
            "save_vs_1",
            "checkpoint_MB",
        ],
    )
    write_report(args.json, "scaling", rows, {"config": vars(args), "cores": cores})


if __name__ == "__main__":
    main()
