"""Weights & Biases tracking (``train.wandb``): rank 0 mirrors every metrics.jsonl record into one W&B run.

The run's id is kept in ``RUN_DIR/wandb_run_id``, written before the first ``wandb.init``: a requeued or
elastically resumed job (any world size) calls ``wandb.init(id=..., resume="allow")`` with it and continues
the same run, so a preempted training run is one continuous curve. Steps are logged as the ``step`` metric,
which every other metric uses as its x axis (``define_metric``), not as W&B's own step counter, which must only
grow: a step repeated after a crash (resumed from an older checkpoint) is then a second point, not an error.

What goes to W&B is what metrics.jsonl holds: loss, lr, grad norm, tokens/s, MFU, data wait, memory,
validation loss (per source and by position), benchmark scores, and resume / preemption events (``event/*``
= 1 at their step), plus the resolved training config. Credentials never enter the config; keys that look
like secrets are dropped anyway, and W&B's code and git capture are off.
"""

from __future__ import annotations

import re
import secrets
import string
from pathlib import Path
from typing import Any

from ptbr.errors import ConfigError
from ptbr.fsutil import atomic_write_text

RUN_ID_FILE = "wandb_run_id"
SECRET = re.compile(r"(secret|password|passwd|token|api_?key|access_?key|credential)", re.IGNORECASE)
EVENTS = ("start", "resume", "preempt", "stop")


def redact(value: Any) -> Any:
    """The config without any key that looks like a secret (credentials never belong in it)."""
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items() if not SECRET.search(str(k))}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def flatten(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record as W&B scalars: ``<kind>/<key>`` (dicts one level deeper), ``event/<kind>`` = 1
    for events, and ``step``."""
    kind = record.get("kind", "train")
    out: dict[str, float] = {"step": record["step"]}
    if kind in EVENTS:
        out[f"event/{kind}"] = 1
    for key, value in record.items():
        if key in ("kind", "step", "time"):
            continue
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, int | float):
            out[f"{kind}/{key}"] = value
        elif isinstance(value, dict):
            out.update({f"{kind}/{key}/{k}": v for k, v in value.items() if isinstance(v, int | float)})
    return out


def run_id(run_dir: Path) -> str:
    """The run directory's W&B run id, created (and kept) on first use."""
    path = run_dir / RUN_ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    new = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id alphabet
    atomic_write_text(path, new + "\n")
    return new


class WandbTracker:
    """Rank 0's W&B run for one launch; ``log`` takes metrics.jsonl records."""

    def __init__(self, settings: Any, run_dir: Path, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError(
                f"train.wandb.mode={settings.mode} needs the wandb package: pip install "
                "'ptbr[wandb]' (or set train.wandb.mode=disabled)"
            ) from None
        run_dir.mkdir(parents=True, exist_ok=True)
        directory = Path(settings.dir).expanduser() if settings.dir else run_dir
        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            name=settings.name or run_dir.name,
            tags=list(settings.tags),
            mode=settings.mode,
            id=run_id(run_dir),
            resume="allow",
            dir=str(directory),
            config=redact(config),
            settings=wandb.Settings(save_code=False, disable_code=True, disable_git=True, console="off"),
        )
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, record: dict[str, Any]) -> None:
        if "step" in record:
            self.run.log(flatten(record))

    def preempting(self) -> None:
        self.run.mark_preempting()

    def close(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)
