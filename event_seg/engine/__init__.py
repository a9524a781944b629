"""The training engine: the loop, metrics, checkpoints and run folders."""
