"""Run under torchrun (2 gloo ranks): one DeepSpeed ZeRO step's loss and full gradients for a long sample,
in one pass and in segments carrying the state. Rank 0 writes, per case, the loss of each way and the
largest relative RMS difference of any parameter's gradient, as JSON.

Each rank trains on its own sample, so the gradients compared are the ranks' average, as ZeRO reduces it.
"""

from __future__ import annotations

import json
import sys

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_grad

from ptbr.model import RWKV6, RWKV6Config
from ptbr.train.config import OptimConfig
from ptbr.train.optim import build_optimizer
from tests.helpers.model import randomize_

EOS = 0
BASE = dict(n_layer=2, n_embd=64, head_size=16, vocab_size=96, mix_lora=8, decay_lora=8)
# name: (ZeRO stage, bf16, reset_state_at_eos, gradient checkpointing)
CASES = {
    "zero1": (1, False, False, False),
    "zero2": (2, False, False, False),
    "zero3": (3, False, False, False),
    "zero3_reset": (3, False, True, False),
    "zero2_reset_ckpt": (2, False, True, True),
    "zero2_bf16": (2, True, False, False),
    "zero3_ckpt_one_pass": (3, False, True, True),
}
# ZeRO-3 recomputes blocks reentrantly, which cannot be combined with segments (the training config refuses
# it): there the block recompute is compared with no recompute, both in one pass.
L, SEGMENT = 80, 24  # 4 segments, the last one shorter


def grads_of(stage: int, bf16: bool, reset: bool, ckpt: bool, idx: torch.Tensor, segment_len: int | None):
    torch.manual_seed(0)
    model = randomize_(RWKV6(RWKV6Config(**BASE, reset_state_at_eos=reset, eos_id=EOS)))  # no all-zero layers
    model.set_wkv_backend("torch")
    model.gradient_checkpointing = ckpt
    model.checkpoint_reentrant = stage == 3  # as ptbr.train.loop sets it
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=0))
    config = {
        "train_micro_batch_size_per_gpu": idx.shape[0],
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    loss = engine(idx[:, :-1], targets=idx[:, 1:], segment_len=segment_len)
    engine.backward(loss)
    grads = {n: safe_get_full_grad(p).float().clone() for n, p in engine.module.named_parameters()}
    mean_loss = loss.detach().float().clone()
    dist.all_reduce(mean_loss)
    return float(mean_loss) / dist.get_world_size(), grads


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30))


def main(out: str, names: list[str]) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    gen = torch.Generator().manual_seed(100 + dist.get_rank())
    idx = torch.randint(1, BASE["vocab_size"], (2, L + 1), generator=gen)
    idx[idx % 11 == 0] = EOS  # document ends now and then
    results = {}
    for name in names:
        stage, bf16, reset, ckpt = CASES[name]
        if name.endswith("one_pass"):  # "seg" is then the one pass without block recompute
            loss_one, g_one = grads_of(stage, bf16, reset, ckpt, idx, None)
            loss_seg, g_seg = grads_of(stage, bf16, reset, False, idx, None)
        else:
            loss_one, g_one = grads_of(stage, bf16, reset, ckpt, idx, None)
            loss_seg, g_seg = grads_of(stage, bf16, reset, ckpt, idx, SEGMENT)
        assert set(g_one) == set(g_seg)
        results[name] = {
            "loss_one": loss_one,
            "loss_seg": loss_seg,
            "worst_grad": max(rel_rms(g_seg[n], g_one[n]) for n in g_one),
            "zero_grads": sorted(n for n in g_one if g_one[n].abs().max() == 0),
        }
        if bf16:  # the scale of bf16 rounding itself: the fp32 one-pass gradients against the bf16 ones
            _, g_fp32 = grads_of(stage, False, reset, ckpt, idx, None)
            results[name]["bf16_rounding"] = max(rel_rms(g_one[n], g_fp32[n]) for n in g_one)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","))
