"""Training: typed config, DeepSpeed engine set-up, the step loop, metrics."""
