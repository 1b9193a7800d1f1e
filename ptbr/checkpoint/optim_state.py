"""What the optimizer holds after a checkpoint load, checked against what it held at the save.

DeepSpeed loads optimizer state through several paths (native ZeRO 1/2/3 files, the universal
format, the bf16 optimizer of ZeRO-1) and some of them silently get it wrong. In DeepSpeed 0.19.8
the ZeRO-3 universal load (``load_hp_checkpoint_state_from_checkpoint_dir_stage3``)

* copies the hyperparameters of the checkpoint's first param group into every group, so the
  RWKV-LM groups (weight decay only on matrices, 2x LR on ``time_decay``) collapse into one, and
* stores one and the same ``step`` tensor object in the state of every sub-group; torch's Adam
  increments it in place once per group, so after the resume Adam's step counter advances
  ``n_groups`` times per optimizer step and its bias correction runs ahead.

Both made an elastic ZeRO-3 resume learn visibly differently from an uninterrupted run.
:func:`repair` undoes them; :func:`summarize` (at save) and :func:`verify` (after every load)
compare per-group hyperparameters, Adam step counters, and position-sensitive checksums of every
parameter's fp32 master weights and Adam moments, so that any other silent mismatch stops the
run instead of training on.

This module is the one place that reads DeepSpeed's optimizer internals (flat fp32 partitions,
fragment mappings); everything else goes through the functions below.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

# hyperparameters that must survive a save/load; ``lr`` is not among them: the schedule sets it
CHECKED_HPARAMS = ("name", "weight_decay", "lr_scale", "betas", "eps")
MOMENT_KEYS = ("exp_avg", "exp_avg_sq")
_GOLDEN = (math.sqrt(5) - 1) / 2
_REL_TOL = 1e-9  # float64 sums of identical float32 values in another order


@dataclass
class Fragment:
    """The part of one parameter that this rank's optimizer owns."""

    name: str
    group: int  # index into the torch optimizer's param_groups
    start: int  # offset of the fragment in the flattened parameter
    tensors: dict[str, torch.Tensor]  # "fp32", "exp_avg", "exp_avg_sq" -> 1-D views of equal length


@dataclass
class _Flat:
    """One flat fp32 partition the torch optimizer steps, and the params laid out in it."""

    tensor: torch.Tensor
    group: int
    params: list[torch.nn.Parameter]


def _inner(engine: Any) -> Any:
    """DeepSpeed's ZeRO / bf16 optimizer wrapper (holds the flat fp32 partitions)."""
    return engine.optimizer


def _is_stage3(opt: Any) -> bool:
    return hasattr(opt, "fp32_partitioned_groups_flat")


def _flats(opt: Any) -> list[_Flat]:
    if _is_stage3(opt):
        return [
            _Flat(t, int(opt.sub_group_to_group_id[i]), list(opt.fp16_groups[i]))
            for i, t in enumerate(opt.fp32_partitioned_groups_flat)
        ]
    if hasattr(opt, "single_partition_of_fp32_groups"):  # ZeRO 1/2
        return [_Flat(t, i, list(opt.bit16_groups[i])) for i, t in enumerate(opt.single_partition_of_fp32_groups)]
    if hasattr(opt, "fp32_groups_flat_partition"):  # BF16_Optimizer (bf16 + ZeRO-1)
        return [_Flat(t, i, list(opt.bf16_groups[i])) for i, t in enumerate(opt.fp32_groups_flat_partition)]
    raise TypeError(f"unsupported DeepSpeed optimizer {type(opt).__name__}")


def _state_views(state: dict[str, Any], start: int, numel: int) -> dict[str, torch.Tensor]:
    return {k: state[k].narrow(0, start, numel) for k in MOMENT_KEYS if torch.is_tensor(state.get(k))}


def local_fragments(engine: Any) -> Iterator[Fragment]:
    """Every fragment of every parameter that this rank's optimizer partition holds."""
    opt = _inner(engine)
    names = {id(p): n for n, p in engine.module.named_parameters()}
    for flat in _flats(opt):
        state = opt.optimizer.state.get(flat.tensor, {})
        if _is_stage3(opt):
            offset = 0
            for p in flat.params:
                part = int(p.partition_numel())
                group = opt._get_param_partition_group(p)
                begin = tdist.get_rank(group=group) * part
                valid = max(0, min(part, int(p.ds_numel) - begin))  # the tail of the last rank is padding
                if valid:
                    views = {"fp32": flat.tensor.narrow(0, offset, valid), **_state_views(state, offset, valid)}
                    yield Fragment(names[id(p)], flat.group, begin, views)
                offset += part
        else:
            for p in flat.params:
                mapping = getattr(p, "_hp_mapping", None)
                if mapping is None:  # no part of this parameter lives on this rank
                    continue
                lp, hp = mapping.lp_fragment_address, mapping.hp_fragment_address
                views = {"fp32": flat.tensor.narrow(0, hp.start, hp.numel), **_state_views(state, hp.start, hp.numel)}
                yield Fragment(names[id(p)], flat.group, lp.start, views)


def _torch_optimizer(engine: Any) -> torch.optim.Optimizer:
    return _inner(engine).optimizer


def group_hparams(engine: Any) -> list[dict[str, Any]]:
    """The checked hyperparameters of every optimizer param group (JSON-ready)."""
    out = []
    for g in _torch_optimizer(engine).param_groups:
        out.append({k: (list(g[k]) if isinstance(g[k], tuple) else g[k]) for k in CHECKED_HPARAMS if k in g})
    return out


def _steps(engine: Any) -> dict[int, list[torch.Tensor | float]]:
    """Adam's step counter of every flat partition, per param group."""
    opt = _inner(engine)
    out: dict[int, list[Any]] = {}
    for flat in _flats(opt):
        step = opt.optimizer.state.get(flat.tensor, {}).get("step")
        if step is not None:
            out.setdefault(flat.group, []).append(step)
    return out


def _as_float(x: Any) -> float:
    return float(x.item() if torch.is_tensor(x) else x)


def _checksums(engine: Any, device: torch.device) -> dict[str, dict[str, list[float]]]:
    """Collective. Per parameter and state key: [sum, position-weighted sum, sum of |x|] over the whole
    parameter, in float64, independent of how it is partitioned over ranks."""
    frags = list(local_fragments(engine))
    names = sorted({n for n, _ in engine.module.named_parameters()})
    keys = ("fp32", *MOMENT_KEYS)
    row = {n: i for i, n in enumerate(names)}
    acc = torch.zeros(len(names), len(keys), 3, dtype=torch.float64)
    present = torch.zeros(len(keys), dtype=torch.float64)
    for f in frags:
        idx = torch.arange(f.start, f.start + f.tensors["fp32"].numel(), dtype=torch.float64)
        weight = torch.frac(idx * _GOLDEN) + 0.5
        for j, key in enumerate(keys):
            t = f.tensors.get(key)
            if t is None:
                continue
            v = t.detach().to("cpu", torch.float64)
            acc[row[f.name], j] += torch.stack([v.sum(), (v * weight).sum(), v.abs().sum()])
            present[j] = 1
    if tdist.is_initialized():
        acc, present = acc.to(device), present.to(device)
        tdist.all_reduce(acc)
        tdist.all_reduce(present, op=tdist.ReduceOp.MAX)
        acc, present = acc.cpu(), present.cpu()
    return {n: {k: acc[row[n], j].tolist() for j, k in enumerate(keys) if present[j] > 0} for n in names}


def summarize(engine: Any, device: torch.device) -> dict[str, Any]:
    """Collective: what :func:`verify` checks after a load; stored in the checkpoint's state file."""
    steps = _steps(engine)
    groups = group_hparams(engine)
    for i, g in enumerate(groups):
        g["step"] = _as_float(steps[i][0]) if steps.get(i) else 0.0
    return {"groups": groups, "params": _checksums(engine, device)}


def repair(engine: Any, expected_groups: list[dict[str, Any]], log) -> None:
    """Undo what DeepSpeed's ZeRO-3 universal load gets wrong (see the module docstring): restore each
    group's hyperparameters and give every flat partition its own step counter."""
    opt = _torch_optimizer(engine)
    if len(expected_groups) != len(opt.param_groups):
        return  # verify() names the mismatch
    fixed = []
    for g, want in zip(opt.param_groups, expected_groups):
        for k in CHECKED_HPARAMS:
            if k in want and _hparam_differs(g.get(k), want[k]):
                g[k] = tuple(want[k]) if isinstance(g.get(k), tuple) else want[k]
                fixed.append(f"{want.get('name', '?')}.{k}")
    seen: set[int] = set()
    shared = 0
    inner = _inner(engine)
    for flat in _flats(inner):
        state = inner.optimizer.state.get(flat.tensor, {})
        step = state.get("step")
        if torch.is_tensor(step):
            if id(step) in seen:
                state["step"] = step.clone()
                shared += 1
            seen.add(id(state["step"]))
    if fixed or shared:
        log(
            "repaired the optimizer after DeepSpeed's universal load: "
            + ", ".join(
                [
                    *(["restored " + " ".join(fixed)] if fixed else []),
                    *([f"un-shared {shared} Adam step counter(s)"] if shared else []),
                ]
            )
        )


def _hparam_differs(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) or isinstance(b, list | tuple):
        return a is None or b is None or len(a) != len(b) or any(_hparam_differs(x, y) for x, y in zip(a, b))
    if isinstance(a, float | int) and isinstance(b, float | int):
        return not math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a != b


def verify(engine: Any, saved: dict[str, Any], device: torch.device) -> list[str]:
    """Collective: the differences between the live optimizer and ``saved`` (a :func:`summarize`)."""
    problems: list[str] = []
    groups = group_hparams(engine)
    want_groups = saved.get("groups", [])
    if len(groups) != len(want_groups):
        problems.append(f"{len(groups)} optimizer param groups, the checkpoint has {len(want_groups)}")
    steps = _steps(engine)
    ids = [id(s) for per in steps.values() for s in per if torch.is_tensor(s)]
    if len(ids) != len(set(ids)):
        problems.append("several param groups share one Adam step counter")
    for i, (have, want) in enumerate(zip(groups, want_groups)):
        label = want.get("name", f"group {i}")
        for k in CHECKED_HPARAMS:
            if k in want and _hparam_differs(have.get(k), want[k]):
                problems.append(f"{label}: {k} is {have.get(k)}, the checkpoint has {want[k]}")
        want_step = float(want.get("step", 0.0))
        live = sorted({_as_float(s) for s in steps.get(i, [])})
        if any(s != want_step for s in live) or (want_step and not live):
            problems.append(f"{label}: Adam step {live or 'missing'}, the checkpoint has {want_step:g}")
    live_sums = _checksums(engine, device)
    want_sums = saved.get("params", {})
    if live_sums.keys() != want_sums.keys():
        problems.append("the parameter names differ from the checkpoint's")
    bad = []
    for name in sorted(live_sums.keys() & want_sums.keys()):
        for key, want in want_sums[name].items():
            have = live_sums[name].get(key)
            if have is None:
                bad.append(f"{name}.{key} (missing)")
                continue
            tol = _REL_TOL * max(want[2], have[2]) + 1e-30
            if abs(have[0] - want[0]) > tol or abs(have[1] - want[1]) > tol or abs(have[2] - want[2]) > tol:
                bad.append(f"{name}.{key}")
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        problems.append("values differ for " + ", ".join(bad[:3]) + more)
    return problems


def loss_scale(engine: Any) -> float | None:
    """The fp16 dynamic loss scale the next optimizer step will use (None without a loss scaler)."""
    opt = getattr(engine, "optimizer", None)
    config = getattr(opt, "loss_scale_config", None)
    scale = config.cur_scale if config is not None else getattr(opt, "cur_scale", None)
    return None if scale is None else float(scale)
