"""``train.bench_every``: lm-evaluation-harness tasks on the weights being trained, every N steps.

Collective, and cheap for the ranks that wait: every rank takes part in gathering the weights (under ZeRO-3 each
holds a shard, ``GatheredParameters`` assembles them, as for an export), rank 0 copies them into a plain model
it keeps for the run, and runs ``train.bench_tasks`` with ``--limit train.bench_limit`` through the same harness
model as ``ptbr bench`` (:mod:`ptbr.bench`) while the others wait at a barrier of the control group. The tasks
are loaded once, when the run starts, so an unknown task or data out of reach stops the run before step 1.
The record (``kind: bench``: every task's primary score, the seconds it took) goes to metrics.jsonl and W&B.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist

from ptbr import dist
from ptbr.errors import ConfigError, PtbrError


class TrainingBench:
    """Rank 0's benchmark state (tasks, tokenizer, a plain copy of the model); ``run`` is collective."""

    def __init__(self, cfg: Any, is_main: bool, control: Any, device: torch.device) -> None:
        self.cfg, self.is_main, self.control, self.device = cfg, is_main, control, device
        self.tasks: Any = None
        self.model: Any = None
        self.scorer: Any = None

    def prepare(self, run_dir: Path, eos_id: int) -> None:
        """Collective: load the tasks and the run's tokenizer on rank 0; any problem stops every rank."""
        problem = None
        if self.is_main:
            try:
                problem = self._prepare(run_dir, eos_id)
            except PtbrError as exc:
                problem = f"train.bench_tasks: {exc}"
        problems = [p for p in dist.gather(problem, self.control) if p]
        if problems:
            raise ConfigError(problems[0])

    def _prepare(self, run_dir: Path, eos_id: int) -> str | None:
        try:
            from tokenizers import Tokenizer

            from ptbr.bench.runner import prepare
            from ptbr.bench.suites import task_names
        except ImportError:
            return "train.bench_every needs lm-evaluation-harness: pip install 'ptbr[bench]'"
        tok = run_dir / "tokenizer.json"
        if not tok.is_file():
            return f"train.bench_every needs the dataset's tokenizer in {tok}; publish the shards with it"
        t = self.cfg.train
        self.tasks = prepare(task_names(t.bench_tasks), t.bench_include)
        self.tokenizer, self.eos_id = Tokenizer.from_file(str(tok)), eos_id
        return None

    def _copy_weights(self, engine: Any) -> None:
        """Rank 0's plain model gets the engine's current weights (every rank gathers under ZeRO-3)."""
        from ptbr.model import RWKV6

        module = engine.module
        params = list(module.parameters())
        stage3 = any(hasattr(p, "ds_id") for p in params)
        if self.is_main and self.model is None:
            self.model = RWKV6(self.cfg.model, init_weights=False).to(self.device).eval()
            self.model.set_wkv_backend(self.cfg.train.wkv_backend)
        if stage3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                self._load(module)
        else:
            self._load(module)

    @torch.no_grad()
    def _load(self, module: Any) -> None:
        if not self.is_main:
            return
        mine = dict(self.model.named_parameters())
        for name, p in module.named_parameters():
            mine[name].data = p.data.detach().clone().to(self.device)

    def run(self, engine: Any, step: int, tokens: int) -> dict[str, Any] | None:
        """Collective: the benchmark record on rank 0 (None elsewhere). lm-eval seeds Python's, NumPy's and
        torch's generators; they are put back afterwards, so a run with benchmarks trains as one without."""
        t0 = time.perf_counter()
        self._copy_weights(engine)
        record = None
        if self.is_main:
            with _rng_kept():
                record = self._bench(step, tokens, t0)
        if tdist.is_initialized():
            tdist.barrier(group=self.control)
        return record

    def _bench(self, step: int, tokens: int, t0: float) -> dict[str, Any]:
        """Rank 0: the tasks on the plain copy, through the same harness model as ptbr bench."""
        from ptbr.bench.harness import PtbrHarnessLM
        from ptbr.bench.results import flat_scores, summarize
        from ptbr.bench.runner import evaluate
        from ptbr.bench.scorer import ModelScorer

        scorer = ModelScorer(
            self.model, self.tokenizer, self.eos_id, self.device, info={"step": step, "tokens": tokens}
        )
        lm = PtbrHarnessLM(scorer, batch_size=self.cfg.batch.micro_batch_size)
        tm, tasks = self.tasks
        raw = evaluate(lm, tm, tasks, limit=self.cfg.train.bench_limit)
        summary = summarize(raw, scorer.info, limit=self.cfg.train.bench_limit)
        return {
            "kind": "bench",
            "step": step,
            "tokens": tokens,
            "limit": self.cfg.train.bench_limit,
            "seconds": time.perf_counter() - t0,
            "scores": flat_scores(summary),
        }


@contextlib.contextmanager
def _rng_kept() -> Iterator[None]:
    import numpy as np

    states = (
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    )
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])
