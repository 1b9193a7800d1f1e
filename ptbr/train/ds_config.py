"""Derive the DeepSpeed JSON config from the typed training config (never written by hand)."""

from __future__ import annotations

import copy
from typing import Any

from ptbr.train.config import TrainConfig


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_ds_config(cfg: TrainConfig, accum: int, global_batch: int, cuda: bool) -> dict[str, Any]:
    """``accum`` and ``global_batch`` as ``cfg.batch.resolve(world_size)`` gives them."""
    zero: dict[str, Any] = {
        "stage": cfg.zero.stage,
        "contiguous_gradients": True,
        "overlap_comm": cuda,
        "reduce_bucket_size": 5e7,
        "allgather_bucket_size": 5e7,
    }
    if cfg.zero.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda}
    if cfg.zero.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cuda}
    if cfg.zero.stage == 3:
        zero.update({"stage3_gather_16bit_weights_on_model_save": False, "stage3_param_persistence_threshold": 1e5})
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.batch.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "train_batch_size": global_batch,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {
            "enabled": cfg.precision == "fp16",
            "initial_scale_power": 16,
            "loss_scale_window": 500,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        # torch AdamW is the client optimizer: no C++ build, also under offload.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,  # ptbr logs its own metrics
        "wall_clock_breakdown": False,
    }
    return deep_merge(ds, cfg.deepspeed)
