"""Benchmark results as ptbr keeps them: one record per model (which weights: export, step, tokens; which
tasks: every metric with its standard error and sample count), written as JSON and markdown beside the model,
appended to the training run's ``bench.jsonl`` (so ``ptbr plot`` can draw a curve over checkpoints), and
printed as one comparison table for several models."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

# the metric that stands for a task in tables and curves, first present wins (normalised accuracy corrects
# for the length of the answers; perplexity-only tasks fall through to it)
PRIMARY = (
    "acc_norm",
    "acc",
    "f1",
    "mcc",
    "exact_match",
    "pearsonr",
    "bleu",
    "bits_per_byte",
    "perplexity",
    "word_perplexity",
)
LOWER_IS_BETTER = ("perplexity", "bits_per_byte", "word_perplexity", "byte_perplexity")


def _metric_items(entry: dict[str, Any]) -> dict[str, dict[str, float]]:
    """lm-eval's ``{"acc,none": v, "acc_stderr,none": s, "alias": ...}`` as ``{"acc": {"value": v, "stderr": s}}``."""
    out: dict[str, dict[str, float]] = {}
    for key, value in entry.items():
        name, _, filt = key.partition(",")
        if name in ("alias", "sample_len") or name.endswith("_stderr") or not isinstance(value, int | float):
            continue
        label = name if filt in ("", "none") else f"{name}[{filt}]"
        stderr = entry.get(f"{name}_stderr,{filt}" if filt else f"{name}_stderr")
        out[label] = {"value": float(value)}
        if isinstance(stderr, int | float) and math.isfinite(stderr):
            out[label]["stderr"] = float(stderr)
    return out


def primary_metric(metrics: dict[str, dict[str, float]]) -> str | None:
    for name in PRIMARY:
        if name in metrics:
            return name
    return next(iter(metrics), None)


def summarize(
    raw: dict[str, Any],
    model_info: dict[str, Any],
    *,
    limit: float | None = None,
    num_fewshot: int | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """The record ptbr keeps from lm-eval's results dict."""
    import lm_eval

    tasks = {}
    for task, entry in raw.get("results", {}).items():
        metrics = _metric_items(entry)
        if not metrics:
            continue
        n = raw.get("n-samples", {}).get(task, {})
        tasks[task] = {
            "metrics": metrics,
            "primary": primary_metric(metrics),
            "samples": n.get("effective", n.get("original")),
            "num_fewshot": raw.get("n-shot", {}).get(task, num_fewshot),
        }
    return {
        "kind": "bench",
        "time": time.time(),
        "export": model_info.get("export"),
        "step": model_info.get("step"),
        "tokens": model_info.get("tokens"),
        "dtype": model_info.get("dtype"),
        "device": model_info.get("device"),
        "limit": limit,
        "num_fewshot": num_fewshot,
        "seconds": seconds,
        "lm_eval_version": lm_eval.__version__,
        "tasks": tasks,
    }


def flat_scores(record: dict[str, Any]) -> dict[str, float]:
    """``{"task/metric": value}`` of every task's primary metric (what a curve over steps plots)."""
    return {
        f"{task}/{t['primary']}": t["metrics"][t["primary"]]["value"]
        for task, t in record["tasks"].items()
        if t.get("primary")
    }


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"


def markdown(record: dict[str, Any]) -> str:
    """The model's results as a markdown page (beside the model as bench.md)."""
    head = (
        f"# Benchmarks of {record.get('export')}\n\nstep {record.get('step')}, {record.get('tokens') or 0:,} "
        f"training tokens; limit {record.get('limit')}, few-shot {record.get('num_fewshot')}; "
        f"lm-eval {record.get('lm_eval_version')}\n\n| task | metric | value | ± stderr | samples |\n"
        "| --- | --- | --- | --- | --- |\n"
    )
    rows = []
    for task, t in sorted(record["tasks"].items()):
        for name, m in t["metrics"].items():
            star = " (primary)" if name == t.get("primary") else ""
            err = _fmt(m["stderr"]) if "stderr" in m else ""
            rows.append(f"| {task} | {name}{star} | {_fmt(m['value'])} | {err} | {t.get('samples') or ''} |")
    return head + "\n".join(rows) + "\n"


def comparison_table(records: list[dict[str, Any]], names: list[str]) -> str:
    """One row per task (its primary metric), one column per model."""
    tasks = sorted({task for r in records for task in r["tasks"]})
    header = ["task", "metric", *[f"{n} (step {r.get('step')})" for n, r in zip(names, records)]]
    rows = [header]
    for task in tasks:
        metric = next((r["tasks"][task]["primary"] for r in records if task in r["tasks"]), "")
        cells = []
        for r in records:
            m = r["tasks"].get(task, {}).get("metrics", {}).get(metric)
            cells.append("-" if m is None else _fmt(m["value"]) + (f" ± {_fmt(m['stderr'])}" if "stderr" in m else ""))
        arrow = " (lower is better)" if metric in LOWER_IS_BETTER else ""
        rows.append([task, metric + arrow, *cells])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def merged(previous: dict[str, Any] | None, record: dict[str, Any]) -> dict[str, Any]:
    """This run's record, keeping the tasks of an earlier run of the same weights that this one did not run."""
    if not previous or previous.get("step") != record.get("step"):
        return record
    return {**record, "tasks": {**previous.get("tasks", {}), **record["tasks"]}}


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
