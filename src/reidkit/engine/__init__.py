"""Training loop, checkpoints, configs and runtime helpers."""
