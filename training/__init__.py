"""The training engine: one TrainConfig, one training path, run out of process by jobs.py."""
