"""`mlic-edge run` as a library: a model over a camera, stream, video, image, folder, glob or list.

``load_classifier`` opens the run's ``Classifier`` (runtime/inference/classifier.py), which everything here runs
through; ``run_predict`` drives the threaded pipeline over a source and hands each result to a callback,
``predict_to_outputs`` writes them to the outputs ``run`` offers (JSON lines, CSV, a labelled video, a window, the
stats), and ``predict`` yields them, for a notebook or a service.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator

from mlic_edge.rundir import RunDir
from mlic_edge.spec import require_at_least, require_fraction

ResultCallback = Callable[[Any, Any], None]  # (frame, Result)


@dataclass(frozen=True)
class PredictRequest:
    backend: str = "auto"
    precision: str = "fp32"
    device: str = "auto"
    batch: int = 1  # images per inference for files; live sources always use 1 (the newest frame)
    threshold: float = 0.5
    thresholds: Path | None = None  # per-class thresholds file (JSON {label: t} or CSV label,threshold)
    top_k: int = 5
    smoothing: float = 0.0  # EMA of scores across frames of a video or live source
    only_changes: bool = False
    all_scores: bool = False  # every label's score in each record (`run --scores`; a CSV needs them)
    max_frames: int | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    max_reconnects: int = 5
    cuda_graph: bool = False
    threads: int | None = None  # inference threads; None: the thread budget's policy (runtime/inference/threads.py)
    fp16_fallback: bool = False  # fp16 on a CPU backend without fp16 arithmetic runs fp32 instead

    def check(self) -> None:
        require_fraction("--threshold", self.threshold)
        require_at_least("--top-k", self.top_k, 0, hint="0 reports no best labels")
        require_at_least("--threads", self.threads, 0, hint="pass 1 or more, 0 for the libraries' defaults, or leave "
                                                             "it out")
        self.stream_options().check()

    def stream_options(self) -> Any:
        """The fields that say how a source is read (``StreamOptions``)."""
        from mlic_edge.runtime.inference.classifier import StreamOptions

        return StreamOptions(**{item.name: getattr(self, item.name) for item in fields(StreamOptions)})


LOAD_FIELDS = ("backend", "precision", "device", "threshold", "thresholds", "top_k", "cuda_graph", "threads",
               "fp16_fallback")
"""The request fields that open a classifier (``mlic_edge.load``); the others say how a source is read."""


@dataclass(frozen=True)
class PredictOutputs:
    """Where ``run`` writes: JSON lines (``out``; None: stdout), a CSV, a labelled video, the latency summary as
    JSON, a window; ``append`` adds to existing files instead of replacing them."""

    out: Path | None = None
    csv: Path | None = None
    save_video: Path | None = None
    stats_json: Path | None = None
    append: bool = False
    show: bool = False

    def files(self) -> dict[str, Path | None]:
        return {"--out": self.out, "--csv": self.csv, "--save-video": self.save_video,
                "--stats-json": self.stats_json}


def load_classifier(run: RunDir, request: PredictRequest = PredictRequest()) -> Any:
    """The run's ``Classifier`` on the request's backend, precision and device, with its thresholds and top-k:
    opened once, closed by the caller (``with``)."""
    from mlic_edge.runtime.inference.backends import create_backend
    from mlic_edge.runtime.inference.classifier import Classifier
    from mlic_edge.runtime.inference.postprocess import read_thresholds
    from mlic_edge.spec import ModelSpec

    request.check()
    spec = ModelSpec.from_run(run.spec())
    limits = (read_thresholds(request.thresholds, spec.labels, default=request.threshold) if request.thresholds
              else request.threshold)
    backend = create_backend(request.backend, run, request.precision, request.device, cuda_graph=request.cuda_graph,
                             threads=request.threads, fp16_fallback=request.fp16_fallback)
    try:
        return Classifier(backend, spec, threshold=limits, top_k=request.top_k)
    except BaseException:
        backend.close()
        raise


def check_outputs(run: RunDir, source: str, request: PredictRequest, outputs: dict[str, Path | None]) -> None:
    """Refuse, before any work, an output (``{"--out": path, ...}``) onto what ``run`` reads (the source's files,
    the thresholds file) or into the run directory, or onto another output."""
    from mlic_edge.io import refuse_output_onto_inputs
    from mlic_edge.runtime.inference.sources import source_files

    refuse_output_onto_inputs(outputs, [*source_files(source), *filter(None, [request.thresholds]), run.path])


def run_predict(run: RunDir, source: str, request: PredictRequest = PredictRequest(), *,
                on_open: Callable[[Any, Any], ResultCallback | None] | None = None,
                stop: threading.Event | None = None, latency: Any = None,
                on_tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run the pipeline to the end of ``source`` (or ``stop``); returns the summary (latency per stage, backend,
    source, counts). ``on_open(source, classifier)`` is called once both are open and returns the per-result
    callback ``(frame, result)``."""
    from mlic_edge.runtime.inference.sources import open_source

    request.check()
    options = request.stream_options()
    with open_source(source, width=options.width, height=options.height, fps=options.fps,
                     max_reconnects=options.max_reconnects) as frames, load_classifier(run, request) as classifier:
        on_result = on_open(frames, classifier) if on_open is not None else None
        summary = classifier.run(frames, options, stop=stop, latency=latency, on_tick=on_tick,
                                 **({"on_result": on_result} if on_result is not None else {}))
    return {**summary, "source": source}


def predict_to_outputs(run: RunDir, source: str, request: PredictRequest = PredictRequest(),
                       outputs: PredictOutputs = PredictOutputs(), *,
                       on_open: Callable[[Any, Any], None] | None = None, stop: threading.Event | None = None,
                       latency: Any = None, on_tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """``run_predict`` writing every record to ``outputs`` (checked before any work: nothing onto an input, every
    path writable); each output is closed whole, also when stopped. ``on_open(source, classifier)`` is told once
    both are open. A window's q or Esc sets ``stop``."""
    from mlic_edge.io import write_json
    from mlic_edge.runtime.inference.sinks import CsvSink, JsonlSink, VideoSink, WindowSink, check_writable
    from mlic_edge.stops import signals_deferred

    request.check()
    check_outputs(run, source, request, outputs.files())
    for path in outputs.files().values():
        if path is not None:
            check_writable(path)  # before any work: an unwritable output fails now, not after an hour of camera
    stop = stop or threading.Event()
    labels, sinks = run.spec().labels, []
    with_scores = request.all_scores or outputs.csv is not None

    def open_sinks(frames: Any, classifier: Any) -> ResultCallback:
        if on_open is not None:
            on_open(frames, classifier)
        sinks.append(JsonlSink(outputs.out, append=outputs.append))
        sinks.extend([CsvSink(outputs.csv, labels, append=outputs.append)] if outputs.csv else [])
        sinks.extend([VideoSink(outputs.save_video, frames.fps)] if outputs.save_video else [])
        window = WindowSink(f"mlic-edge: {source}") if outputs.show else None
        sinks.extend([window] if window else [])

        def write(frame: Any, result: Any) -> None:
            record = result.to_dict(scores=with_scores)
            for sink in sinks:
                sink.write(frame, record)
            if window is not None and window.stop_requested:
                stop.set()
        return write

    ok = False
    try:
        summary = run_predict(run, source, request, on_open=open_sinks, stop=stop, latency=latency, on_tick=on_tick)
        ok = True
    finally:
        with signals_deferred():
            for sink in sinks:
                sink.close(ok or stop.is_set())
    if outputs.stats_json:
        write_json(outputs.stats_json, summary)
    return summary


def describe_backend(summary: dict[str, Any]) -> str:
    """"onnxruntime 1.32.0 on cpu, fp32": what ran, from a summary of ``run_predict``."""
    from mlic_edge.runtime.inference.backends.base import BackendInfo

    return BackendInfo(**summary["backend"]).describe()


def predict(run: RunDir, source: str, request: PredictRequest = PredictRequest()) -> Iterator[Any]:
    """One ``Result`` per image or frame, as the pipeline produces them (files in order, live sources newest
    first). Leaving the loop early stops the source and closes the backend; an error in the pipeline is raised
    here."""
    request.check()
    with load_classifier(run, request) as classifier:
        yield from classifier.stream(source, **vars(request.stream_options()))
