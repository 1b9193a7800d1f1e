"""The cleaning report: documents and bytes kept per source and step, drops per rule with examples.

A part writes its own report (the per-document steps); the merge adds the deduplication steps and joins
the parts' reports in part order. Parts are contiguous runs of the input order, so "the first three
examples of a rule" and the order of sources come out as one pass over the whole corpus gives them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

STEPS = ("read", "repair", "language", "quality", "exact_dedup", "near_dedup")
EXAMPLES_PER_RULE = 3
EXAMPLE_CHARS = 240


@dataclass
class Report:
    config: dict[str, Any]
    key: str | None = None  # inputs + config identity (clean_once reuses a matching output)
    sources: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # source -> step -> counts
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=lambda: defaultdict(list))
    read: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    timing: dict[str, Any] = field(default_factory=dict)  # per part and per merge phase: seconds, peak RSS

    def count(self, source: str, step: str, nbytes: int, documents: int = 1) -> None:
        c = self.sources.setdefault(source, {}).setdefault(step, {"documents": 0, "bytes": 0})
        c["documents"] += documents
        c["bytes"] += nbytes

    def drop(self, source: str, rule: str, text: str) -> None:
        self.dropped[rule] = self.dropped.get(rule, 0) + 1
        if len(self.examples[rule]) < EXAMPLES_PER_RULE:
            self.examples[rule].append({"source": source, "text": text[:EXAMPLE_CHARS]})

    def wants_example(self, rule: str) -> bool:
        return len(self.examples[rule]) < EXAMPLES_PER_RULE

    def totals(self, step: str) -> tuple[int, int]:
        docs = sum(s.get(step, {}).get("documents", 0) for s in self.sources.values())
        nbytes = sum(s.get(step, {}).get("bytes", 0) for s in self.sources.values())
        return docs, nbytes

    def add(self, other: dict[str, Any]) -> None:
        """Fold in a part's report (``as_dict`` form) that follows everything added so far in input order."""
        for source, steps in other["sources"].items():
            for step, c in steps.items():
                self.count(source, step, c["bytes"], c["documents"])
        for rule, n in other["dropped_by_rule"].items():
            self.dropped[rule] = self.dropped.get(rule, 0) + n
        for rule, examples in other["examples"].items():
            self.examples[rule].extend(examples[: EXAMPLES_PER_RULE - len(self.examples[rule])])
        for k, v in other["read"].items():
            self.read[k] = self.read.get(k, 0) + v

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "config": self.config,
            "read": self.read,
            "seconds": round(self.seconds, 3),
            "steps_kept": {step: dict(zip(("documents", "bytes"), self.totals(step))) for step in STEPS},
            "dropped_by_rule": dict(sorted(self.dropped.items())),
            "sources": self.sources,
            "examples": dict(sorted(self.examples.items())),
            "timing": self.timing,
        }


def print_report(report: Report, write: Callable[[str], None] = print) -> None:
    write(f"{'step':<12} {'documents':>10} {'MB':>9}")
    for step in STEPS:
        docs, nbytes = report.totals(step)
        write(f"{step:<12} {docs:>10,} {nbytes / 1e6:>9.2f}")
    write("dropped by rule: " + (", ".join(f"{k} {v:,}" for k, v in sorted(report.dropped.items())) or "none"))
