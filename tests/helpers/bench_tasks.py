"""The local lm-eval tasks of tests/bench_tasks (multiple choice, generation, rolling log-likelihood), written
out as task YAMLs whose data files are absolute paths (lm-eval reads ``data_files`` relative to the working
directory, not to the YAML)."""

from __future__ import annotations

import shutil
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "bench_tasks"
TASKS = ("ptbr_test_mc", "ptbr_test_gen", "ptbr_test_ppl")


def write_tasks(directory: Path) -> Path:
    """Copy the data and write the YAMLs into ``directory`` (an --include-path); returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    for data in SOURCE.glob("*.jsonl"):
        shutil.copyfile(data, directory / data.name)
    for template in SOURCE.glob("*.yaml.in"):
        text = template.read_text(encoding="utf-8").replace("{DIR}", str(directory))
        (directory / template.name.removesuffix(".in")).write_text(text, encoding="utf-8")
    return directory
