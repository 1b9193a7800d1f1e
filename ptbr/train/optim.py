"""RWKV-LM optimiser groups and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch

from ptbr.train.config import OptimConfig


def _ndim(p: torch.Tensor) -> int:
    shape = getattr(p, "ds_shape", None) or p.shape  # ZeRO-3 partitioned params keep ds_shape
    return sum(1 for s in shape if s != 1)


def param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """RWKV-LM (layerwise_lr=1): LoRA w1/w2, time_maa, time_faaaa and norms at 1x without decay;
    time_decay at ``time_decay_lr_scale``x without decay; other >= 2-D weights with weight decay."""
    plain, decay_rate, decayed = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "_w1" in name or "_w2" in name or "time_maa" in name or "time_faaaa" in name:
            plain.append(p)
        elif "time_decay" in name:
            decay_rate.append(p)
        elif _ndim(p) >= 2 and cfg.weight_decay > 0:
            decayed.append(p)
        else:
            plain.append(p)
    groups = [
        {"params": plain, "weight_decay": 0.0, "lr_scale": 1.0, "name": "no_decay"},
        {"params": decay_rate, "weight_decay": 0.0, "lr_scale": cfg.time_decay_lr_scale, "name": "time_decay"},
        {"params": decayed, "weight_decay": cfg.weight_decay, "lr_scale": 1.0, "name": "decay"},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: torch.nn.Module, cfg: OptimConfig, device: torch.device | str = "cpu", offload: bool = False
) -> torch.optim.Optimizer:
    """torch AdamW (decoupled weight decay, as RWKV-LM's FusedAdam with adam_w_mode), fused into one kernel
    per step when it will step on CUDA tensors.

    ``device`` is where training runs, not where the model is now: the optimizer is built before DeepSpeed
    moves the model (and its fp32 master partitions) to the GPU, and torch checks the fused kernel's device
    only when it steps. With ``offload`` the master weights stay on the CPU: no fused CUDA kernel."""
    fused = torch.device(device).type == "cuda" and not offload
    return torch.optim.AdamW(
        param_groups(model, cfg), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **({"fused": True} if fused else {})
    )


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Linear warmup to ``lr`` then cosine to ``min_lr`` at ``decay_steps`` (default: the run length)."""
    decay_steps = cfg.decay_steps or total_steps
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= decay_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


class WarmupCosine:
    """Sets every group's lr to ``lr_at(step) * group['lr_scale']``. DeepSpeed calls ``step()``
    after each applied optimizer step (not after skipped ones) and checkpoints ``state_dict()``."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
        self.optimizer, self.cfg, self.total_steps = optimizer, cfg, total_steps
        self.last_step = 0
        self._apply()

    def _apply(self) -> None:
        base = lr_at(self.last_step, self.cfg, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = base * group.get("lr_scale", 1.0)

    def step(self, *args: Any, **kwargs: Any) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        self._apply()
