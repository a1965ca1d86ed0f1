"""What the benchmark scripts share: ONNX Runtime CPU latency and the description of the machine they ran on."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

from mlic_edge.runtime.inference.backends.onnxruntime_backend import OnnxRuntimeBackend


def onnx_latency_ms(path: Path, img_size: int, batch: int = 1, runs: int = 50, warmup: int = 5) -> float:
    """Median wall time (ms) of one ONNX Runtime CPU inference of ``batch`` images, after ``warmup`` runs."""
    with OnnxRuntimeBackend(path) as backend:
        images = np.random.default_rng(0).standard_normal((batch, 3, img_size, img_size)).astype(np.float32)
        for _ in range(warmup):
            backend.infer(images)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            backend.infer(images)
            times.append((time.perf_counter() - started) * 1e3)
    return float(np.median(times))


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only (no GPU)"
