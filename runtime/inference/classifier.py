"""A model an application holds: the backend opened once, frames in, ``Result``s out (docs/design.md, "The
classifier"). ``mlic_edge.load()`` opens one; ``mlic-edge run``, ``Run.predict``, the demo and ``bench``'s pipeline
all classify through it, so there is one preprocessing and one postprocessing.

    import mlic_edge

    clf = mlic_edge.load("runs/baseline")           # a run, a bundle, or a model name (runs/NAME)
    result = clf(frame)                             # BGR uint8 HxWx3, OpenCV's convention (rgb=True for RGB)
    print(result.labels, result.timing)
    for result in clf.stream("clip.mp4"):           # anything `mlic-edge run` takes: camera0, rtsp://, a folder
        print(result.to_dict())

**Threads.** A classifier may be shared between threads: its backend runs one batch at a time under a lock
(TensorRT's execution contexts are not re-entrant), so calls from several threads are safe but take turns. For
inference in parallel, load one classifier per thread (each holds its own session or engine context).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mlic_edge.data.images import read_image, spec_input
from mlic_edge.errors import BackendError, MlicError
from mlic_edge.runtime.inference.backends.base import Backend, BackendInfo
from mlic_edge.runtime.inference.postprocess import Postprocessor, Result
from mlic_edge.runtime.inference.streams import StreamOptions
from mlic_edge.spec import DEFAULT_THRESHOLD, ModelSpec, refuse_unknown

DEFAULT_CHUNK = 16
"""Images per inference when ``predict`` gets a long list and the backend takes any batch (dynamic ONNX)."""


class Classifier:
    """A backend kept open with its model's preprocessing and decision rule (see the module docstring).

    ``threshold``: one value or one per label (``read_thresholds``); ``top_k``: how many best labels a result's
    ``top_k()`` and record list. The classifier owns ``backend`` and releases it in ``close`` (or the ``with``)."""

    def __init__(self, backend: Backend, spec: ModelSpec, *, threshold: float | np.ndarray = DEFAULT_THRESHOLD,
                 top_k: int = 5) -> None:
        self.backend = backend
        self.spec = spec
        self.names: tuple[str, ...] = tuple(spec.labels)
        self.top_k = top_k
        self.threshold = threshold
        self._decide = Postprocessor(spec.labels, threshold=threshold, top_k=top_k)  # stateless: shared safely
        self._lock = threading.Lock()
        self._closed = False

    @property
    def info(self) -> BackendInfo:
        """What runs: backend, device, precision, version."""
        return self.backend.info

    @property
    def batch_range(self) -> tuple[int, int | None]:
        """The batch sizes the backend takes (a TensorRT engine's profile); None: any."""
        return getattr(self.backend, "batch_range", (1, None))

    def __repr__(self) -> str:
        return f"Classifier({len(self.names)} labels, {self.info.describe()})"

    # --- frames an application already has -------------------------------------------------------------------------
    def __call__(self, images: Any, *, rgb: bool = False) -> Result | list[Result]:
        return self.predict(images, rgb=rgb)

    def predict(self, images: Any, *, rgb: bool = False) -> Result | list[Result]:
        """Classify ``images``: one frame (a BGR uint8 HxWx3 array; HxW grey and BGRA too), a batch (NxHxWx3 array
        or a list), a PIL image, an image path, or a list of any of these. One input gives one ``Result``, a batch or
        list a list. ``rgb``: the arrays are RGB (PIL images always are). Lists are decoded and inferred a chunk at a
        time, within the backend's batch range."""
        single, items = _inputs(images)
        low, high = self.batch_range
        chunk = high or max(low, DEFAULT_CHUNK)
        results: list[Result] = []
        for start in range(0, len(items), chunk):
            part = items[start:start + chunk]
            frames = [_frame(item, rgb) for item in part]
            started = time.perf_counter()
            tensor = self.prepare(frames)
            prepared = time.perf_counter()
            scores = self.infer(tensor)
            share = {"preprocess": (prepared - started) * 1e3 / len(part),
                     "inference": (time.perf_counter() - prepared) * 1e3 / len(part)}
            for offset, (item, item_scores) in enumerate(zip(part, scores)):
                path = isinstance(item, (str, Path))
                results.append(self._decide(item_scores, {"source": str(item) if path else None,
                                                          "index": start + offset, "timestamp": 0.0 if path else None,
                                                          "timing": share}))
        return results[0] if single else results

    # --- the stages the pipeline runs on its threads ---------------------------------------------------------------
    def prepare(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """BGR uint8 frames → the model's input batch, exactly as training evaluated (``spec_input``)."""
        return np.stack([spec_input(frame, self.spec) for frame in frames])

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, C) float32 scores for a prepared batch, run in pieces that fit the backend's batch range (a piece
        below its minimum is padded with its last image, whose extra scores are dropped)."""
        low, high = self.batch_range
        count = len(batch)
        pieces = []
        with self._lock:
            if self._closed:
                raise MlicError("this classifier is closed", hint="load it again: mlic_edge.load(RUN)")
            for start in range(0, count, high or max(count, 1)):
                piece = batch[start:start + high] if high else batch
                size = len(piece)
                if size < low:
                    piece = np.concatenate([piece, np.repeat(piece[-1:], low - size, axis=0)])
                pieces.append(np.asarray(self.backend.infer(piece), dtype=np.float32)[:size])
        scores = pieces[0] if len(pieces) == 1 else np.concatenate(pieces) if pieces else \
            np.zeros((0, len(self.names)), np.float32)
        if scores.shape != (count, len(self.names)):
            raise BackendError(f"{self.info.describe()} returned scores of shape {scores.shape} for {count} image(s) "
                               f"of a model with {len(self.names)} labels", hint="rebuild the graph or engine")
        return scores

    def postprocessor(self, smoothing: float = 0.0, only_changes: bool = False) -> Postprocessor:
        """A decision rule with state per stream (smoothing, only-changes), for one pass over a source."""
        return Postprocessor(self.names, threshold=self.threshold, top_k=self.top_k, smoothing=smoothing,
                             only_changes=only_changes)

    # --- sources: cameras, streams, videos, folders -------------------------------------------------------------------
    def stream(self, source: str | Sequence[str], **options: Any) -> "ResultStream":
        """Results for ``source`` (anything ``mlic-edge run`` takes; a list: several streams, ``NAME=SOURCE`` to name
        one, batched together), as the threaded pipeline produces them: files in order, read ahead; a live source's
        newest frame; with several streams each result's ``stream`` names its own. ``options``: ``StreamOptions``
        fields (batch, batch_timeout_ms, max_frames, smoothing, only_changes, width, height, fps, max_reconnects).
        Leaving the loop stops the sources; an error in the pipeline is raised in the loop; ``.summary`` holds the
        latency summary after (per stream in ``streams``)."""
        return ResultStream(self, source, make_options(StreamOptions, options))

    def run(self, sources: Any, options: StreamOptions = StreamOptions(), *,
            on_result: Callable[[Any, Result], None] = lambda frame, result: None,
            stop: threading.Event | None = None, latency: Any = None,
            on_tick: Callable[[], None] | None = None) -> dict[str, Any]:
        """The pipeline over an open ``Source``, or several ``(StreamSpec, Source)`` pairs (``open_streams``), to
        their end (or ``stop``), handing each ``(frame, result)`` to ``on_result``; returns the summary (latency per
        stage, what ran, counts; per stream under ``streams``, the batches' sizes under ``batch_fill``)."""
        from mlic_edge.console import warn
        from mlic_edge.runtime.inference.latency import LatencyRecorder
        from mlic_edge.runtime.inference.pipeline import Stream, run_pipeline

        options.check()
        pairs = list(sources) if isinstance(sources, (list, tuple)) else [(None, sources)]
        streams = [Stream(spec.name if spec is not None else str(getattr(source, "spec", "source")), source,
                          self._stream_rule(source, options)) for spec, source in pairs]
        latency = latency or LatencyRecorder()
        stats = run_pipeline(streams, self, on_result=on_result, batch_size=options.batch,
                             batch_timeout_s=options.batch_timeout_ms / 1e3, max_frames=options.max_frames,
                             latency=latency, stop=stop, on_tick=on_tick)
        if stats.unreadable:
            warn(f"{stats.unreadable} unreadable image(s) skipped: {', '.join(stats.unreadable_names)}")
        budget = self.backend.thread_budget
        opened = [source for _, source in pairs]
        counted = [dict(getattr(source, "stats", {})) for source in opened]
        summary = {**latency.summary(), "backend": self.info.as_dict(),
                   "threads": budget.as_dict() if budget is not None else None, "records": stats.records,
                   "unreadable": stats.unreadable, "stopped": stats.stopped,
                   "batch_fill": {str(size): count for size, count in sorted(stats.batch_fill.items())},
                   "streams": [stream.as_dict(counts) for stream, counts in zip(stats.streams, counted)]}
        if len(opened) == 1:
            return {**summary, "source": getattr(opened[0], "spec", None), "kind": opened[0].kind, **counted[0]}
        totals = {key: sum(counts.get(key, 0) for counts in counted) for key in counted[0]}
        return {**summary, "source": [getattr(source, "spec", None) for source in opened], "kind": "streams",
                **totals}

    def _stream_rule(self, source: Any, options: StreamOptions) -> Postprocessor:
        """A stream's own decision rule: smoothing for a video or live source only (frames that follow in time)."""
        from mlic_edge.console import warn

        in_time = source.live or source.kind == "video"
        if options.smoothing and not in_time:
            warn(f"--smoothing applies to videos and live sources; images of {getattr(source, 'spec', 'a folder')} "
                 "are not smoothed")
        return self.postprocessor(options.smoothing if in_time else 0.0, options.only_changes)

    # --- resources -----------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the backend (sessions, engines, GPU buffers); waits for a batch in flight. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self.backend.close()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ResultStream:
    """``Classifier.stream``'s results: iterate once; ``summary`` (latency per stage, counts) once it has ended."""

    def __init__(self, classifier: Classifier, source: str | Sequence[str], options: StreamOptions) -> None:
        options.check()
        self.classifier, self.source, self.options = classifier, source, options
        self.summary: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[Result]:
        from mlic_edge.runtime.inference.streams import as_streams, open_streams, with_unopened

        results: queue.Queue = queue.Queue(maxsize=64)
        stop = threading.Event()
        done = object()
        failure: list[BaseException] = []

        def put(item: Any) -> None:
            while not stop.is_set():
                try:
                    results.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def work() -> None:
            try:
                options = self.options
                specs = as_streams(self.source)
                with open_streams(specs, width=options.width, height=options.height, fps=options.fps,
                                  max_reconnects=options.max_reconnects) as (opened, failed):
                    summary = self.classifier.run(opened, options, on_result=lambda frame, result: put(result),
                                                  stop=stop)
                    self.summary = with_unopened(summary, specs, failed)
            except BaseException as error:  # handed to the consumer
                failure.append(error)
            finally:
                results.put(done)

        worker = threading.Thread(target=work, name="mlic-edge-stream", daemon=True)
        worker.start()
        try:
            while (item := results.get()) is not done:
                yield item
        finally:
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue, then let it finish cleanly
                try:
                    results.get(timeout=0.1)
                except queue.Empty:
                    pass
            worker.join()
        if failure:
            raise failure[0]


def make_options(kind: type, values: dict[str, Any]) -> Any:
    """``kind(**values)``, refusing unknown names in one line that lists the valid ones."""
    refuse_unknown(values, [item.name for item in fields(kind)], kind.__name__)
    return kind(**values)


# --- what predict accepts ------------------------------------------------------------------------------------------
_TAKES = "a BGR uint8 HxWx3 frame, an NxHxWx3 batch, a PIL image, an image path, or a list of these"


def _inputs(images: Any) -> tuple[bool, list[Any]]:
    """(single, items): a batch array or a list is split into its images; anything else is one image."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return False, list(images)
    if isinstance(images, (list, tuple)):
        return False, list(images)
    return True, [images]


def _frame(item: Any, rgb: bool) -> np.ndarray:
    """One input as a BGR uint8 HxWx3 frame, or a one-line refusal that names it (never prints an array)."""
    import cv2

    if isinstance(item, (str, Path)):
        path = Path(item)
        if path.is_dir() or "://" in str(item):
            raise MlicError(f"{item} is not an image file", hint="classify folders, videos, cameras and streams with "
                                                                  "clf.stream(source)")
        image = read_image(path)
        if image is None:
            raise MlicError(f"cannot read an image from {path}",
                            hint="check that it exists and is a JPEG, PNG, BMP, WebP or TIFF file")
        return image
    if _is_pil_image(item):
        return np.ascontiguousarray(np.asarray(item.convert("RGB"))[:, :, ::-1])
    if not isinstance(item, np.ndarray):
        raise MlicError(f"cannot classify a {type(item).__name__}", hint=f"pass {_TAKES}")
    if item.dtype != np.uint8:
        raise MlicError(f"an image of dtype {item.dtype} (shape {item.shape}): the classifier takes uint8 pixels",
                        hint="pass np.clip(image * 255, 0, 255).astype(np.uint8) for 0-1 floats")
    if item.ndim == 2:
        return cv2.cvtColor(item, cv2.COLOR_GRAY2BGR)
    if item.ndim != 3 or item.shape[2] not in (1, 3, 4) or min(item.shape[:2]) < 1:
        raise MlicError(f"an array of shape {item.shape} is not an image", hint=f"pass {_TAKES}")
    if item.shape[2] == 1:
        return cv2.cvtColor(item, cv2.COLOR_GRAY2BGR)
    if item.shape[2] == 4:
        return cv2.cvtColor(item, cv2.COLOR_RGBA2BGR if rgb else cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(item[:, :, ::-1]) if rgb else item


def _is_pil_image(item: Any) -> bool:
    return type(item).__module__.startswith("PIL.") and hasattr(item, "convert")


__all__ = ["Classifier", "Result", "ResultStream", "StreamOptions"]
