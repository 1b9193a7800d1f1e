"""``ptbr train --dry-run``: everything a job would decide before any rank loads a model, in seconds.

Validates the config, resolves the batch for the planned world size, reads the dataset manifest and
checks it against the config, checks the canonical node count against the node count, reports the
resume decision (without changing anything on disk), the per-GPU memory of the model states from
DeepSpeed's own estimators, the checkpoint size against the free space of the run directory, and the
time to reach ``train.max_steps`` at a given throughput. Any problem is one line and a non-zero exit
(the Slurm scripts run this before ``srun``); otherwise a short table and exit 0.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ptbr.checkpoint import fingerprint, layout
from ptbr.checkpoint.checkpointer import decide
from ptbr.data.faults import data_error
from ptbr.data.mixture import read_mixture
from ptbr.data.stream import check_canonical_nodes, default_num_canonical_nodes
from ptbr.errors import ConfigError, DataError
from ptbr.model import count_parameters
from ptbr.model.memory import model_state_gib
from ptbr.progress import fmt_eta, human, human_bytes
from ptbr.train.config import TrainConfig
from ptbr.train.node_counts import NodePlan


def planned_world(world_size: int | None, nodes: int | None) -> tuple[int, int]:
    """The world size and node count to plan for: given, else the Slurm allocation's, else this process."""
    env = os.environ
    world = world_size or int(env.get("SLURM_NTASKS") or env.get("WORLD_SIZE") or 1)
    n = nodes or int(env.get("SLURM_NNODES") or env.get("NNODES") or 1)
    if world < 1 or n < 1 or world % n:
        raise ConfigError(f"--world-size {world} must be a positive multiple of --nodes {n}")
    return world, n


def measured_tokens_per_s(run_dir: Path) -> float | None:
    """The run's latest measured global throughput (metrics.jsonl), if it has one."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    rates = [
        r["tokens_per_s"]
        for line in path.read_text().splitlines()
        if line.strip()
        for r in [json.loads(line)]
        if r.get("kind") == "train" and r.get("tokens_per_s")
    ]
    return float(rates[-1]) if rates else None


def plan(
    cfg: TrainConfig,
    *,
    world_size: int | None = None,
    nodes: int | None = None,
    tokens_per_s: float | None = None,
    resume: str = "auto",
    allow_fresh_start: bool = False,
    allow_config_change: bool = False,
) -> list[tuple[str, str]]:
    """The rows of the dry-run table; raises a one-line PtbrError on any problem."""
    from ptbr.train.loop import check_dataset

    world, n_nodes = planned_world(world_size, nodes)
    try:
        manifest = read_mixture(cfg.data.mixture())
    except DataError:
        raise
    except Exception as exc:  # e.g. an endpoint that does not answer
        raise (data_error(exc, cfg.data.source, 0.0) or exc) from None
    check_dataset(cfg, manifest)
    samples = int(manifest["splits"][cfg.data.train_split]["samples"])
    run_dir = Path(cfg.train.run_dir)
    root = run_dir / "checkpoints"
    # the global batch the run keeps (checked against the planned GPUs below, after the node counts)
    planned_batch = cfg.batch.global_batch_size or (cfg.batch.grad_accum or 1) * cfg.batch.micro_batch_size * world
    decision = decide(
        root,
        resume,
        fingerprint=fingerprint(cfg.model.shape(), cfg.data.seq_len, manifest),
        world_size=world,
        global_batch_size=planned_batch,
        allow_fresh_start=allow_fresh_start,
        allow_config_change=allow_config_change,
        log=lambda _m: None,
        dry_run=True,
    )
    if decision is None:
        ncn = cfg.data.num_canonical_nodes or default_num_canonical_nodes(cfg.data.shuffle_algo, n_nodes)
        step, what = 0, "fresh start"
    else:
        data = decision.record["data"]
        ncn = int(
            data.get("num_canonical_nodes")
            or default_num_canonical_nodes(
                cfg.data.shuffle_algo, int(data.get("initial_physical_nodes") or decision.record["world_size"])
            )
        )
        step = int(decision.record["step"])
        what = f"resume {decision.tag} at step {step} " + (
            f"(elastic: saved by {decision.record['world_size']} ranks)" if decision.elastic else "(native)"
        )
    nodes_plan = NodePlan(ncn, cfg.batch.global_batch_size, cfg.batch.micro_batch_size, world // n_nodes)
    nodes_plan.check(n_nodes)
    check_canonical_nodes(ncn, n_nodes, samples)
    accum, global_batch = cfg.batch.resolve(world)
    tokens_per_step = global_batch * cfg.data.seq_len

    params = count_parameters(cfg.model)
    mem = model_state_gib(cfg.model, world, n_nodes)
    weight_bytes = 4 if cfg.precision == "fp32" else 2
    ckpt_bytes = params * (weight_bytes + 12)
    newest = layout.newest_usable(root, lambda _m: None)
    if newest is not None and (marker := newest.marker()):
        ckpt_bytes = int(sum(marker["files"].values()))
    existing = next((p for p in [run_dir, *run_dir.resolve().parents] if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    need = layout.disk_still_needed(root, ckpt_bytes, cfg.train.keep_checkpoints)
    rate = tokens_per_s or measured_tokens_per_s(run_dir)
    remaining = max(0, cfg.train.max_steps - step)
    rows = [
        (
            "config",
            f"{cfg.model.n_layer} layers x {cfg.model.n_embd}, {human(params)} parameters, ZeRO "
            f"{cfg.zero.stage}, {cfg.precision}",
        ),
        ("world", f"{world} ranks on {n_nodes} node(s) ({world // n_nodes} per node)"),
        (
            "batch",
            f"micro {cfg.batch.micro_batch_size} x accum {accum} x {world} = {global_batch} sequences of "
            f"{cfg.data.seq_len} = {tokens_per_step:,} tokens per step",
        ),
        (
            "data",
            f"{_describe_sources(manifest, cfg.data.source)}: {samples:,} training samples, "
            f"dataset {manifest['dataset_hash'][:16]}; "
            f"{remaining * global_batch / samples:.2f} epochs to go",
        ),
        ("nodes", f"{ncn} canonical nodes; {nodes_plan.describe()}"),
        ("context", _describe_context(cfg)),
        ("resume", what),
        (
            "memory/GPU",
            f"model states {mem[str(cfg.zero.stage)]:.2f} GiB at ZeRO {cfg.zero.stage} (ZeRO-1 "
            f"{mem['1']:.2f}, 2 {mem['2']:.2f}, 3 {mem['3']:.2f}; DeepSpeed's estimators, activations "
            "not included)",
        ),
        (
            "checkpoint",
            f"{human_bytes(ckpt_bytes)} each; {cfg.train.keep_checkpoints} kept + 1 being written need "
            f"{human_bytes(need)} more; {human_bytes(free)} free at {existing}",
        ),
        (
            "time",
            f"{remaining:,} steps to go = {fmt_eta(remaining * tokens_per_step / rate)} at {rate:,.0f} tok/s"
            if rate
            else f"{remaining:,} steps to go (pass --tokens-per-s for a time)",
        ),
    ]
    if free < need:
        rows.append(
            (
                "WARNING",
                f"{existing} has {human_bytes(free)} free, below the {human_bytes(need)} its "
                f"checkpoints will take ({cfg.train.keep_checkpoints} kept + 1 being written): a save "
                "will fail (exit 74)",
            )
        )
    return rows


def render(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:>{width}}  {v}" for k, v in rows)


def run(cfg: TrainConfig, **kwargs: Any) -> int:
    print(render(plan(cfg, **kwargs)))
    return 0


def _describe_sources(manifest: dict[str, Any], source: str) -> str:
    if "mixture" not in manifest:
        return source
    return " + ".join(f"{p['source']} ({p['weight']:.0%})" for p in manifest["mixture"])


def _describe_context(cfg: TrainConfig) -> str:
    """How a sample is run: one pass or segments carrying the state, and where documents start over."""
    seg, L = cfg.train.segment_len, cfg.data.seq_len
    docs = (
        "every document from a zero state (reset_state_at_eos)"
        if cfg.model.reset_state_at_eos
        else "documents share the state (RWKV-LM)"
    )
    if not seg or seg >= L:
        return f"one pass over {L} tokens; {docs}"
    n = -(-L // seg)
    return f"{n} segments of {seg} tokens carrying the state, {cfg.train.bptt} BPTT, activations of one segment; {docs}"
