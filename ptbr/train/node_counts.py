"""Which node counts a run can use: the data stream's canonical nodes and the global batch must both allow it.

A run keeps two things fixed across restarts and elastic resumes: ``data.num_canonical_nodes`` (streaming
needs the node count to divide it or be a multiple of it) and ``batch.global_batch_size`` (the sample order
and the optimizer steps depend on it), which must split into whole micro-batches on every GPU. A count that
fails either is refused before any work, with the counts that do work at the configured micro-batch and, for
the others, the smaller micro-batch that would make them work.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptbr.errors import ConfigError

LIMIT = 128  # node counts listed in messages and the dry run


@dataclass(frozen=True)
class NodePlan:
    """The fixed quantities of a run and the shape of its nodes."""

    num_canonical_nodes: int
    global_batch: int | None  # None: grad_accum is configured instead, and the global batch follows the GPUs
    micro_batch: int
    gpus_per_node: int

    def stream_allows(self, nodes: int) -> bool:
        ncn = self.num_canonical_nodes
        return ncn % nodes == 0 or nodes % ncn == 0

    def micro_batch_for(self, nodes: int) -> int | None:
        """The largest micro-batch <= the configured one that splits the global batch over ``nodes`` nodes."""
        world = nodes * self.gpus_per_node
        if self.global_batch is None:
            return self.micro_batch
        return next((m for m in range(self.micro_batch, 0, -1) if self.global_batch % (m * world) == 0), None)

    def works(self, nodes: int) -> bool:
        return self.stream_allows(nodes) and self.micro_batch_for(nodes) == self.micro_batch

    def working_counts(self, limit: int = LIMIT) -> list[int]:
        return [n for n in range(1, limit + 1) if self.works(n)]

    def with_smaller_micro_batch(self, limit: int = LIMIT) -> list[tuple[int, int]]:
        """(nodes, micro-batch) for the counts that work only with a smaller micro-batch."""
        found = []
        for n in range(1, limit + 1):
            m = self.micro_batch_for(n)
            if self.stream_allows(n) and m is not None and m != self.micro_batch:
                found.append((n, m))
        return found

    def describe(self, limit: int = LIMIT) -> str:
        """One line for the dry run and for refusals."""
        works = ", ".join(map(str, self.working_counts(limit))) or "none"
        text = f"node counts that work at micro-batch {self.micro_batch}, {self.gpus_per_node} GPU(s) per node: {works}"
        smaller = self.with_smaller_micro_batch(limit)
        if smaller:
            text += "; with a smaller batch.micro_batch_size also " + ", ".join(f"{n} (micro {m})" for n, m in smaller)
        return text

    def check(self, nodes: int) -> None:
        """Refuse ``nodes`` with one line saying why and what works instead."""
        if not self.stream_allows(nodes):
            raise ConfigError(
                f"{nodes} nodes cannot read a stream of {self.num_canonical_nodes} canonical nodes "
                f"(one must divide the other); {self.describe(max(LIMIT, nodes))}"
            )
        m = self.micro_batch_for(nodes)
        if m is None:
            raise ConfigError(
                f"batch.global_batch_size ({self.global_batch}) does not split over {nodes} nodes x "
                f"{self.gpus_per_node} GPU(s) at any micro-batch; {self.describe(max(LIMIT, nodes))}"
            )
        if m != self.micro_batch:
            where = f"{nodes} nodes x {self.gpus_per_node} GPU(s)"
            raise ConfigError(
                f"batch.global_batch_size ({self.global_batch}) does not split into micro-batches of "
                f"{self.micro_batch} over {where}: set batch.micro_batch_size={m}; {self.describe()}"
            )
