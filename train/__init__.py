"""Training: losses, schedules, the trainer and PyTorch evaluation."""
