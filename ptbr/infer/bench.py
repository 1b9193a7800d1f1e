"""``ptbr bench``: lm-evaluation-harness tasks on one or more exports, one comparison table.

Every export gets ``bench.json`` (the record of :mod:`ptbr.bench.results`, merged with earlier tasks of the
same weights) and ``bench.md`` beside its weights; when the export's training run directory is still there
(``config.json`` names the checkpoint it came from), the record is also appended to ``RUN_DIR/bench.jsonl``,
which ``ptbr plot`` draws as a curve over steps. The tasks are loaded and checked before any model is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ptbr.bench import results as res
from ptbr.bench.runner import BenchError, evaluate, prepare
from ptbr.bench.suites import task_names
from ptbr.errors import PtbrError
from ptbr.fsutil import atomic_write_text
from ptbr.log import info
from ptbr.model.weights import read_export_config

RUN_RECORDS = "bench.jsonl"


def check_export(path: str | Path) -> dict[str, Any]:
    """The export's config.json, or a one-line error."""
    path = Path(path)
    try:
        config = read_export_config(path, "")  # the one check of what an export is (a foreign config.json too)
    except PtbrError as exc:
        raise BenchError(str(exc)) from None
    weights = path / config.get("weights", "model.safetensors")
    if not weights.is_file():
        raise BenchError(f"{path}: {weights.name} is missing (an incomplete export? run ptbr export again)")
    return config


def run_dir_of(config: dict[str, Any]) -> Path | None:
    """The training run an export came from, if its directory still holds the run's metrics."""
    ckpt = config.get("checkpoint")
    if not ckpt:
        return None
    run = Path(ckpt).parent.parent
    return run if (run / "metrics.jsonl").is_file() else None


def save(path: Path, record: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    record = res.merged(res.read_json(path / "bench.json"), record)
    atomic_write_text(path / "bench.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(path / "bench.md", res.markdown(record))
    run = run_dir_of(config)
    if run is not None:
        try:
            with open(run / RUN_RECORDS, "a", encoding="utf-8") as f:
                f.write(json.dumps({**record, "scores": res.flat_scores(record)}) + "\n")
        except OSError:
            pass  # a read-only run directory: the results beside the export are what counts
    return record


def bench_exports(
    paths: Sequence[str | Path],
    tasks: str | None = None,
    *,
    limit: float | None = None,
    num_fewshot: int | None = None,
    device: str | None = None,
    batch_size: int = 8,
    include: Sequence[str] = (),
    log: Callable[[str], None] = info,
) -> list[dict[str, Any]]:
    """Run the tasks on every export; return their records (also written beside each)."""
    from ptbr.infer.harness import PtbrLM

    configs = [check_export(p) for p in paths]
    names = task_names(tasks)
    tm, loaded = prepare(names, include)
    records = []
    for path, config in zip(paths, configs):
        t0 = time.perf_counter()
        lm = PtbrLM(path=str(path), device=device, batch_size=batch_size)
        raw = evaluate(lm, tm, loaded, limit=limit, num_fewshot=num_fewshot)
        record = res.summarize(
            raw, lm.get_model_info(), limit=limit, num_fewshot=num_fewshot, seconds=time.perf_counter() - t0
        )
        records.append(save(Path(path), record, config))
        log(f"{path}: {len(record['tasks'])} task(s) in {record['seconds']:.1f} s -> {Path(path) / 'bench.json'}")
    return records
