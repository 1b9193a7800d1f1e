"""``ptbr info``: presets with exact parameter counts, FLOPs per token, per-GPU memory, WKV backends."""

from __future__ import annotations

import argparse
import json

MEMORY_GPUS = (8, 16, 64)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--memory",
        action="store_true",
        help="add per-GPU memory: DeepSpeed's ZeRO-2/3 estimators at 8, 16, 64 GPUs; bf16 inference",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    import torch

    from ptbr.model import RWKV6Config, count_parameters
    from ptbr.model.config import PRESETS
    from ptbr.ops.wkv6 import resolve_backend, triton_available

    rows = []
    for name in PRESETS:
        cfg = RWKV6Config.load(name)
        params = count_parameters(cfg)
        row = {
            "preset": name,
            "n_layer": cfg.n_layer,
            "n_embd": cfg.n_embd,
            "n_head": cfg.n_head,
            "dim_ffn": cfg.dim_ffn,
            "parameters": params,
            "train_flops_per_token": cfg.flops_per_token(),
        }
        if args.memory:
            from ptbr.model.memory import inference_gib, model_state_gib

            row["inference_bf16_gib"] = inference_gib(cfg)
            for gpus in MEMORY_GPUS:
                per_stage = model_state_gib(cfg, gpus, max(1, gpus // 8))  # nodes of 8 GPUs
                for stage in ("2", "3"):
                    row[f"zero{stage}_{gpus}gpu_gib"] = per_stage[stage]
        rows.append(row)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backends = {"device": str(device), "auto": resolve_backend("auto", device), "triton_installed": triton_available()}
    if args.json:
        print(json.dumps({"presets": rows, "wkv": backends}, indent=2))
        return 0
    print(f"{'preset':>6} {'L':>3} {'C':>5} {'H':>3} {'F':>5} {'parameters':>15} {'GFLOP/token':>12}")
    for r in rows:
        print(
            f"{r['preset']:>6} {r['n_layer']:>3} {r['n_embd']:>5} {r['n_head']:>3} {r['dim_ffn']:>5} "
            f"{r['parameters']:>15,} {r['train_flops_per_token'] / 1e9:>12.2f}"
        )
    if args.memory:
        cols = [f"zero{s}_{g}gpu_gib" for s in (2, 3) for g in MEMORY_GPUS]
        print(
            "\nper-GPU memory, GiB (training: DeepSpeed's estimators, model states only, activations extra; "
            "inference: bf16 weights + state)"
        )
        print(f"{'preset':>6} " + " ".join(f"{c.replace('_gib', ''):>12}" for c in cols) + f" {'inference':>10}")
        for r in rows:
            cells = " ".join(f"{r[c]:>12.1f}" for c in cols)
            print(f"{r['preset']:>6} {cells} {r['inference_bf16_gib']:>10.2f}")
    print(
        f"\nWKV6 backend for {backends['device']}: {backends['auto']} "
        f"(triton installed: {backends['triton_installed']})"
    )
    return 0
