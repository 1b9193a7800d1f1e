"""Sharded checkpoints: atomic commit, discovery, retention, elastic (other world size) resume."""
