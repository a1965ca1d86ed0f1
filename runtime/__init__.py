"""Inference without PyTorch: backends, sources, the pipeline, sinks, latency and parity."""
