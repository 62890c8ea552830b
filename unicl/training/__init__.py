"""Training: DeepSpeed engine, task sampling, optimizer, checkpoints, logging."""
