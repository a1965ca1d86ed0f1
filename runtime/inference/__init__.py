"""Inference: backends, the CUDA layer, sources, the threaded pipeline, postprocessing, sinks and latency.

May import the core and ``runtime.engines`` (a TensorRT backend loads engines); never the checks or deployment."""
