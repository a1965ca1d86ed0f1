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
    """'x86_64 (AMD EPYC 7B13), 2 cores, CPU only (no GPU)': the CPU model from /proc/cpuinfo where there is one."""
    try:
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                      if line.startswith("model name")), "")
    except OSError:
        model = ""
    name = platform.processor() or platform.machine()
    return f"{name}{f' ({model})' if model else ''}, {os.cpu_count()} cores, CPU only (no GPU)"
