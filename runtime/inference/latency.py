"""Latency per stage, queue wait and capture to output (mean / p50 / p90 / p99), throughput and dropped frames, in
bounded memory.

What a latency means depends on the source. A live source (camera, stream) hands over the newest frame, so capture
to output is the latency a viewer sees. A file source is read as fast as the pipeline takes it: its frames wait in
the queues between stages by design (that wait buys throughput), so for files the figures are throughput, the
service time of each stage, and the queue wait in a column of its own; no "end to end" is reported for them.

Safe to feed from several threads. Counts and means are exact over the whole run; percentiles are over the last
``window`` samples of each stage, so a camera can run for days in constant memory.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from mlic_edge.errors import MlicError
from mlic_edge.spec import ModelSpec, require_seconds


class Infers(Protocol):
    """What ``interleaved_latency`` times: a backend's ``infer`` (backends import this module, not the reverse)."""

    def infer(self, batch: np.ndarray) -> np.ndarray: ...

STAGES = ("decode", "preprocess", "inference", "postprocess", "sink")
END_TO_END = "end_to_end"
"""From ``frame.captured`` (a ``time.perf_counter()`` value) to the record written: reported for live sources."""
QUEUE_WAIT = "queue_wait"
"""Of that time, what a frame spent waiting in queues between stages rather than being worked on."""
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
        self.live: bool | None = None
        """Set by the pipeline: whether the source is live (capture-to-output latency) or a file (throughput)."""
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
        if stage not in self.stages and stage not in (END_TO_END, QUEUE_WAIT):
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

    def add_end_to_end(self, captured: float, service_ms: float = 0.0) -> None:
        """A record was written for a frame captured at ``captured`` (same clock as this recorder) after
        ``service_ms`` of work on it since then; the rest of that time is its queue wait."""
        elapsed = (self._clock() - captured) * 1e3
        self.add(END_TO_END, elapsed)
        self.add(QUEUE_WAIT, max(0.0, elapsed - service_ms))

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
        measured = {name: _describe(*snapshots[name]) if name in snapshots else None
                    for name in (END_TO_END, QUEUE_WAIT)}
        wall = self.wall_seconds
        return {"frames": frames, "dropped": dropped, "wall_s": wall, "fps": frames / wall if wall > 0 else None,
                "latency": {True: "capture_to_output", False: "service_time"}.get(self.live, "stages"),
                "stages_ms": stages, "queue_wait_ms": measured[QUEUE_WAIT],
                "end_to_end_ms": measured[END_TO_END] if self.live is not False else None}


LATENCY_HEADINGS = {
    "capture_to_output": "live source: capture-to-output latency, and the service time of each stage",
    "service_time": "file source: throughput and the service time of each stage; queue wait is time frames spent "
                    "queued between stages (they are read ahead on purpose), not a latency a camera would see",
    "stages": "service time of each stage",
}


def interleaved_latency(backends: dict[str, Infers], spec: ModelSpec, batches: Sequence[int], rounds: int = 10,
                        warmup: int = 2) -> dict[str, dict[int, float]]:
    """Median ms of one ``infer`` per backend and batch, timed in turns (each round times every backend at every
    batch once), so a load that comes and goes on the machine falls on all of them alike and their ratios hold."""
    inputs = {batch: spec.random_batch(batch) for batch in batches}
    for backend in backends.values():
        for batch in batches:
            for _ in range(warmup):
                backend.infer(inputs[batch])
    samples: dict[str, dict[int, list[float]]] = {name: {batch: [] for batch in batches} for name in backends}
    for _ in range(rounds):
        for batch in batches:
            for name, backend in backends.items():
                started = time.perf_counter()
                backend.infer(inputs[batch])
                samples[name][batch].append((time.perf_counter() - started) * 1e3)
    return {name: {batch: float(np.median(times)) for batch, times in by_batch.items()}
            for name, by_batch in samples.items()}


def latency_table(summary: dict[str, Any], title: str):
    """A rich table: one row per stage, queue wait, then capture to output for a live source; frames, fps and
    dropped frames in the caption. The heading says which kind of figures these are."""
    from rich.table import Table

    heading = LATENCY_HEADINGS[summary.get("latency", "stages")]
    table = Table(title=f"{title}\n{heading}", title_justify="left")
    columns = (("mean ms", "mean_ms"), ("p50 ms", "p50_ms"), ("p90 ms", "p90_ms"), ("p99 ms", "p99_ms"))
    table.add_column("stage")
    for header, _ in columns:
        table.add_column(header, justify="right")
    stages = list(summary["stages_ms"].items())
    for number, (stage, row) in enumerate(stages, 1):
        table.add_row(stage, *(f"{row[key]:.2f}" for _, key in columns), end_section=number == len(stages))
    if summary.get("queue_wait_ms"):
        table.add_row("queue wait", *(f"{summary['queue_wait_ms'][key]:.2f}" for _, key in columns), style="dim")
    if summary.get("end_to_end_ms"):
        table.add_row("capture to output", *(f"{summary['end_to_end_ms'][key]:.2f}" for _, key in columns),
                      style="bold")
    fps = summary["fps"]
    threads = summary.get("threads")
    table.caption = (f"{summary['frames']} frames in {summary['wall_s']:.2f} s" + (f" = {fps:.1f} fps" if fps else "")
                     + f", {summary.get('dropped', 0)} dropped"
                     + (f"; {describe_threads(threads)}" if threads else ""))
    return table


def streams_table(summary: dict[str, Any]):
    """A rich table of a run's streams: frames, fps, dropped frames, reconnects, capture-to-output p50 (live) and
    how each ended; the caption gives the batches' sizes and the slowest and fastest stream's fps."""
    from rich.table import Table

    streams = summary.get("streams") or []
    table = Table(title="per stream", title_justify="left")
    for header in ("stream", "source", "frames", "fps", "dropped", "reconnects", "p50 ms", "ended"):
        table.add_column(header, justify="right" if header in ("frames", "fps", "dropped", "reconnects", "p50 ms")
                         else "left")
    for stream in streams:
        latency = stream.get("end_to_end_ms")
        table.add_row(stream["name"], str(stream["source"]), str(stream["frames"]),
                      f"{stream['fps']:.1f}" if stream.get("fps") else "-", str(stream.get("dropped", 0)),
                      str(stream.get("reconnects", 0)), f"{latency['p50_ms']:.1f}" if latency else "-",
                      stream["error"] or "normally", style="red" if stream.get("error") else None)
    fill = summary.get("batch_fill") or {}
    rates = [stream["fps"] for stream in streams if stream.get("fps")]
    table.caption = ("batches by size: " + (", ".join(f"{size}×{count}" for size, count in fill.items()) or "none")
                     + (f"; stream fps from {min(rates):.1f} to {max(rates):.1f}" if rates else ""))
    return table


def describe_threads(budget: dict[str, Any]) -> str:
    """'threads: 1 inference + 1 feed of 2 cores (policy)', from a ``ThreadBudget.as_dict()``."""
    cores = f"{budget['cores']} core{'s' if budget['cores'] != 1 else ''}"
    if not budget["inference"]:
        return f"threads: the libraries' defaults on {cores}"
    return f"threads: {budget['inference']} inference + {budget['feed']} feed of {cores} ({budget['chosen_by']})"


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
