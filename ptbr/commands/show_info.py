"""``ptbr info``: presets with exact parameter counts, FLOPs per token, and WKV backends."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from ptbr.config import PRESETS, RWKV6Config
    from ptbr.ops.wkv6 import resolve_backend, triton_available

    rows = []
    for name in PRESETS:
        cfg = RWKV6Config.from_preset(name)
        rows.append({"preset": name, "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_head": cfg.n_head,
                     "dim_ffn": cfg.dim_ffn, "parameters": cfg.num_parameters(),
                     "train_flops_per_token": cfg.flops_per_token()})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backends = {"device": str(device), "auto": resolve_backend("auto", device),
                "triton_installed": triton_available()}
    if args.json:
        print(json.dumps({"presets": rows, "wkv": backends}, indent=2))
        return 0
    print(f"{'preset':>6} {'L':>3} {'C':>5} {'H':>3} {'F':>5} {'parameters':>15} {'GFLOP/token':>12}")
    for r in rows:
        print(f"{r['preset']:>6} {r['n_layer']:>3} {r['n_embd']:>5} {r['n_head']:>3} {r['dim_ffn']:>5} "
              f"{r['parameters']:>15,} {r['train_flops_per_token'] / 1e9:>12.2f}")
    print(f"\nWKV6 backend for {backends['device']}: {backends['auto']} "
          f"(triton installed: {backends['triton_installed']})")
    return 0
