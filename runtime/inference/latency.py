"""Latency per stage and end to end (mean / p50 / p90 / p99), throughput and dropped frames, in bounded memory.

Safe to feed from several threads. Counts and means are exact over the whole run; percentiles are over the last
``window`` samples of each stage, so a camera can run for days in constant memory.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

from mlic_edge.errors import MlicError
from mlic_edge.spec import require_seconds

STAGES = ("decode", "preprocess", "inference", "postprocess", "sink")
END_TO_END = "end_to_end"
"""From ``frame.captured`` (a ``time.perf_counter()`` value) to the record written."""
WINDOW = 10_000


class _Series:
    """Exact count and sum, plus a ring buffer of the latest samples for percentiles."""

    def __init__(self, window: int) -> None:
        self.recent = np.empty(window, dtype=np.float64)
        self.count = 0
        self.total = 0.0

    def add(self, value: float, times: int) -> None:
        window = len(self.recent)
        kept = min(times, window)
        positions = (self.count + times - kept + np.arange(kept)) % window
        self.recent[positions] = value
        self.count += times
        self.total += value * times

    def snapshot(self) -> tuple[int, float, np.ndarray]:
        return self.count, self.total, self.recent[:min(self.count, len(self.recent))].copy()


def _describe(count: int, total: float, recent: np.ndarray) -> dict[str, float | int]:
    p50, p90, p99 = np.percentile(recent, [50, 90, 99])
    return {"count": count, "mean_ms": total / count, "p50_ms": float(p50), "p90_ms": float(p90),
            "p99_ms": float(p99)}


class LatencyRecorder:
    def __init__(self, stages: tuple[str, ...] = STAGES, window: int = WINDOW,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.stages = tuple(stages)
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._series: dict[str, _Series] = {}
        self._frames = 0
        self._dropped = 0
        self._started: float | None = None
        self._stopped: float | None = None

    def start(self) -> None:
        self._started, self._stopped = self._clock(), None

    def stop(self) -> None:
        self._stopped = self._clock()

    def add(self, stage: str, milliseconds: float, frames: int = 1) -> None:
        """Record a stage time; a batch of ``frames`` is recorded as that many per-frame shares."""
        if stage not in self.stages and stage != END_TO_END:
            raise MlicError(f"unknown latency stage {stage!r}", hint=f"use one of {', '.join(self.stages)}")
        with self._lock:
            series = self._series.get(stage)
            if series is None:
                series = self._series[stage] = _Series(self.window)
            series.add(milliseconds / frames, frames)

    @contextmanager
    def measure(self, stage: str, frames: int = 1) -> Iterator[None]:
        started = self._clock()
        yield
        self.add(stage, (self._clock() - started) * 1e3, frames)

    def add_end_to_end(self, captured: float) -> None:
        """A record was written for a frame captured at ``captured`` (same clock as this recorder)."""
        self.add(END_TO_END, (self._clock() - captured) * 1e3)

    def count_frames(self, frames: int = 1) -> None:
        with self._lock:
            self._frames += frames

    def count_dropped(self, frames: int = 1) -> None:
        """Live sources' stale frames skipped to stay real time."""
        with self._lock:
            self._dropped += frames

    @property
    def frames(self) -> int:
        return self._frames

    @frames.setter
    def frames(self, value: int) -> None:
        with self._lock:
            self._frames = value

    @property
    def dropped(self) -> int:
        return self._dropped

    @dropped.setter
    def dropped(self, value: int) -> None:
        with self._lock:
            self._dropped = value

    @property
    def wall_seconds(self) -> float:
        if self._started is None:
            return 0.0
        return (self._stopped if self._stopped is not None else self._clock()) - self._started

    def summary(self) -> dict[str, Any]:
        with self._lock:
            snapshots = {stage: series.snapshot() for stage, series in self._series.items()}
            frames, dropped = self._frames, self._dropped
        stages = {stage: _describe(*snapshots[stage]) for stage in self.stages if stage in snapshots}
        end_to_end = _describe(*snapshots[END_TO_END]) if END_TO_END in snapshots else None
        wall = self.wall_seconds
        return {"frames": frames, "dropped": dropped, "wall_s": wall, "fps": frames / wall if wall > 0 else None,
                "stages_ms": stages, "end_to_end_ms": end_to_end}


def latency_table(summary: dict[str, Any], title: str):
    """A rich table: one row per stage, then end to end; frames, fps and dropped frames in the caption."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    columns = (("mean ms", "mean_ms"), ("p50 ms", "p50_ms"), ("p90 ms", "p90_ms"), ("p99 ms", "p99_ms"))
    table.add_column("stage")
    for header, _ in columns:
        table.add_column(header, justify="right")
    stages = list(summary["stages_ms"].items())
    for number, (stage, row) in enumerate(stages, 1):
        table.add_row(stage, *(f"{row[key]:.2f}" for _, key in columns), end_section=number == len(stages))
    if summary.get("end_to_end_ms"):
        table.add_row("end to end", *(f"{summary['end_to_end_ms'][key]:.2f}" for _, key in columns), style="bold")
    fps = summary["fps"]
    table.caption = (f"{summary['frames']} frames in {summary['wall_s']:.2f} s" + (f" = {fps:.1f} fps" if fps else "")
                     + f", {summary.get('dropped', 0)} dropped")
    return table


def stats_line(summary: dict[str, Any]) -> str:
    """One compact line for --stats-every: frames, fps, end-to-end p50/p99 (when measured), dropped."""
    parts = [f"{summary['frames']} frames"]
    if summary["fps"]:
        parts.append(f"{summary['fps']:.1f} fps")
    end_to_end = summary.get("end_to_end_ms")
    if end_to_end:
        parts.append(f"e2e p50 {end_to_end['p50_ms']:.1f} ms p99 {end_to_end['p99_ms']:.1f} ms")
    parts.append(f"dropped {summary.get('dropped', 0)}")
    return ", ".join(parts)


class PeriodicStats:
    """Emits ``stats_line`` every ``every_s`` seconds when polled (the pipeline's output thread calls
    ``maybe_emit`` after each record); a late poll emits once and keeps the cadence, it does not catch up."""

    def __init__(self, recorder: LatencyRecorder, every_s: float, emit: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        require_seconds("--stats-every", every_s, hint="for example --stats-every 5")
        self.recorder = recorder
        self.every_s = float(every_s)
        self.emit = emit
        self._clock = clock
        self._due = clock() + self.every_s

    def maybe_emit(self) -> None:
        now = self._clock()
        if now < self._due:
            return
        periods_passed = int((now - self._due) // self.every_s) + 1
        self._due += periods_passed * self.every_s
        self.emit(stats_line(self.recorder.summary()))
