"""Per-stage latency (decode, preprocess, inference, postprocess): mean / p50 / p95 and throughput."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np

STAGES = ("decode", "preprocess", "inference", "postprocess")


class LatencyRecorder:
    def __init__(self, stages: tuple[str, ...] = STAGES) -> None:
        self.samples: dict[str, list[float]] = {stage: [] for stage in stages}
        self.frames = 0
        self._started: float | None = None
        self._stopped: float | None = None

    def start(self) -> None:
        self._started = time.perf_counter()

    def stop(self) -> None:
        self._stopped = time.perf_counter()

    def add(self, stage: str, milliseconds: float, frames: int = 1) -> None:
        """Record a stage time; a batch of ``frames`` is recorded as that many per-frame shares."""
        self.samples[stage].extend([milliseconds / frames] * frames)

    @contextmanager
    def measure(self, stage: str, frames: int = 1) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.add(stage, (time.perf_counter() - started) * 1e3, frames)

    @property
    def wall_seconds(self) -> float:
        if self._started is None:
            return 0.0
        return (self._stopped or time.perf_counter()) - self._started

    def summary(self) -> dict:
        stages = {}
        for stage, values in self.samples.items():
            if values:
                array = np.asarray(values)
                stages[stage] = {"mean_ms": float(array.mean()), "p50_ms": float(np.percentile(array, 50)),
                                 "p95_ms": float(np.percentile(array, 95))}
        wall = self.wall_seconds
        return {"frames": self.frames, "wall_s": wall, "fps": self.frames / wall if wall > 0 else None,
                "stages_ms": stages}


def latency_table(summary: dict, title: str):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("stage", "mean ms", "p50 ms", "p95 ms"):
        table.add_column(column, justify="right" if column != "stage" else "left")
    for stage, row in summary["stages_ms"].items():
        table.add_row(stage, f"{row['mean_ms']:.2f}", f"{row['p50_ms']:.2f}", f"{row['p95_ms']:.2f}")
    fps = summary["fps"]
    table.caption = f"{summary['frames']} frames in {summary['wall_s']:.2f} s" + (f" = {fps:.1f} fps" if fps else "")
    return table
