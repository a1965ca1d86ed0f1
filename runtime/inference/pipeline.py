"""The run loop on threads around a ``Classifier``: capture → preprocess + batch → inference → postprocess + sinks.

Bounded queues join the stages, so decoding and preprocessing overlap inference. Files lose nothing and keep their
order; a live source (camera, stream) keeps only the newest frame: the latest frame wins and the stale ones are
counted as dropped. ``stop`` (Ctrl-C, SIGTERM, a window's q) ends the capture; what is already in flight is still
processed and written, so every output is complete when ``run_pipeline`` returns.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from mlic_edge.runtime.inference.latency import LatencyRecorder
from mlic_edge.runtime.inference.postprocess import Result
from mlic_edge.runtime.inference.sources import Frame, Source
from mlic_edge.runtime.inference.threads import apply_feed_threads, restore_feed_threads
from mlic_edge.stops import signals_deferred

if TYPE_CHECKING:  # the classifier runs this pipeline (Classifier.run): a type, not an import, the other way
    from mlic_edge.runtime.inference.classifier import Classifier

_END = object()  # end of the stream, passed down the stages
POLL_S = 0.05


@dataclass
class RunStats:
    frames: int = 0
    """Frames inferred (unreadable ones excluded)."""
    records: int = 0
    """Records written (fewer than frames with --only-changes)."""
    unreadable: int = 0
    unreadable_names: list[str] = field(default_factory=list)
    dropped: int = 0
    """Stale live frames replaced by a newer one before they were processed."""
    stopped: bool = False
    """Ended by a stop request (signal, window) rather than by the end of the source."""


class LatestFrame:
    """A one-frame slot for live sources: ``put`` replaces an unprocessed frame (counted as dropped). The end of the
    stream replaces nothing: the newest frame is still taken, then the end."""

    def __init__(self, on_drop: Callable[[], None] | None = None) -> None:
        self._condition = threading.Condition()
        self._item: Any = None
        self._full = False
        self._ended = False
        self.dropped = 0
        self._on_drop = on_drop

    def put(self, item: Any) -> None:
        with self._condition:
            if item is _END:
                self._ended = True
            else:
                if self._full:
                    self.dropped += 1
                    if self._on_drop:
                        self._on_drop()
                self._item, self._full = item, True
            self._condition.notify()

    def get(self, timeout: float) -> Any:
        with self._condition:
            if not (self._full or self._ended) and not self._condition.wait(timeout):
                raise queue.Empty
            if self._full:
                item, self._item, self._full = self._item, None, False
                return item
            if self._ended:
                return _END
            raise queue.Empty


class _Stages:
    """The four threads and what they share; the first error in any of them aborts all and is re-raised."""

    def __init__(self, source: Source, classifier: Classifier, batch_size: int, max_frames: int | None,
                 postprocess: Callable[[np.ndarray, dict[str, Any]], Result | None],
                 on_result: Callable[[Frame, Result], None], latency: LatencyRecorder,
                 stop: threading.Event, on_tick: Callable[[], None] | None) -> None:
        self.source, self.classifier = source, classifier
        self.live = source.live
        self.batch_size = 1 if self.live else batch_size
        self.max_frames, self.postprocess, self.on_result = max_frames, postprocess, on_result
        self.latency, self.stop, self.on_tick = latency, stop, on_tick
        self.abort = threading.Event()
        self.errors: list[BaseException] = []
        self.stats = RunStats()
        self.frames_in = (LatestFrame(on_drop=latency.count_dropped) if self.live
                          else queue.Queue(maxsize=4 * self.batch_size))
        self.batches: queue.Queue = queue.Queue(maxsize=2)
        self.results: queue.Queue = queue.Queue(maxsize=2)

    # Queue helpers that give up when another stage failed, so no thread waits forever on a dead neighbour.
    def _put(self, target: Any, item: Any) -> None:
        if isinstance(target, LatestFrame):
            target.put(item)
            return
        while not self.abort.is_set():
            try:
                target.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def _get(self, source: Any) -> Any:
        while not self.abort.is_set():
            try:
                return source.get(timeout=POLL_S)
            except queue.Empty:
                continue
        return _END

    def _guard(self, stage: Callable[[], None], ended: threading.Event) -> Callable[[], None]:
        def run() -> None:
            try:
                stage()
            except BaseException as error:  # re-raised by run_pipeline in the caller's thread
                self.errors.append(error)
                self.abort.set()
                self.stop_source()
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

    def stop_source(self) -> None:
        """Make a blocked live read return (sources without ``stop`` end by themselves)."""
        if hasattr(self.source, "stop"):
            self.source.stop()

    def capture(self) -> None:
        try:
            self._read(lambda frame: self._put(self.frames_in, frame))
        finally:
            self._put(self.frames_in, _END)

    def _read(self, deliver: Callable[[Frame], None]) -> None:
        """Decode the source's frames and hand each readable one to ``deliver`` (until its end, a stop or
        ``max_frames``)."""
        count = 0
        for frame in self.source:
            if self.stop.is_set() or self.abort.is_set():
                self.stats.stopped = self.stop.is_set()
                break
            self.latency.add("decode", frame.decode_ms)
            if frame.image is None:
                self.stats.unreadable += 1
                if len(self.stats.unreadable_names) < 3:
                    self.stats.unreadable_names.append(frame.source)
                continue
            deliver(frame)
            count += 1
            if self.max_frames is not None and count >= self.max_frames:
                break

    def prepare(self) -> None:
        ended = False
        while not ended:
            frames: list[Frame] = []
            while len(frames) < self.batch_size:
                item = self._get(self.frames_in)
                if item is _END:
                    ended = True
                    break
                frames.append(item)
            if frames:
                self._put(self.batches, (frames, self._preprocess(frames)))
        self._put(self.batches, _END)

    def infer(self) -> None:
        while (item := self._get(self.batches)) is not _END:
            frames, tensor = item
            self._put(self.results, (frames, self._infer(frames, tensor)))
        self._put(self.results, _END)

    def output(self) -> None:
        while (item := self._get(self.results)) is not _END:
            self._write(*item)

    def in_turn(self) -> None:
        """The four stages one after another on one thread, a batch at a time: for files on a CPU backend that
        holds every core, where overlapping decoding with inference only makes them fight for the cores."""
        pending: list[Frame] = []

        def deliver(frame: Frame) -> None:
            pending.append(frame)
            if len(pending) == self.batch_size:
                self._through(pending[:])
                pending.clear()

        self._read(deliver)
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
        return scores

    def _write(self, frames: list[Frame], scores: np.ndarray) -> None:
        for frame, frame_scores in zip(frames, scores):
            started = time.perf_counter()
            result = self.postprocess(frame_scores, {"source": frame.source, "index": frame.index,
                                                     "timestamp": round(frame.timestamp, 4),
                                                     "timing": {"decode": frame.decode_ms, **frame.timing}})
            self._served("postprocess", [frame], started)
            if result is not None:
                started = time.perf_counter()
                self.on_result(frame, result)
                self._served("sink", [frame], started)
                self.stats.records += 1
            captured = getattr(frame, "captured", None)
            if captured is not None:
                self.latency.add_end_to_end(captured, getattr(frame, "service_ms", 0.0))
            self.stats.frames += 1
            self.latency.count_frames()
        if self.on_tick:
            self.on_tick()


def run_pipeline(source: Source, classifier: Classifier, *,
                 postprocess: Callable[[np.ndarray, dict[str, Any]], Result | None] | None = None,
                 on_result: Callable[[Frame, Result], None] = lambda frame, result: None,
                 batch_size: int = 1, max_frames: int | None = None, latency: LatencyRecorder | None = None,
                 stop: threading.Event | None = None, on_tick: Callable[[], None] | None = None) -> RunStats:
    """Run ``classifier`` over ``source`` on four threads (or, where its backend's thread budget says overlap does
    not pay, a file's stages in turn on one): its ``prepare`` and ``infer`` on batches, then ``postprocess(scores,
    meta)`` (default: the classifier's stateless rule; ``classifier.postprocessor(...)`` for smoothing) makes each
    ``Result`` (or None to emit nothing) and ``on_result(frame, result)`` writes it. Returns when everything
    captured has been written."""
    latency = latency or LatencyRecorder()
    latency.live = source.live
    budget = getattr(classifier.backend, "thread_budget", None)
    opencv_threads = apply_feed_threads(budget) if budget is not None else None
    stages = _Stages(source, classifier, batch_size, max_frames, postprocess or classifier.postprocessor(),
                     on_result, latency, stop or threading.Event(), on_tick)
    overlap = source.live or budget is None or budget.overlap  # a live source needs its reader to keep the newest
    work = (stages.capture, stages.prepare, stages.infer, stages.output) if overlap else (stages.in_turn,)
    ended = [threading.Event() for _ in work]
    threads = [threading.Thread(target=stages._guard(stage, done), name=f"mlic-edge-{stage.__name__}", daemon=True)
               for stage, done in zip(work, ended)]
    latency.start()
    source_stopped = False
    try:
        with signals_deferred():  # a stop lands once every thread has started, so each is joined below
            for thread in threads:
                thread.start()
        for done in ended:
            # Short waits, so signal handlers run in this (the main) thread; on an Event, not Thread.join: a handler
            # raising inside join can mark a running thread as ended (CPython before 3.13), and it is not joined.
            while not done.wait(POLL_S):
                if stages.stop.is_set() and not source_stopped:
                    stages.stop_source()
                    source_stopped = True
    except BaseException:
        stages.abort.set()
        stages.stop_source()
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
    if isinstance(stages.frames_in, LatestFrame):
        stages.stats.dropped = stages.frames_in.dropped
    if stages.errors:
        raise stages.errors[0]
    stages.stats.stopped = stages.stats.stopped or (stop is not None and stop.is_set())
    return stages.stats
