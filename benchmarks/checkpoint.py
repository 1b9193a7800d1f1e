"""Checkpoint cost: save and load time at 1 and 2 ranks, and the extra cost of an elastic resume
(another world size: universal conversion + load) over a normal one.

    python benchmarks/checkpoint.py [--json out/checkpoint.json]

Times come from the lines `ptbr train` logs ("committed in", "loaded in", "universal conversion done in").
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import print_table, write_report  # noqa: E402
from benchmarks.train import build_dataset, model_overrides, sh, torchrun_train  # noqa: E402


def train(n_ranks: int, run_dir: Path, shards: Path, args: argparse.Namespace, steps: int) -> str:
    overrides = [
        *model_overrides(args),
        f"train.run_dir={run_dir}",
        f"data.source={shards}",
        f"data.cache_dir={run_dir.parent}/cache",
        f"data.seq_len={args.seq_len}",
        "batch.micro_batch_size=2",
        "batch.global_batch_size=4",
        f"train.max_steps={steps}",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.eval_samples=4",
        f"zero.stage={args.stage}",
        "precision=fp32",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return sh(*torchrun_train(n_ranks, overrides), env=env).stderr


def seconds(pattern: str, log: str) -> float:
    found = re.findall(pattern, log)
    if not found:
        raise SystemExit(f"no '{pattern}' in the log")
    return float(found[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--stage", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ptbr-bench-ckpt-") as tmp_s:
        tmp = Path(tmp_s)
        shards = build_dataset(tmp, args.seq_len, args.vocab)
        for world in (1, 2):
            run = tmp / f"w{world}"
            log = train(world, run, shards, args, steps=2)
            save_s = seconds(r"checkpoint step_\S+ committed in ([\d.]+) s", log)
            size = sum(f.stat().st_size for f in (run / "checkpoints").rglob("*") if f.is_file())
            log = train(world, run, shards, args, steps=3)  # native resume at the same size
            load_s = seconds(r"loaded in ([\d.]+) s", log)
            other = 3 - world
            elastic_run = tmp / f"w{world}to{other}"
            shutil.copytree(run / "checkpoints" / "step_00000002", elastic_run / "checkpoints" / "step_00000002")
            log = train(other, elastic_run, shards, args, steps=3)
            convert_s = seconds(r"universal conversion done in ([\d.]+) s", log)
            elastic_load_s = seconds(r"loaded in ([\d.]+) s", log)
            rows.append(
                {
                    "ranks": world,
                    "checkpoint_MB": size / 2**20,
                    "save_s": save_s,
                    "load_s": load_s,
                    "elastic_to": other,
                    "convert_s": convert_s,
                    "elastic_load_s": elastic_load_s,
                    "elastic_extra_s": convert_s + elastic_load_s - load_s,
                }
            )
            print(f"  measured world {world}", file=sys.stderr)
    print_table(
        rows,
        ["ranks", "checkpoint_MB", "save_s", "load_s", "elastic_to", "convert_s", "elastic_load_s", "elastic_extra_s"],
    )
    write_report(args.json, "checkpoint", rows, {"config": vars(args)})


if __name__ == "__main__":
    main()
