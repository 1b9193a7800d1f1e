"""Benchmark reports are written as the rows come in, so a benchmark stopped by a time limit leaves its figures."""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks.common import write_report
from tests.helpers.train_harness import REPO


def test_partial_reports_are_marked_and_replaced(tmp_path):
    path = tmp_path / "out" / "wkv.json"
    write_report(path, "wkv", [{"backend": "torch"}], {"device": "cpu"}, partial=True)
    first = json.loads(path.read_text())
    assert first["complete"] is False and first["rows"] == [{"backend": "torch"}]
    write_report(path, "wkv", [{"backend": "torch"}, {"backend": "triton"}], {"device": "cpu"})
    final = json.loads(path.read_text())
    assert final["complete"] is True and len(final["rows"]) == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["wkv.json"]  # no temporary file left


def test_wkv_benchmark_writes_every_row(tmp_path):
    report = tmp_path / "wkv.json"
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/wkv.py",
            "--device",
            "cpu",
            "--backends",
            "reference,torch",
            "--lengths",
            "16,32",
            "--batch",
            "1",
            "--heads",
            "1",
            "--head-size",
            "16",
            "--repeats",
            "1",
            "--json",
            str(report),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(report.read_text())
    assert data["complete"] is True
    assert [(r["backend"], r["T"]) for r in data["rows"]] == [
        ("reference", 16),
        ("torch", 16),
        ("reference", 32),
        ("torch", 32),
    ]
