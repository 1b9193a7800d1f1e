"""Training throughput: `ptbr train` (DeepSpeed engine, streaming data, metrics) against a minimal
plain-PyTorch loop on the same model, optimiser and batch with data tensors in memory; and the step
time of `ptbr train` at 1 and 2 ranks on this machine.

    python benchmarks/train.py                       # table + JSON on stdout
    python benchmarks/train.py --json out/train.json

Target: ptbr's step time within 1.10x of the plain loop at world size 1.

Both loops run on the same device (``--device``, default cpu: ptbr's ranks then see no GPU). The 2-rank
rows need one device per rank: on CUDA they are left out when fewer than 2 GPUs are visible (NCCL refuses
two ranks on one GPU).
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


def sh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(args)}\n{proc.stderr[-3000:]}")
    return proc


def torchrun_train(n_ranks: int, overrides: list[str]) -> list[str]:
    """The command line of ``ptbr.train`` under torchrun, ``n_ranks`` local processes, on the tiny config."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(n_ranks),
        "-m",
        "ptbr.train",
        "--config",
        "configs/train/tiny_cpu.yaml",
        *overrides,
    ]


def build_dataset(tmp: Path, seq_len: int, vocab: int, docs: int = 3000) -> Path:
    """Tokenizer and shards from the embedded Portuguese-like text generator (local directory)."""
    from ptbr.devtools.sample_text import portuguese_documents

    corpus = tmp / "corpus"
    corpus.mkdir()
    with open(corpus / "docs.jsonl", "w", encoding="utf-8") as f:
        for text in portuguese_documents(docs, seed=1):
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    py = [sys.executable, "-m", "ptbr.cli"]
    sh(*py, "tokenizer", "train", "--input", str(corpus), "--output", str(tmp / "tok.json"), "--vocab-size", str(vocab))
    sh(
        *py,
        "shards",
        "build",
        "--input",
        str(corpus),
        "--tokenizer",
        str(tmp / "tok.json"),
        "--output",
        str(tmp / "shards"),
        "--seq-len",
        str(seq_len),
        "--val-fraction",
        "0.02",
    )
    return tmp / "shards"


def model_overrides(args: argparse.Namespace) -> list[str]:
    return [
        f"model.n_layer={args.layers}",
        f"model.n_embd={args.width}",
        "model.head_size=64",
        f"model.vocab_size={args.vocab}",
        "model.mix_lora=32",
        "model.decay_lora=64",
    ]


def ptbr_step_times(
    n_ranks: int, shards: Path, run_dir: Path, args: argparse.Namespace, micro: int, threads: int
) -> list[float]:
    """Step times of ``ptbr train`` on ``args.device`` (the GPUs hidden from it for cpu)."""
    overrides = [
        *model_overrides(args),
        f"train.run_dir={run_dir}",
        f"data.source={shards}",
        f"data.cache_dir={run_dir}/cache",
        f"data.seq_len={args.seq_len}",
        f"batch.micro_batch_size={micro}",
        f"batch.global_batch_size={micro * n_ranks}",
        f"train.max_steps={args.steps}",
        "train.log_every=5",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.eval_samples=8",
        "zero.stage=2",
        "precision=fp32",
        "data.num_workers=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    if n_ranks == 1:
        cmd = [sys.executable, "-m", "ptbr.cli", "train", "--config", "configs/train/tiny_cpu.yaml", *overrides]
    else:
        cmd = torchrun_train(n_ranks, overrides)
    sh(*cmd, env=env)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step_time_s"] for r in records if r["kind"] == "train"][1:]  # first window: warm-up


def plain_step_times(shards: Path, args: argparse.Namespace, micro: int, threads: int) -> list[float]:
    """The same model, optimiser groups, schedule, loss and clipping, without DeepSpeed or streaming."""
    import numpy as np
    import torch

    from ptbr.model import RWKV6
    from ptbr.model.loss import lm_loss
    from ptbr.train.config import TrainConfig
    from ptbr.train.optim import WarmupCosine, build_optimizer

    torch.set_num_threads(threads)
    cfg = TrainConfig.load(
        "configs/train/tiny_cpu.yaml", [*model_overrides(args), "data.source=x", f"data.seq_len={args.seq_len}"]
    )
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = RWKV6(cfg.model).to(device)
    opt = build_optimizer(model, cfg.optim, device)
    sched = WarmupCosine(opt, cfg.optim, args.steps)
    rng = np.random.default_rng(0)
    data = torch.from_numpy(rng.integers(0, args.vocab, (args.steps * micro, args.seq_len + 1))).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for step in range(args.steps):
        t0 = time.perf_counter()
        batch = data[step * micro : (step + 1) * micro]
        loss = lm_loss(model(batch[:, :-1]), batch[:, 1:], l2wrap=cfg.optim.l2wrap)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        sync()
        times.append(time.perf_counter() - t0)
    return times[5:]


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both loops run")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    two_ranks = args.device == "cpu" or torch.cuda.device_count() >= 2

    with tempfile.TemporaryDirectory(prefix="ptbr-bench-train-") as tmp_s:
        tmp = Path(tmp_s)
        print("building the dataset ...", file=sys.stderr)
        shards = build_dataset(tmp, args.seq_len, args.vocab)
        tokens = args.micro * args.seq_len
        print("plain PyTorch loop ...", file=sys.stderr)
        plain = statistics.median(plain_step_times(shards, args, args.micro, args.threads))
        print("ptbr train, 1 rank ...", file=sys.stderr)
        one = statistics.median(ptbr_step_times(1, shards, tmp / "r1", args, args.micro, args.threads))
        if two_ranks:
            print("ptbr train, 2 ranks (same per-rank batch) ...", file=sys.stderr)
            two_weak = statistics.median(ptbr_step_times(2, shards, tmp / "r2w", args, args.micro, 1))
            print("ptbr train, 2 ranks (same global batch) ...", file=sys.stderr)
            two_strong = statistics.median(ptbr_step_times(2, shards, tmp / "r2s", args, args.micro // 2, 1))
    rows = [
        {
            "run": "plain PyTorch loop",
            "ranks": 1,
            "global_batch": args.micro,
            "step_s": plain,
            "tokens_per_s": tokens / plain,
            "vs_plain": 1.0,
        },
        {
            "run": "ptbr train",
            "ranks": 1,
            "global_batch": args.micro,
            "step_s": one,
            "tokens_per_s": tokens / one,
            "vs_plain": one / plain,
        },
    ]
    rows += (
        []
        if not two_ranks
        else [
            {
                "run": "ptbr train (weak scaling)",
                "ranks": 2,
                "global_batch": 2 * args.micro,
                "step_s": two_weak,
                "tokens_per_s": 2 * tokens / two_weak,
                "vs_plain": two_weak / plain,
            },
            {
                "run": "ptbr train (strong scaling)",
                "ranks": 2,
                "global_batch": args.micro,
                "step_s": two_strong,
                "tokens_per_s": tokens / two_strong,
                "vs_plain": two_strong / plain,
            },
        ]
    )
    print_table(rows, ["run", "ranks", "global_batch", "step_s", "tokens_per_s", "vs_plain"])
    verdict = {"target_step_time_ratio": 1.10, "ptbr_vs_plain": one / plain, "met": one / plain <= 1.10}
    print(
        f"\nptbr / plain step time at 1 rank: {one / plain:.3f} (target <= 1.10: "
        f"{'met' if verdict['met'] else 'NOT met'})"
    )
    write_report(args.json, "train", rows, {"config": vars(args), "verdict": verdict})


if __name__ == "__main__":
    main()
