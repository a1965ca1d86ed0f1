"""benchmarks/accelerator.py, the modelled accelerator of the multi-stream benchmark: a + b·c from two batch sizes,
scores of the right shape, a GPU backend's thread budget, and one device shared through the lock file (batches of
backends that share it never overlap, as they would not on one GPU)."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def accelerator():
    spec = importlib.util.spec_from_file_location("accelerator", ROOT / "benchmarks" / "accelerator.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_the_timing_is_the_line_through_the_two_published_batch_sizes(accelerator):
    timing = accelerator.timing_from_two_batches(0.630410, 2.170239, 8)
    assert timing.batch_ms(1) == pytest.approx(0.630410) and timing.batch_ms(8) == pytest.approx(2.170239)
    assert accelerator.ORIN_RESNET50 == timing
    scaled = timing.scaled(10)
    assert scaled.fixed_ms / scaled.per_image_ms == pytest.approx(timing.fixed_ms / timing.per_image_ms)


def test_scores_have_the_batch_and_label_shape_and_the_budget_is_a_gpu_backends(accelerator, tmp_path):
    timing = accelerator.DeviceTiming(0.1, 0.05)
    with accelerator.ModelledAccelerator(20, timing, tmp_path / "device.lock") as backend:
        scores = backend.infer(np.zeros((3, 3, 8, 8), np.float32))
        assert scores.shape == (3, 20) and scores.dtype == np.float32
        assert backend.thread_budget.overlap and not backend.thread_budget.spinning
        assert backend.batches == 1 and backend.busy_ms > 0


def test_backends_sharing_the_lock_file_never_execute_at_once(accelerator, tmp_path, monkeypatch):
    """Two backends (two open lock files, as two processes hold) called from two threads: the executing intervals,
    recorded around the wait, follow one another."""
    intervals: list[tuple[float, float]] = []
    wait = accelerator.wait_until

    def recorded(deadline: float) -> None:
        started = time.perf_counter()
        wait(deadline)
        intervals.append((started, time.perf_counter()))

    monkeypatch.setattr(accelerator, "wait_until", recorded)
    timing = accelerator.DeviceTiming(2.0, 0.5)
    backends = [accelerator.ModelledAccelerator(4, timing, tmp_path / "device.lock") for _ in range(2)]

    def run(backend) -> None:
        for _ in range(5):
            backend.infer(np.zeros((2, 3, 4, 4), np.float32))

    threads = [threading.Thread(target=run, args=(backend,)) for backend in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for backend in backends:
        backend.close()
    ordered = sorted(intervals)
    assert len(ordered) == 10
    assert all(previous_end <= start for (_, previous_end), (start, _) in zip(ordered, ordered[1:]))
