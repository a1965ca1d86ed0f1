"""A modelled accelerator for the benchmarks (never for the product): a ``Backend`` that takes no CPU while it
"executes" a batch of b images, only waits ``a + b·c`` ms, as a GPU running a TensorRT engine leaves the host free.

Separate processes share one modelled device, as processes share one GPU: a batch holds an exclusive ``fcntl.flock``
on one lock file while it executes, so N single-stream processes queue for the device the way N processes on one GPU
take turns (time-slicing), and two batches never overlap. Both the wait for the lock and the wait of the execution
release the GIL, so the pipeline's other threads run meanwhile.

The defaults are a ResNet-50 INT8 TensorRT engine on a Jetson AGX Orin, derived from NVIDIA's MLPerf Inference v3.0
closed-division results (mlcommons/inference_results_v3.0, closed/NVIDIA/results/Orin_TRT/resnet50): SingleStream
(one image per query) mean latency 0.630 ms, MultiStream (8 images per query) mean latency 2.170 ms; so
c = (2.170 - 0.630) / 7 = 0.220 ms per image and a = 0.630 - 0.220 = 0.410 ms per batch (two batch sizes, a straight
line through them; whether NVIDIA's harness ran each 8-image query as one batch of 8 is assumed, not checked).
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from mlic_edge.runtime.inference.backends.base import Backend, BackendInfo
from mlic_edge.runtime.inference.threads import available_cores, plan_threads

MLPERF_SOURCE = ("MLPerf Inference v3.0 closed, NVIDIA Jetson AGX Orin (Orin_TRT), ResNet-50: "
                 "https://github.com/mlcommons/inference_results_v3.0/tree/main/closed/NVIDIA/results/Orin_TRT/"
                 "resnet50 (SingleStream mean latency 630410 ns for 1 image; MultiStream mean latency 2170239 ns "
                 "for 8 images)")
ORIN_SINGLE_STREAM_MS = 0.630410  # mean latency, 1 image per query
ORIN_MULTI_STREAM_MS = 2.170239  # mean latency, 8 images per query
ORIN_MULTI_STREAM_IMAGES = 8


@dataclass(frozen=True)
class DeviceTiming:
    """``fixed_ms + images · per_image_ms`` per batch on the modelled device."""

    fixed_ms: float
    per_image_ms: float

    def batch_ms(self, images: int) -> float:
        return self.fixed_ms + images * self.per_image_ms

    def scaled(self, factor: float) -> "DeviceTiming":
        """The same engine ``factor`` times slower (a bigger model, a smaller Jetson): the ratio c/a is kept."""
        return DeviceTiming(self.fixed_ms * factor, self.per_image_ms * factor)

    def describe(self) -> str:
        return f"a={self.fixed_ms:.3f} ms + b x c={self.per_image_ms:.3f} ms"


def timing_from_two_batches(single_ms: float, batch_ms: float, batch: int) -> DeviceTiming:
    """The straight line through (1, ``single_ms``) and (``batch``, ``batch_ms``)."""
    per_image = (batch_ms - single_ms) / (batch - 1)
    return DeviceTiming(single_ms - per_image, per_image)


ORIN_RESNET50 = timing_from_two_batches(ORIN_SINGLE_STREAM_MS, ORIN_MULTI_STREAM_MS, ORIN_MULTI_STREAM_IMAGES)


@contextlib.contextmanager
def device_held(lock_file: IO[bytes]) -> Iterator[None]:
    """The modelled device, exclusively, across processes (flock waits without holding the GIL)."""
    fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def wait_until(deadline: float) -> None:
    """Sleep (no CPU, GIL released) until ``time.perf_counter()`` reaches ``deadline``."""
    while (left := deadline - time.perf_counter()) > 0:
        time.sleep(left)


class ModelledAccelerator(Backend):
    """Scores of the right shape after ``timing.batch_ms(len(batch))`` ms on the shared modelled device."""

    def __init__(self, labels: int, timing: DeviceTiming, lock_path: Path) -> None:
        self.labels, self.timing = labels, timing
        self.info = BackendInfo("modelled-accelerator", "modelled GPU (shared lock file)", "int8",
                                timing.describe(), {"lock": str(lock_path)})
        self.thread_budget = plan_threads(available_cores(), "cuda")  # a GPU backend: the feed overlaps
        self._lock_file = open(lock_path, "ab")
        self._busy_lock = threading.Lock()
        self.busy_ms = 0.0
        """Time this backend held the device (executing), all batches together."""
        self.batches = 0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with device_held(self._lock_file):
            started = time.perf_counter()
            wait_until(started + self.timing.batch_ms(len(batch)) / 1e3)
            held_ms = (time.perf_counter() - started) * 1e3
        with self._busy_lock:
            self.busy_ms += held_ms
            self.batches += 1
        return np.full((len(batch), self.labels), 0.25, np.float32)

    def close(self) -> None:
        if not self._lock_file.closed:
            self._lock_file.close()
