"""Checks of what was built: parity against the PyTorch reference, and bench (backend alone vs the pipeline)."""
