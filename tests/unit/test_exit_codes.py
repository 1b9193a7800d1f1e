"""The exit codes a job acts on are defined once (ptbr/errors.py); the Slurm script and the README follow it."""

from __future__ import annotations

import re

from ptbr import errors
from ptbr.train import preempt, supervise
from tests.helpers.train_harness import REPO


def readme_table() -> dict[int, tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Faults and exit codes") :]
    rows = re.findall(r"^\| (\d+) \| (.+?) \| (.+?) \|$", section.split("\n\n", 2)[1], flags=re.MULTILINE)
    return {int(code): (meaning, action) for code, meaning, action in rows}


def test_readme_table_is_the_exit_code_table():
    assert readme_table() == {e.code: (e.meaning, e.job_action) for e in errors.EXIT_CODES}


def slurm_requeue_codes() -> set[int]:
    """The codes on the ``case`` arms of slurm/ptbr_job.sh that may requeue the job (``requeue``, or
    ``after_signal``, which requeues on the time-limit signal)."""
    script = (REPO / "slurm" / "ptbr_job.sh").read_text()
    case = script[script.index("case $code in") :]
    case = case[: case.index("esac")]
    arms = re.findall(r"^\s*([0-9 |*]+)\)\s*(.*?);;", case, flags=re.MULTILINE | re.DOTALL)
    return {
        int(c)
        for pattern, action in arms
        if re.search(r"\b(requeue|after_signal)\b", action)
        for c in re.findall(r"\d+", pattern)
    }


def test_slurm_script_requeues_on_exactly_the_requeue_codes():
    assert slurm_requeue_codes() == set(errors.REQUEUE_EXIT_CODES) == {69, 75}
    script = (REPO / "slurm" / "ptbr_job.sh").read_text()
    assert "if [ $code -eq 69 ]; then" in script  # and the pre-flight requeues on an unreachable data source


def test_error_classes_and_the_stop_signals_come_from_the_table():
    codes = {e.code for e in errors.EXIT_CODES}
    for cls in (
        errors.PtbrError,
        errors.NonFiniteError,
        errors.CorruptDataError,
        errors.DataSourceError,
        errors.CheckpointWriteError,
    ):
        assert cls.exit_code in codes
    assert {0, 3, 65, 69, 74, 75} == errors.AGREED_EXIT_CODES
    # the rank side and the supervisor use the one tuple of stop signals
    assert preempt.STOP_SIGNALS is errors.STOP_SIGNALS and supervise.STOP_SIGNALS is errors.STOP_SIGNALS
