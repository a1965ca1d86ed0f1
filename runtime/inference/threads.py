"""How many threads decoding + preprocessing ("the feed") and inference get, from the cores this process may use.

On a CPU backend the two sides compete for the same cores. The feed is cheap next to a CNN: on the 2-core
development CPU (AMD EPYC, AVX2, ONNX Runtime fp32), decoding, preprocessing and the record of a 640x480 frame took
2-4 ms against 31 ms of resnet18 at 224 px on ONNX Runtime's two threads, and taking one of those two cores from
inference made it 46 ms and the pipeline 0.56-0.62 of a plain loop; decoding beside a
two-thread inference gained nothing measurable over doing each in turn (0.95-1.08 of a plain loop, and a parallel
op waits for its slowest thread when decoding takes one of its cores; benchmarks/results/pipeline.md).
So below four cores inference keeps every core and a file's stages run in turn on one thread (live sources keep
their reader thread, which must keep taking the newest frame); from four cores up the feed gets one core in four to
itself and the stages overlap on threads. Either way ONNX Runtime's idle pool threads spin: in turn nothing else
runs beside an inference, overlapping the pool has its cores to itself, and without spinning every op of a small
model pays a thread wake-up (on a 2-core Xeon with AVX-512, mobilenetv3_large_100 at batch 1 ran at 0.76 of a plain
loop with the pool parked and 1.07 with it spinning). A GPU backend leaves the CPU to the feed and overlaps. ``--threads N`` sets the inference threads and the feed gets the
rest (overlapping where that leaves it a core); ``--threads 0`` leaves every library its own default.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from mlic_edge.errors import MlicError

FEED_SHARE = 4  # next to a CPU backend the feed gets one core in this many to itself (none below this many cores)


@dataclass(frozen=True)
class ThreadBudget:
    cores: int
    """Cores this process may run on (its CPU affinity, which a container's cpuset limits)."""
    inference: int
    """Intra-op threads of the backend (ONNX Runtime's pool, PyTorch's); 1 for a GPU backend's host side; 0 for
    the backend's own default."""
    feed: int
    """OpenCV's threads for decoding and resizing the frames."""
    chosen_by: str
    """``policy`` or ``--threads``."""
    spinning: bool
    """Whether ONNX Runtime's idle intra-op threads spin (on a CPU backend; a GPU backend's host thread waits)."""
    overlap: bool = True
    """Whether a file's decoding runs beside inference (threads) or in turn with it (one thread): beside it only
    where it has a core inference does not use, or on a GPU backend."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """'threads: 1 inference + 1 feed of 2 cores (policy)'."""
        from mlic_edge.runtime.inference.latency import describe_threads

        return describe_threads(self.as_dict())


def available_cores() -> int:
    """Cores this process may use: its affinity mask where the OS has one (Linux, cpusets), else the CPU count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def plan_threads(cores: int, device: str, threads: int | None = None) -> ThreadBudget:
    """The budget for a backend on ``device`` (``cpu``, or ``cuda``/``cuda:N`` for a GPU backend) on ``cores``
    cores; ``threads`` (``--threads``) fixes the inference threads, 0 leaves every library its own default (ONNX
    Runtime and OpenCV: a thread per core each; what a loop written without the pipeline gets)."""
    if cores < 1:
        raise MlicError(f"cannot plan threads for {cores} cores")
    if threads is not None and threads < 0:
        raise MlicError(f"--threads {threads} is not a thread count",
                        hint="pass 1 or more, 0 for the libraries' defaults, or leave it out")
    if threads == 0:
        return ThreadBudget(cores=cores, inference=0, feed=cores, chosen_by="library defaults", spinning=True,
                            overlap=True)
    on_gpu = device != "cpu"
    if threads is not None:
        inference, chosen_by = threads, "--threads"
    elif on_gpu:
        inference, chosen_by = 1, "policy"
    else:
        inference, chosen_by = cores - cores // FEED_SHARE, "policy"
    feed = max(1, cores - inference)
    own_cores = inference + feed <= cores
    return ThreadBudget(cores=cores, inference=inference, feed=feed, chosen_by=chosen_by, spinning=not on_gpu,
                        overlap=on_gpu or own_cores)


def apply_feed_threads(budget: ThreadBudget) -> int:
    """Give OpenCV (decode, resize) the feed's threads; returns OpenCV's previous setting, for restoring."""
    import cv2

    previous = cv2.getNumThreads()
    cv2.setNumThreads(budget.feed)
    return previous


def restore_feed_threads(previous: int) -> None:
    import cv2

    cv2.setNumThreads(previous)
