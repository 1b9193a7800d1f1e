"""``dashboard.png``: the state of a training run in one picture (``ptbr plot RUN`` writes it with the charts).

Nine panels over the run's steps: training and validation loss on one axis (each source when mixed), learning
rate, tokens/s with MFU, data-wait share, memory, validation loss by token position (first and last
evaluation), benchmark scores (``train.bench_every`` records and ``ptbr bench`` results of the run's exports),
wall-clock time against step (where the run stood still), and a summary. Preemptions (red, dashed) and
resumes (green, dotted) are marked on every step axis.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PREEMPT, RESUME = dict(color="#d62728", ls="--", lw=1.2), dict(color="#2ca02c", ls=":", lw=1.5)


def _latest_by_step(records: list[dict[str, Any]], kind: str, key: str) -> tuple[list[float], list[float]]:
    points = {r["step"]: r[key] for r in records if r.get("kind") == kind and isinstance(r.get(key), int | float)}
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def bench_records(records: list[dict[str, Any]], run_dir: Path) -> dict[str, dict[int, float]]:
    """``{"task/metric": {step: score}}`` from training-time benchmarks and the run's ``bench.jsonl``."""
    curves: dict[str, dict[int, float]] = {}
    rows = [r for r in records if r.get("kind") == "bench"]
    path = run_dir / "bench.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append({**json.loads(line), "source": "export"})
            except json.JSONDecodeError:
                continue
    for r in rows:
        if r.get("step") is None:
            continue
        for name, value in (r.get("scores") or {}).items():
            label = f"{name} (export)" if r.get("source") == "export" else name
            curves.setdefault(label, {})[int(r["step"])] = float(value)
    return curves


def _events(ax: Any, records: list[dict[str, Any]], label: bool = False) -> None:
    for r in records:
        if r.get("kind") == "preempt":
            ax.axvline(r["step"], **PREEMPT, label="preempted" if label else None)
        elif r.get("kind") == "resume":
            ax.axvline(
                r["step"],
                **RESUME,
                label=f"resumed ({r.get('mode')}, {r.get('saved_world_size')}→{r.get('world_size')} ranks)"
                if label
                else None,
            )


def _style(ax: Any, title: str, ylabel: str, records: list[dict[str, Any]], legend: bool = False) -> None:
    _events(ax, records)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def write_dashboard(records: list[dict[str, Any]], run_dir: Path, path: Path) -> Path | None:
    """Draw the dashboard into ``path``; None when the run has logged no training step yet."""
    import matplotlib.pyplot as plt

    steps, loss = _latest_by_step(records, "train", "loss")
    if not steps:
        return None
    fig, axes = plt.subplots(3, 3, figsize=(18, 13))
    (a_loss, a_lr, a_tps), (a_wait, a_mem, a_pos), (a_bench, a_time, a_text) = axes

    a_loss.plot(steps, loss, label="train loss", color="#1f77b4", lw=1)
    val_keys = sorted(
        {
            k
            for r in records
            if r.get("kind") == "eval"
            for k in r
            if k.startswith("val_loss") and k != "val_loss_by_position" and isinstance(r[k], int | float)
        }
    )
    for key in val_keys:
        xs, ys = _latest_by_step(records, "eval", key)
        a_loss.plot(xs, ys, marker="o", ms=4, label=key.replace("val_loss", "validation").replace("_", " ", 1))
    _events(a_loss, records, label=True)
    _style(a_loss, "loss", "nats per token", [], legend=True)

    a_lr.plot(*_latest_by_step(records, "train", "lr"), color="#9467bd")
    _style(a_lr, "learning rate", "lr", records)

    xs, tps = _latest_by_step(records, "train", "tokens_per_s")
    a_tps.plot(xs, tps, color="#ff7f0e", label="tokens/s (all ranks)")
    mx, mfu = _latest_by_step(records, "train", "mfu")
    if mx:
        twin = a_tps.twinx()
        twin.plot(mx, [m * 100 for m in mfu], color="#8c564b", lw=1, label="MFU")
        twin.set_ylabel("MFU %")
    _style(a_tps, "throughput" + (" and MFU" if mx else " (MFU: GPU only)"), "tokens/s", records)

    xs, wait = _latest_by_step(records, "train", "data_wait_share")
    a_wait.plot(xs, [w * 100 for w in wait], color="#17becf")
    a_wait.set_ylim(bottom=0)
    _style(a_wait, "time waiting for data", "% of step time", records)

    a_mem.plot(*_latest_by_step(records, "train", "memory_gib"), color="#7f7f7f")
    _style(a_mem, "memory (peak per window: GPU allocated, or process RSS on CPU)", "GiB", records)

    evals = [r for r in records if r.get("kind") == "eval" and r.get("val_loss_by_position")]
    for r in [evals[0], evals[-1]] if len(evals) > 1 else evals:
        buckets = r["val_loss_by_position"]
        a_pos.plot(list(buckets), list(buckets.values()), marker="o", label=f"step {r['step']}")
    a_pos.set_title("validation loss by token position", fontsize=11)
    a_pos.set_xlabel("positions")
    a_pos.set_ylabel("loss")
    a_pos.grid(alpha=0.3)
    if evals:
        a_pos.legend(fontsize=8)
    else:
        a_pos.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=a_pos.transAxes)

    curves = bench_records(records, run_dir)
    for name, points in sorted(curves.items()):
        xs = sorted(points)
        a_bench.plot(xs, [points[x] for x in xs], marker="o", ms=4, label=name)
    if not curves:
        a_bench.text(
            0.5,
            0.5,
            "no benchmarks yet\n(train.bench_every, or ptbr bench on exports)",
            ha="center",
            va="center",
            transform=a_bench.transAxes,
        )
    _style(a_bench, "benchmarks", "score", records, legend=bool(curves))

    t0 = min(r["time"] for r in records if "time" in r)
    timed = [r for r in records if r.get("kind") == "train" and "time" in r]
    span = max((r["time"] - t0 for r in timed), default=0.0)
    unit, scale = ("hours", 3600.0) if span > 3 * 3600 else ("minutes", 60.0) if span > 180 else ("seconds", 1.0)
    a_time.plot([(r["time"] - t0) / scale for r in timed], [r["step"] for r in timed], color="#1f77b4", lw=1)
    for r in records:
        if r.get("kind") in ("preempt", "resume") and "time" in r:
            a_time.axvline((r["time"] - t0) / scale, **(PREEMPT if r["kind"] == "preempt" else RESUME))
    a_time.set_title("progress over wall-clock time (flat: the run was stopped)", fontsize=11)
    a_time.set_xlabel(f"{unit} since the first start")
    a_time.set_ylabel("step")
    a_time.grid(alpha=0.3)

    a_text.axis("off")
    a_text.text(
        0.0,
        1.0,
        _summary(records, steps, loss, curves),
        va="top",
        family="monospace",
        fontsize=10,
        transform=a_text.transAxes,
    )
    fig.suptitle(f"ptbr run {run_dir.resolve()}", fontsize=14)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _summary(
    records: list[dict[str, Any]], steps: list[float], loss: list[float], curves: dict[str, dict[int, float]]
) -> str:
    last = next(r for r in reversed(records) if r.get("kind") == "train")
    start = next((r for r in records if r.get("kind") == "start"), {})
    evals = [r for r in records if r.get("kind") == "eval"]
    resumes = [r for r in records if r.get("kind") == "resume"]
    preempts = [r for r in records if r.get("kind") == "preempt"]
    lines = [
        f"step          {int(steps[-1]):,}",
        f"tokens        {last.get('tokens', 0):,}",
        f"train loss    {loss[-1]:.4f}",
    ]
    if evals:
        lines.append(f"val loss      {evals[-1]['val_loss']:.4f} (step {evals[-1]['step']})")
    lines.append(
        f"tokens/s      {last.get('tokens_per_s', 0):,.0f}"
        + (f"  MFU {last['mfu'] * 100:.1f}%" if "mfu" in last else "")
    )
    if "eta_s" in last:
        lines.append(f"ETA           {last['eta_s'] / 3600:.1f} h")
    lines.append(f"parameters    {start.get('parameters', 0):,}")
    worlds = sorted({r.get("world_size") for r in records if r.get("kind") in ("start", "resume")} - {None})
    lines.append(f"world sizes   {', '.join(map(str, worlds)) or '?'}")
    lines.append(f"preemptions   {len(preempts)} " + " ".join(f"@{r['step']}" for r in preempts))
    lines.append(f"resumes       {len(resumes)} " + " ".join(f"@{r['step']}({r.get('mode')})" for r in resumes))
    for name, points in sorted(curves.items())[:6]:
        step = max(points)
        lines.append(f"{name[:34]:34s} {points[step]:.3f} @{step}")
    return "\n".join(lines)
