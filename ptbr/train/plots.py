"""Charts from a run directory's ``metrics.jsonl``: loss, learning rate, throughput, validation, and the
one-picture dashboard (:mod:`ptbr.train.dashboard`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ptbr.errors import PtbrError
from ptbr.train.dashboard import write_dashboard


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise PtbrError(f"no metrics.jsonl in {run_dir}; point ptbr plot at a training run directory")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill; the rest is still worth plotting
    return records


def _series(records: list[dict[str, Any]], kind: str, key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in records if r.get("kind") == kind and r.get(key) is not None]
    # after a resume the same steps may be logged twice: keep the latest value of each step
    latest = dict(pts)
    steps = sorted(latest)
    return steps, [latest[s] for s in steps]


CHARTS = [
    ("loss.png", "training loss", [("train", "loss")], "loss"),
    ("lr.png", "learning rate", [("train", "lr")], "lr"),
    ("throughput.png", "throughput", [("train", "tokens_per_s")], "tokens/s"),
    ("val_loss.png", "validation loss", [("eval", "val_loss")], "loss"),
]


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write one PNG per chart into ``out_dir`` (default: RUN_DIR/plots); return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    out = Path(out_dir) if out_dir else Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    # a mixture logs val_loss_<source> next to the pooled val_loss: one line each on the validation chart
    per_source = sorted(
        {
            k
            for r in records
            if r.get("kind") == "eval"
            for k, v in r.items()
            if k.startswith("val_loss_") and isinstance(v, int | float)
        }
    )
    charts = [(f, t, s + [("eval", k) for k in per_source] if f == "val_loss.png" else s, y) for f, t, s, y in CHARTS]
    for filename, title, series, ylabel in charts:
        fig, ax = plt.subplots(figsize=(7, 4))
        drew = False
        for kind, key in series:
            xs, ys = _series(records, kind, key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=key)
                drew = True
        if not drew:
            plt.close(fig)
            continue
        if len(series) > 1:
            ax.legend()
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / filename, dpi=100)
        plt.close(fig)
        written.append(out / filename)
    by_position = _plot_loss_by_position(records, out, plt)
    if by_position is not None:
        written.append(by_position)
    dashboard = write_dashboard(records, Path(run_dir), out / "dashboard.png")
    if dashboard is not None:
        written.append(dashboard)
    if not written:
        raise PtbrError(f"{run_dir}/metrics.jsonl holds no training or evaluation records yet")
    return written


def _plot_loss_by_position(records: list[dict[str, Any]], out: Path, plt: Any) -> Path | None:
    """Validation loss per token-position bucket, at the first and the latest evaluation: a model that uses
    its context has lower loss late in the sequence, more so as it trains."""
    evals = [r for r in records if r.get("kind") == "eval" and r.get("val_loss_by_position")]
    if not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in [evals[0], evals[-1]] if len(evals) > 1 else evals[-1:]:
        buckets = r["val_loss_by_position"]
        ax.plot(list(buckets), list(buckets.values()), marker="o", label=f"step {r['step']}")
    ax.set_title("validation loss by token position")
    ax.set_xlabel("positions")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / "val_loss_by_position.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
