"""The run loop on threads around a ``Classifier``: capture (one thread per stream) → batch + preprocess → inference
→ postprocess + sinks.

Bounded queues join the stages, so decoding and preprocessing overlap inference. A file stream loses nothing and keeps
its order, read ahead; a live stream (camera, network stream) keeps only its newest frame: the latest frame wins and
the stale ones are counted as dropped. With several streams one batcher forms each batch from the streams that have a
frame, in turns (a live stream gives at most one frame per batch), up to the batch size, waiting at most
``batch_timeout_s`` after the first frame for the others (DeepStream's ``batched-push-timeout``; 0: no wait, batches
fill from what queued while inference was busy). Every stream's frames stay in order. A stream that fails (lost after
its reconnects, an error reading it) ends alone and the others go on; with one stream, its error is the run's.
``stop`` (Ctrl-C, SIGTERM, a window's q) ends the capture; what is already in flight is still processed and written,
so every output is complete when ``run_pipeline`` returns.
"""

from __future__ import annotations

import collections
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from mlic_edge.console import warn
from mlic_edge.runtime.inference.latency import LatencyRecorder
from mlic_edge.runtime.inference.postprocess import Result
from mlic_edge.runtime.inference.sources import Frame, Source
from mlic_edge.runtime.inference.threads import apply_feed_threads, restore_feed_threads
from mlic_edge.stops import signals_deferred

if TYPE_CHECKING:  # the classifier runs this pipeline (Classifier.run): a type, not an import, the other way
    from mlic_edge.runtime.inference.classifier import Classifier

_END = object()  # end of the stream, passed down the stages
POLL_S = 0.05
READ_AHEAD_BATCHES = 4  # frames a file stream reads ahead: this many batches, shared out among the streams


@dataclass
class StreamStats:
    """One stream's share of a run."""

    name: str
    source: str
    kind: str
    live: bool
    frames: int = 0
    """Frames inferred (unreadable ones excluded)."""
    records: int = 0
    unreadable: int = 0
    unreadable_names: list[str] = field(default_factory=list)
    dropped: int = 0
    """Stale live frames replaced by a newer one before they were processed."""
    error: str | None = None
    """Why the stream ended early (lost after its reconnects, a read error), None where it ended normally."""
    latency: LatencyRecorder = field(default_factory=lambda: LatencyRecorder(stages=()))
    """This stream's frames and capture-to-output latency (its fps: frames over the run's time)."""

    def as_dict(self, source_stats: dict[str, Any] | None = None) -> dict[str, Any]:
        summary = self.latency.summary()
        return {"name": self.name, "source": self.source, "kind": self.kind, "frames": self.frames,
                "records": self.records, "fps": summary["fps"], "dropped": self.dropped,
                "unreadable": self.unreadable, **dict(source_stats or {}), "error": self.error,
                "end_to_end_ms": summary["end_to_end_ms"] if self.live else None}


@dataclass
class RunStats:
    frames: int = 0
    """Frames inferred (unreadable ones excluded), all streams together."""
    records: int = 0
    """Records written (fewer than frames with --only-changes)."""
    unreadable: int = 0
    unreadable_names: list[str] = field(default_factory=list)
    dropped: int = 0
    """Stale live frames replaced by a newer one before they were processed."""
    stopped: bool = False
    """Ended by a stop request (signal, window) rather than by the end of the sources."""
    streams: list[StreamStats] = field(default_factory=list)
    batch_fill: dict[int, int] = field(default_factory=dict)
    """How many batches had each size (the batcher's fill, all streams together)."""


@dataclass
class Stream:
    """One source of a run: its name (records carry it where a run has several), the open source, and its decision
    rule (``postprocess(scores, meta)``; smoothing and only-changes keep state per stream)."""

    name: str
    source: Source
    postprocess: Callable[[np.ndarray, dict[str, Any]], Result | None] | None = None


class _Slot:
    """A stream's frames between its capture thread and the batcher: the newest only (live; a replaced frame is
    dropped) or up to ``capacity`` in order (files). Every slot of a run shares one condition, so the batcher wakes
    when any stream has a frame."""

    def __init__(self, live: bool, capacity: int, condition: threading.Condition,
                 on_drop: Callable[[], None]) -> None:
        self.live, self.capacity, self.condition, self.on_drop = live, capacity, condition, on_drop
        self.frames: collections.deque[Frame] = collections.deque()
        self.ended = False
        self.dropped = 0

    def put(self, frame: Frame, abort: threading.Event) -> None:
        with self.condition:
            if self.live and self.frames:
                self.frames.popleft()
                self.dropped += 1
                self.on_drop()
            while not self.live and len(self.frames) >= self.capacity and not abort.is_set():
                self.condition.wait(POLL_S)
            self.frames.append(frame)
            self.condition.notify_all()

    def end(self) -> None:
        with self.condition:
            self.ended = True
            self.condition.notify_all()

    @property
    def finished(self) -> bool:
        return self.ended and not self.frames


class _Stages:
    """The threads and what they share; the first error in a shared stage (batching, inference, output) aborts all
    and is re-raised, a stream's own error ends that stream (or, with one stream, the run)."""

    def __init__(self, streams: Sequence[Stream], classifier: Classifier, batch_size: int,
                 batch_timeout_s: float, max_frames: int | None,
                 on_result: Callable[[Frame, Result], None], latency: LatencyRecorder,
                 stop: threading.Event, on_tick: Callable[[], None] | None) -> None:
        self.streams, self.classifier = list(streams), classifier
        self.batch_size, self.batch_timeout_s = batch_size, batch_timeout_s
        self.max_frames, self.on_result = max_frames, on_result
        self.latency, self.stop, self.on_tick = latency, stop, on_tick
        self.named = len(self.streams) > 1  # records carry the stream's name where a run has several
        self.abort = threading.Event()
        self.errors: list[BaseException] = []
        self.stats = RunStats(streams=[StreamStats(stream.name, str(getattr(stream.source, "spec", stream.name)),
                                                   getattr(stream.source, "kind", "source"),
                                                   bool(stream.source.live)) for stream in self.streams])
        arrivals = threading.Condition()
        capacity = max(2, math.ceil(READ_AHEAD_BATCHES * batch_size / len(self.streams)))
        self.slots = [_Slot(bool(stream.source.live), capacity, arrivals, latency.count_dropped)
                      for stream in self.streams]
        self.arrivals = arrivals
        self._turn = 0  # the stream a batch starts with, rotated so none is always last
        self.batches: queue.Queue = queue.Queue(maxsize=2)
        self.results: queue.Queue = queue.Queue(maxsize=2)

    # Queue helpers that give up when another stage failed, so no thread waits forever on a dead neighbour.
    def _put(self, target: queue.Queue, item: Any) -> None:
        while not self.abort.is_set():
            try:
                target.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def _get(self, source: queue.Queue) -> Any:
        while not self.abort.is_set():
            try:
                return source.get(timeout=POLL_S)
            except queue.Empty:
                continue
        return _END

    def guard(self, stage: Callable[[], None], ended: threading.Event) -> Callable[[], None]:
        def run() -> None:
            try:
                stage()
            except BaseException as error:  # re-raised by run_pipeline in the caller's thread
                self.errors.append(error)
                self.abort.set()
                self.stop_sources()
            finally:
                ended.set()
        return run

    def _served(self, stage: str, frames: list[Frame], started: float) -> None:
        """``stage`` worked on ``frames`` since ``started``: recorded per frame, and added to each frame's service
        time (a batch's time shared out), so what is left of its time in the pipeline is queue wait."""
        elapsed_ms = (time.perf_counter() - started) * 1e3
        self.latency.add(stage, elapsed_ms, len(frames))
        for frame in frames:
            frame.service_ms += elapsed_ms / len(frames)
            frame.timing[stage] = frame.timing.get(stage, 0.0) + elapsed_ms / len(frames)

    def stop_sources(self) -> None:
        """Make blocked live reads return (sources without ``stop`` end by themselves)."""
        for stream in self.streams:
            if hasattr(stream.source, "stop"):
                stream.source.stop()

    # --- capture: one thread per stream ----------------------------------------------------------------------------
    def capture(self, number: int) -> Callable[[], None]:
        def read_stream() -> None:
            slot = self.slots[number]
            try:
                for frame in self._frames(number):
                    slot.put(frame, self.abort)
            except Exception as error:
                self._stream_failed(number, error)
            finally:
                slot.end()
        read_stream.__name__ = f"capture-{self.streams[number].name}" if self.named else "capture"
        return read_stream

    def _stream_failed(self, number: int, error: Exception) -> None:
        """A stream's read failed: with one stream the run fails; with several, that stream ends and says why."""
        if not self.named:
            raise error
        stats = self.stats.streams[number]
        stats.error = getattr(error, "message", None) or str(error) or type(error).__name__
        warn(f"stream {stats.name} ended: {stats.error}; the other streams go on")

    def _frames(self, number: int) -> Iterator[Frame]:
        """The readable frames of stream ``number``, each marked with its stream (until its end, a stop or
        ``max_frames``); unreadable ones are counted."""
        stream, stats = self.streams[number], self.stats.streams[number]
        count = 0
        for frame in stream.source:
            if self.stop.is_set() or self.abort.is_set():
                self.stats.stopped = self.stop.is_set()
                break
            self.latency.add("decode", frame.decode_ms)
            if frame.image is None:
                stats.unreadable += 1
                if len(stats.unreadable_names) < 3:
                    stats.unreadable_names.append(frame.source)
                continue
            frame.stream = number
            yield frame
            count += 1
            if self.max_frames is not None and count >= self.max_frames:
                break

    # --- batching, inference, output ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        while (frames := self._gather()) is not None:
            self._put(self.batches, (frames, self._preprocess(frames)))
        self._put(self.batches, _END)

    def _gather(self) -> list[Frame] | None:
        """The next batch: once any stream has a frame, frames taken from the streams in turns (a live stream's
        newest one, a file stream's in order) until the batch is full or nothing more will come for it: file streams
        fill it to their end (they lose nothing and are read ahead), live streams that have not given a frame are
        waited for ``batch_timeout_s`` after the first. None once every stream has ended."""
        with self.arrivals:
            while not any(slot.frames for slot in self.slots):
                if self.abort.is_set() or all(slot.finished for slot in self.slots):
                    return None
                self.arrivals.wait(POLL_S)
            deadline = time.perf_counter() + self.batch_timeout_s
            frames: list[Frame] = []
            gave: set[int] = set()
            while len(frames) < self.batch_size and not self.abort.is_set():
                if self._take_round(frames, gave):
                    continue
                files_coming = any(not slot.live and not slot.finished for slot in self.slots)
                live_coming = any(slot.live and number not in gave and not slot.finished
                                  for number, slot in enumerate(self.slots))
                left = deadline - time.perf_counter()
                if not files_coming and not (live_coming and left > 0):
                    break
                self.arrivals.wait(POLL_S if files_coming else min(left, POLL_S))
            self._turn = (self._turn + 1) % len(self.slots)
            self.arrivals.notify_all()  # room for the file streams' readers
        return frames

    def _take_round(self, frames: list[Frame], gave: set[int]) -> bool:
        """One frame from each stream that has one, starting with this batch's first stream; a live stream gives
        one frame per batch at most. Whether any was taken."""
        took = False
        for offset in range(len(self.slots)):
            number = (self._turn + offset) % len(self.slots)
            slot = self.slots[number]
            if len(frames) >= self.batch_size or not slot.frames or (slot.live and number in gave):
                continue
            frames.append(slot.frames.popleft())
            gave.add(number)
            took = True
        return took

    def infer(self) -> None:
        while (item := self._get(self.batches)) is not _END:
            frames, tensor = item
            self._put(self.results, (frames, self._infer(frames, tensor)))
        self._put(self.results, _END)

    def output(self) -> None:
        while (item := self._get(self.results)) is not _END:
            self._write(*item)

    def in_turn(self) -> None:
        """Every stage on one thread, a batch at a time, the streams read in turns: for files on a CPU backend that
        holds every core, where overlapping decoding with inference only makes them fight for the cores."""
        readers = {number: self._frames(number) for number in range(len(self.streams))}
        pending: list[Frame] = []
        while readers:
            for number, reader in list(readers.items()):
                try:
                    pending.append(next(reader))
                except StopIteration:
                    del readers[number]
                except Exception as error:
                    del readers[number]
                    self._stream_failed(number, error)
                if len(pending) == self.batch_size:
                    self._through(pending)
                    pending = []
        if pending:
            self._through(pending)

    def _through(self, frames: list[Frame]) -> None:
        self._write(frames, self._infer(frames, self._preprocess(frames)))

    def _preprocess(self, frames: list[Frame]) -> np.ndarray:
        started = time.perf_counter()
        tensor = self.classifier.prepare([frame.image for frame in frames])
        self._served("preprocess", frames, started)
        return tensor

    def _infer(self, frames: list[Frame], tensor: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        scores = self.classifier.infer(tensor)
        self._served("inference", frames, started)
        self.stats.batch_fill[len(frames)] = self.stats.batch_fill.get(len(frames), 0) + 1
        return scores

    def _write(self, frames: list[Frame], scores: np.ndarray) -> None:
        for frame, frame_scores in zip(frames, scores):
            stream, stats = self.streams[frame.stream], self.stats.streams[frame.stream]
            started = time.perf_counter()
            meta = {"source": frame.source, "index": frame.index, "timestamp": round(frame.timestamp, 4),
                    "timing": {"decode": frame.decode_ms, **frame.timing}}
            result = stream.postprocess(frame_scores, {**meta, "stream": stream.name} if self.named else meta)
            self._served("postprocess", [frame], started)
            if result is not None:
                started = time.perf_counter()
                self.on_result(frame, result)
                self._served("sink", [frame], started)
                self.stats.records += 1
                stats.records += 1
            captured = getattr(frame, "captured", None)
            if captured is not None:
                self.latency.add_end_to_end(captured, getattr(frame, "service_ms", 0.0))
                stats.latency.add_end_to_end(captured, getattr(frame, "service_ms", 0.0))
            self.stats.frames += 1
            stats.frames += 1
            stats.latency.count_frames()
            stats.latency.stop()  # the stream's time runs to its latest frame written (its fps)
            self.latency.count_frames()
        if self.on_tick:
            self.on_tick()

    def finish(self, stop: threading.Event | None) -> RunStats:
        """The run's stats once every thread has ended: each stream's, and all streams' together."""
        stats = self.stats
        for stream_stats, slot in zip(stats.streams, self.slots):
            stream_stats.dropped = slot.dropped
            if not stream_stats.frames:
                stream_stats.latency.stop()
        stats.dropped = sum(stream.dropped for stream in stats.streams)
        stats.unreadable = sum(stream.unreadable for stream in stats.streams)
        stats.unreadable_names = [name for stream in stats.streams for name in stream.unreadable_names][:3]
        stats.stopped = stats.stopped or (stop is not None and stop.is_set())
        return stats


def run_pipeline(sources: Source | Sequence[Stream], classifier: Classifier, *,
                 postprocess: Callable[[np.ndarray, dict[str, Any]], Result | None] | None = None,
                 on_result: Callable[[Frame, Result], None] = lambda frame, result: None,
                 batch_size: int = 1, batch_timeout_s: float = 0.0, max_frames: int | None = None,
                 latency: LatencyRecorder | None = None, stop: threading.Event | None = None,
                 on_tick: Callable[[], None] | None = None) -> RunStats:
    """Run ``classifier`` over one source or several ``Stream``s, on threads (or, where its backend's thread budget
    says overlap does not pay, the file streams' stages in turn on one): its ``prepare`` and ``infer`` on batches of
    up to ``batch_size`` frames (within the backend's batch range), then each stream's ``postprocess(scores, meta)``
    (default, and for a bare source: ``postprocess``, else the classifier's stateless rule) makes each ``Result`` (or
    None to emit nothing) and ``on_result(frame, result)`` writes it (``frame.stream``: the stream's number).
    ``max_frames`` counts per stream. Returns when everything captured has been written."""
    default_rule = postprocess or classifier.postprocessor()
    streams = ([Stream(str(getattr(sources, "spec", "source")), sources)] if not isinstance(sources, Sequence)
               else list(sources))
    if not streams:
        raise ValueError("run_pipeline needs at least one source")
    streams = [stream if stream.postprocess is not None else Stream(stream.name, stream.source, default_rule)
               for stream in streams]
    live = any(stream.source.live for stream in streams)
    latency = latency or LatencyRecorder()
    latency.live = live
    budget = getattr(classifier.backend, "thread_budget", None)
    opencv_threads = apply_feed_threads(budget) if budget is not None else None
    stages = _Stages(streams, classifier, _batch_size(classifier, batch_size, len(streams)), batch_timeout_s,
                     max_frames, on_result, latency, stop or threading.Event(), on_tick)
    overlap = live or budget is None or budget.overlap  # a live source needs its reader to keep the newest
    work = ([stages.capture(number) for number in range(len(streams))] + [stages.prepare, stages.infer,
                                                                           stages.output]
            if overlap else [stages.in_turn])
    ended = [threading.Event() for _ in work]
    threads = [threading.Thread(target=stages.guard(stage, done), name=f"mlic-edge-{stage.__name__}", daemon=True)
               for stage, done in zip(work, ended)]
    latency.start()
    for stream_stats in stages.stats.streams:
        stream_stats.latency.start()
    sources_stopped = False
    try:
        with signals_deferred():  # a stop lands once every thread has started, so each is joined below
            for thread in threads:
                thread.start()
        for done in ended:
            # Short waits, so signal handlers run in this (the main) thread; on an Event, not Thread.join: a handler
            # raising inside join can mark a running thread as ended (CPython before 3.13), and it is not joined.
            while not done.wait(POLL_S):
                if stages.stop.is_set() and not sources_stopped:
                    stages.stop_sources()
                    sources_stopped = True
    except BaseException:
        stages.abort.set()
        stages.stop_sources()
        raise
    finally:
        # Every stage is joined, however long its step (one batch's inference) takes: a thread left in native code
        # would have its backend closed under it, or the process exit around it ("terminate called without an
        # active exception"). A signal meanwhile waits: the stop it asks for is already under way.
        with signals_deferred():
            for thread in threads:
                if thread.ident is not None:
                    thread.join()
        latency.stop()
        if opencv_threads is not None:
            restore_feed_threads(opencv_threads)
    if stages.errors:
        raise stages.errors[0]
    return stages.finish(stop)


def _batch_size(classifier: Classifier, requested: int, streams: int) -> int:
    """Frames per batch: ``requested``, and at least one per stream, within the backend's largest batch."""
    high = classifier.batch_range[1]
    size = max(requested, streams)
    return min(size, high) if high else size
