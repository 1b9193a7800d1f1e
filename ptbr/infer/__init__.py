"""Inference on exported weights: export (from checkpoints), load, generate, evaluate."""
