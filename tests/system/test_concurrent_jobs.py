"""Two jobs starting on one node at the same moment (two single-GPU jobs, array tasks): each registers
streaming's shared memory under a prefix of its own. streaming 0.13 alone lets both pick the same prefix,
and one of them crashes (ptbr.data.shm_prefix; the exact collision is reproduced in tests/unit)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.helpers.train_harness import REPO, run_env, torchrun_command

ROUNDS = 2


def test_two_jobs_started_together_register_distinct_prefixes(dataset: Path, tmp_path: Path) -> None:
    for round_ in range(ROUNDS):
        work = tmp_path / f"round{round_}"
        ready, start = work / "ready", work / "start"
        ready.mkdir(parents=True)
        jobs = []
        for job in range(2):
            out = work / f"job{job}"
            out.mkdir()
            cmd = torchrun_command(
                2, str(REPO / "tests/helpers/shm_prefix_probe.py"), str(dataset), str(work / f"cache{job}"),
                str(ready), str(start), str(out),
            )  # fmt: skip
            jobs.append((out, subprocess.Popen(cmd, env=run_env(), cwd=REPO, stderr=subprocess.PIPE, text=True)))
        deadline = time.monotonic() + 180
        while len(list(ready.iterdir())) < 4:  # every rank imported and initialised: release them at once
            assert time.monotonic() < deadline and all(p.poll() is None for _, p in jobs), "a rank died at start"
            time.sleep(0.01)
        start.touch()
        prefixes = []
        for out, proc in jobs:
            _, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err[-3000:]
            mine = {(out / str(rank)).read_text() for rank in range(2)}
            assert len(mine) == 1  # the ranks of a job agree
            prefixes.append(mine.pop())
        assert prefixes[0] != prefixes[1]
