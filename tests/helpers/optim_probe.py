"""Run under torchrun (2 gloo ranks): exercise ptbr.checkpoint.optim_state on real DeepSpeed engines.

For each optimizer kind (ZeRO 1, 2, 3 in fp32; bf16 ZeRO-1, which DeepSpeed routes to its
BF16_Optimizer), train a tiny RWKV-6 for a few steps, summarize, then damage the optimizer the
ways a faulty load can (one moment element, a group's weight decay, a shared step counter) and
record what ``verify`` reports and what ``repair`` fixes. Rank 0 writes the findings as JSON.
"""

from __future__ import annotations

import json
import os
import sys

import deepspeed
import torch
import torch.distributed as dist

from ptbr.checkpoint import optim_state
from ptbr.model import RWKV6, RWKV6Config
from ptbr.train.config import OptimConfig
from ptbr.train.optim import build_optimizer

CASES = {"zero1": (1, False), "zero2": (2, False), "zero3": (3, False), "zero1_bf16": (1, True)}


def engine_for(stage: int, bf16: bool):
    torch.manual_seed(0)
    model = RWKV6(RWKV6Config(n_layer=2, n_embd=64, head_size=16, vocab_size=96, mix_lora=8, decay_lora=8))
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=0))
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    gen = torch.Generator().manual_seed(dist.get_rank())
    for _ in range(3):
        x = torch.randint(0, 96, (2, 16), generator=gen)
        logits = engine(x)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x.flatten())
        engine.backward(loss)
        engine.step()
    return engine


def probe(stage: int, bf16: bool) -> dict:
    engine = engine_for(stage, bf16)
    device = torch.device("cpu")
    saved = optim_state.summarize(engine, device)
    out = {
        "groups": [g["name"] for g in saved["groups"]],
        "steps": [g["step"] for g in saved["groups"]],
        "clean": optim_state.verify(engine, saved, device),
    }

    # one element of one exp_avg, on the last rank only (the others must still hear of it)
    frag = [f for f in optim_state.local_fragments(engine) if "exp_avg" in f.tensors][-1]
    original = frag.tensors["exp_avg"][0].item()
    if dist.get_rank() == dist.get_world_size() - 1:
        frag.tensors["exp_avg"][0] += 1e-3
        out["damaged"] = frag.name
    out["moment"] = optim_state.verify(engine, saved, device)
    frag.tensors["exp_avg"][0] = original

    torch_opt = engine.optimizer.optimizer
    decay = next(g for g in torch_opt.param_groups if g["name"] == "decay")
    decay["weight_decay"] = 0.0
    flats = [f.tensor for f in optim_state._flats(engine.optimizer)]
    shared = torch_opt.state[flats[0]]["step"]
    for f in flats:
        torch_opt.state[f]["step"] = shared
    out["hparams"] = optim_state.verify(engine, saved, device)
    messages: list[str] = []
    optim_state.repair(engine, saved["groups"], messages.append)
    out["repair_log"] = messages
    out["repaired"] = optim_state.verify(engine, saved, device)
    return out


def main() -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    results = {}
    for name in sys.argv[2].split(","):
        results[name] = probe(*CASES[name])
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, results[name].get("damaged"))
        results[name]["damaged"] = next(d for d in gathered if d)
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
