"""The layer rule of docs/architecture.md holds, and its check can fail."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.train_harness import REPO

sys.path.insert(0, str(REPO / "tools"))
import import_graph  # noqa: E402


def test_the_tree_follows_the_layer_rule():
    proc = subprocess.run(
        [sys.executable, "tools/import_graph.py", "--check"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout
    assert "layer rule: 0 violation(s)" in proc.stdout


def test_an_upward_or_sideways_import_is_a_violation():
    edges = {
        "ptbr.train.loop": {"ptbr.infer.model_io", "ptbr.model.rwkv6"},
        "ptbr.model.rwkv6": {"ptbr.data.stream"},
        "ptbr.ops.chunked": set(),
    }
    found = import_graph.violations(edges)
    assert any(v.startswith("ptbr.train.loop -> ptbr.infer.model_io: ptbr.infer is in its own layer") for v in found)
    assert any(v.startswith("ptbr.model.rwkv6 -> ptbr.data.stream: ptbr.data is in its own layer") for v in found)
    assert not any("ptbr.model.rwkv6 -> ptbr.ops" in v for v in found)  # downwards is fine
    assert import_graph.violations({"ptbr.ops.x": {"ptbr.train.loop"}}) == [
        "ptbr.ops.x -> ptbr.train.loop: ptbr.train is in a higher layer (3) than ptbr.ops (1)"
    ]
    assert import_graph.cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]
