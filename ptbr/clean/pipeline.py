"""``ptbr corpus clean``: documents in, cleaned documents and a report out, on one machine or in parts.

* ``--part I/N`` (:func:`clean_part`): the per-document steps on part I's share of the inputs
  (:mod:`ptbr.clean.part`), results and deduplication keys into ``WORK/part-I-of-N/``;
* ``--merge N`` (:func:`merge_parts`): deduplication across the N parts and the one output
  (:mod:`ptbr.clean.merge`);
* neither (:func:`clean`): both, as one part, in a scratch directory next to the output. This is the same
  code with N = 1, so any N gives the same files as one machine.

Deterministic: same inputs + same config -> byte-identical output (fixed MinHash seed, input order kept
everywhere), whatever ``--workers`` and N.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ptbr.clean.config import CleanConfig
from ptbr.clean.merge import DEFAULT_MEMORY, merge
from ptbr.clean.part import make_plan, run_part
from ptbr.clean.report import Report, print_report
from ptbr.data.build import default_workers
from ptbr.data.parts import PartSpec, default_work_dir
from ptbr.errors import PtbrError

__all__ = ["Report", "clean", "clean_once", "clean_part", "input_key", "merge_parts", "print_report"]


def clean(
    inputs: list[str],
    output: str | None,
    cfg: CleanConfig,
    *,
    workers: int | None = None,
    text_field: str = "text",
    txt_docs: str = "file",
    overwrite: bool = False,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    progress_every: float = 5.0,
    memory: int = DEFAULT_MEMORY,
) -> Report:
    """The whole cleaning on this machine (one part and its merge)."""
    out = Path(output) if output else None
    if not dry_run:
        if out is None:
            raise PtbrError("--output is required (or --dry-run for the report only)")
        if out.exists() and not overwrite:
            raise PtbrError(f"{out} already exists; pass --overwrite to replace it")
    plan = make_plan(inputs, cfg, text_field, txt_docs)
    if out is not None:  # the survivors are written before deduplication: next to the output, not in /tmp
        out.parent.mkdir(parents=True, exist_ok=True)
        work = out.with_name(f".{out.name}.work-{os.getpid()}")
        shutil.rmtree(work, ignore_errors=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="ptbr-clean-"))
    try:
        run_part(
            plan,
            PartSpec(0, 1),
            work,
            cfg,
            workers=workers or default_workers(),
            text_field=text_field,
            txt_docs=txt_docs,
            log=log,
            progress_every=progress_every,
            memory=memory,
        )
        return merge(plan, 1, work, out, cfg, dry_run=dry_run, memory=memory, log=log)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _rerun_hint(output: str | None, work: Path) -> str:
    return f"ptbr corpus clean ... --output {output}" + (
        f" --work {work}" if output is None or work != default_work_dir(output) else ""
    )


def clean_part(
    inputs: list[str],
    output: str | None,
    cfg: CleanConfig,
    spec: PartSpec,
    *,
    work: str | None = None,
    workers: int | None = None,
    text_field: str = "text",
    txt_docs: str = "file",
    log: Callable[[str], None] = print,
    progress_every: float = 10.0,
    memory: int = DEFAULT_MEMORY,
) -> dict[str, Any]:
    """Part ``spec`` of the cleaning into WORK (default ``OUTPUT.parts``); nothing when it is done already."""
    work_dir = _work_dir(output, work)
    plan = make_plan(inputs, cfg, text_field, txt_docs)
    return run_part(
        plan,
        spec,
        work_dir,
        cfg,
        workers=workers or default_workers(),
        text_field=text_field,
        txt_docs=txt_docs,
        log=log,
        progress_every=progress_every,
        memory=memory,
    )


def merge_parts(
    inputs: list[str],
    output: str | None,
    cfg: CleanConfig,
    count: int,
    *,
    work: str | None = None,
    text_field: str = "text",
    txt_docs: str = "file",
    overwrite: bool = False,
    dry_run: bool = False,
    memory: int = DEFAULT_MEMORY,
    log: Callable[[str], None] = print,
) -> Report | None:
    """The merge of WORK's ``count`` parts into ``output``; None when ``output`` already holds this result."""
    work_dir = _work_dir(output, work)
    plan = make_plan(inputs, cfg, text_field, txt_docs)
    out = Path(output) if output else None
    if not dry_run:
        if out is None:
            raise PtbrError("--output is required (or --dry-run for the report only)")
        if out.exists():
            if _report_key(out) == plan.key:
                log(f"clean: {out} already holds the merge of these inputs and config; nothing to do")
                return None
            if not overwrite:
                raise PtbrError(f"{out} already exists; pass --overwrite to replace it")
    return merge(
        plan, count, work_dir, out, cfg, dry_run=dry_run, memory=memory, rerun=_rerun_hint(output, work_dir), log=log
    )


def _work_dir(output: str | None, work: str | None) -> Path:
    if work:
        return Path(work)
    if not output:
        raise PtbrError("--part and --merge need --output (or --work DIR for the parts)")
    return default_work_dir(output)


def _report_key(out: Path) -> str | None:
    try:
        return json.loads((out / "report.json").read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def input_key(inputs: list[str], cfg: CleanConfig, text_field: str = "text", txt_docs: str = "file") -> str:
    """Identity of a cleaning job: the config, the reader settings and every input file's path, size and
    modification time."""
    return make_plan(inputs, cfg, text_field, txt_docs).key


def clean_once(
    inputs: list[str], output: str, cfg: CleanConfig, log: Callable[[str], None] = print, **kwargs: Any
) -> Path:
    """:func:`clean` unless ``output`` already holds the result of these inputs and config (report key)."""
    key = input_key(inputs, cfg, kwargs.get("text_field", "text"), kwargs.get("txt_docs", "file"))
    if _report_key(Path(output)) == key:
        log(f"clean: {output} is up to date (same inputs and config); reusing it")
        return Path(output)
    report = clean(inputs, output, cfg, overwrite=True, log=log, **kwargs)
    print_report(report, log)
    return Path(output)
