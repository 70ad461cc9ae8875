"""Training: sharded loops, checkpoints and vmapped hyperparameter sweeps."""
