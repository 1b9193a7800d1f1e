"""Sharded checkpoints: atomic commit, discovery, retention, elastic (other world size) resume.

``Checkpointer`` is the public entry point; ``layout`` holds the on-disk names (read-only views
for exporters); ``optim_state`` is where DeepSpeed's optimizer internals are read.
"""

from ptbr.checkpoint.checkpointer import Checkpointer, ResumePlan
from ptbr.checkpoint.run_state import Progress, RunState, fingerprint

__all__ = ["Checkpointer", "Progress", "ResumePlan", "RunState", "fingerprint"]
