"""Run a task list through lm-evaluation-harness on a harness model, with one-line errors.

Tasks are looked up first among the directories given (``include``, plus ptbr's own suite definitions) and only
then, if a name is not there, in lm-eval's ~13,000 built-in task files (indexing those takes ~10-20 s on two
cores, so local task lists start at once). Each task is loaded on its own, so that a failure names it: an
unknown name, or data that has to come from the Hugging Face Hub. When the Hub cannot be reached at all (no
route, no name resolution: an air-gapped node), the run is switched to the Hub's offline mode before any task
loads, so a dataset missing from the cache fails in a second instead of after a minute of retries.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ptbr.bench.suites import TASKS_DIR
from ptbr.errors import PtbrError

PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class BenchError(PtbrError):
    """A benchmark cannot run: unknown task, data out of reach, not an export."""


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub opens (behind a proxy: assumed yes, the proxy decides)."""
    if any(os.environ.get(v) for v in PROXY_VARS):
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _offline_if_unreachable() -> bool:
    """Set the Hub's offline mode when it cannot be reached; True if offline (now or already)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return True
    if hub_reachable():
        return False
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:  # both libraries read the variables at import; they may have been imported already
        import datasets.config
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
        datasets.config.HF_HUB_OFFLINE = True
    except (ImportError, AttributeError):
        pass
    return True


def _quiet_lm_eval() -> None:
    """lm-eval logs every task and option at INFO, datasets draws a bar per split: only errors are news here."""
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass


def task_manager(names: Sequence[str], include: Sequence[str | Path] = ()) -> Any:
    """A TaskManager that knows every name in ``names`` (built-in tasks only indexed when needed)."""
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR), *(str(p) for p in include)]
    for p in paths[1:]:
        if not Path(p).is_dir():
            raise BenchError(f"--include-path {p} is not a directory of task YAML files")
    local = TaskManager(include_path=paths, include_defaults=False)
    local_names = set(local.all_tasks)
    needs_defaults = [n for n in names if n not in local_names]
    # ptbr's suites name built-in tasks: a suite needs the defaults if any of its members is not local
    if not needs_defaults and not any(_group_members(local, n) - local_names for n in names):
        return local
    return TaskManager(include_path=paths, include_defaults=True)


def _group_members(tm: Any, name: str) -> set[str]:
    entry = getattr(tm, "_index", {}).get(name)
    cfg = getattr(entry, "cfg", None) or {}
    members = cfg.get("task", []) if isinstance(cfg, dict) else []
    return {m for m in members if isinstance(m, str)} if isinstance(members, list) else set()


def check_names(tm: Any, names: Sequence[str]) -> None:
    known = set(tm.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise BenchError(
                f"unknown task {name!r}{hint}; `lm_eval ls tasks` lists them, --include-path adds "
                "a directory of task YAML files"
            )


def _network_failure(exc: BaseException) -> bool:
    seen = exc
    while seen is not None:
        text = f"{type(seen).__name__}: {seen}"
        if isinstance(seen, ConnectionError | socket.gaierror | TimeoutError) or any(
            s in text
            for s in (
                "OfflineModeIsEnabled",
                "LocalEntryNotFoundError",
                "Couldn't reach",
                "is not cached",
                "Name or service not known",
                "NameResolutionError",
            )
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def load_tasks(tm: Any, names: Sequence[str], offline: bool) -> list[Any]:
    """Every task or group, loaded one by one so that an error names it."""
    objects = []
    for name in names:
        try:
            loaded = tm.load([name])
        except Exception as exc:
            if _network_failure(exc):
                where = "the Hugging Face Hub cannot be reached from here" if offline else "its download failed"
                raise BenchError(
                    f"task {name} needs its data from the Hugging Face Hub and {where}; run it once "
                    "with network (the cache in HF_HOME is reused offline) or use local tasks"
                ) from None
            raise BenchError(f"task {name} could not be loaded: {type(exc).__name__}: {exc}") from None
        objects.append(loaded["groups"][name] if name in loaded["groups"] else loaded["tasks"][name])
    return objects


def prepare(names: Sequence[str], include: Sequence[str | Path] = ()) -> tuple[Any, list[Any]]:
    """(task manager, loaded tasks): the part of a run that does not depend on the model, reusable."""
    _quiet_lm_eval()
    offline = _offline_if_unreachable()
    tm = task_manager(names, include)
    check_names(tm, names)
    return tm, load_tasks(tm, names, offline)


def evaluate(
    lm: Any,
    tm: Any,
    tasks: list[Any],
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    seed: int = 1234,
    log_samples: bool = False,
) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` on already loaded tasks; its results dict."""
    from lm_eval import simple_evaluate

    _quiet_lm_eval()
    results = simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=tm,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=log_samples,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        bootstrap_iters=1000,
        verbosity="ERROR",
    )
    if results is None:
        raise BenchError("lm-evaluation-harness returned no results")
    return results
