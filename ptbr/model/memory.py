"""Per-GPU memory of a model: DeepSpeed's own estimators for training, weight bytes for inference.

The estimators count model states only (16-bit weights and gradients, fp32 master weights and both
Adam moments, partitioned as each ZeRO stage partitions them, no offload); activations come on top
and depend on micro-batch, sequence length and gradient checkpointing (``benchmarks/gpu_check.sh``
measures them). Inference in bf16 needs the weights plus a recurrent state of a few MB, whatever the
context length. Used by ``ptbr info --memory`` and ``ptbr train --dry-run``.
"""

from __future__ import annotations

import contextlib
import sys

from ptbr.model.config import RWKV6Config
from ptbr.model.rwkv6 import count_parameters


def largest_layer_params(cfg: RWKV6Config) -> int:
    """The biggest single parameter (ZeRO-3 gathers one at a time): the embedding / head matrix."""
    return max(cfg.vocab_size * cfg.n_embd, cfg.n_embd * (cfg.dim_ffn or 0))


def model_state_gib(cfg: RWKV6Config, gpus: int, nodes: int) -> dict[str, float]:
    """GiB per GPU by ZeRO stage ("1", "2", "3"); stage 1 is ZeRO-2's formula with unpartitioned 16-bit
    gradients (DeepSpeed has no stage-1 estimator)."""
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed's logger binds stdout on import: keep it clean
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    params = count_parameters(cfg)
    per_node = gpus // nodes
    _, z2 = estimate_zero2_model_states_mem_needs(params, per_node, nodes, cpu_offload=False)
    _, z3, _ = estimate_zero3_model_states_mem_needs(
        params, largest_layer_params(cfg), per_node, nodes, cpu_offload=False, cpu_offload_params=False
    )
    z1 = 4 * params + 16 * params / gpus
    return {"1": z1 / 2**30, "2": z2 / 2**30, "3": z3 / 2**30}


def inference_gib(cfg: RWKV6Config, batch: int = 1) -> float:
    """bf16 weights + the RNN state (fp32 wkv [H, N, N] and two token shifts per layer) + fp32 logits."""
    state = cfg.n_layer * (cfg.n_head * cfg.head_size * cfg.head_size * 4 + 2 * cfg.n_embd * 2)
    return (count_parameters(cfg) * 2 + batch * (state + cfg.vocab_size * 4)) / 2**30
