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
from mlic_edge.runtime.inference.streams import StreamOptions
from mlic_edge.spec import (DEFAULT_BACKEND, DEFAULT_DEVICE, DEFAULT_PRECISION, DEFAULT_THRESHOLD, require_at_least,
                            require_fraction, require_seconds)

ResultCallback = Callable[[Any, Any], None]  # (frame, Result)


@dataclass(frozen=True)
class PredictRequest:
    backend: str = DEFAULT_BACKEND
    precision: str = DEFAULT_PRECISION
    device: str = DEFAULT_DEVICE
    batch: int = StreamOptions.batch  # how a source is read: StreamOptions' fields, with its defaults
    batch_timeout_ms: float = StreamOptions.batch_timeout_ms
    threshold: float = DEFAULT_THRESHOLD
    thresholds: Path | None = None  # per-class thresholds file (JSON {label: t} or CSV label,threshold)
    top_k: int = 5
    smoothing: float = StreamOptions.smoothing
    only_changes: bool = StreamOptions.only_changes
    all_scores: bool = False  # every label's score in each record (`run --scores`; a CSV needs them)
    max_frames: int | None = StreamOptions.max_frames
    width: int | None = StreamOptions.width
    height: int | None = StreamOptions.height
    fps: float | None = StreamOptions.fps
    max_reconnects: int = StreamOptions.max_reconnects
    cuda_graph: bool = False
    threads: int | None = None  # inference threads; None: the thread budget's policy (runtime/inference/threads.py)
    fp16_fallback: bool = False  # fp16 on a CPU backend without fp16 arithmetic runs fp32 instead

    def check(self) -> None:
        require_fraction("--threshold", self.threshold)
        require_at_least("--top-k", self.top_k, 0, hint="0 reports no best labels")
        require_at_least("--threads", self.threads, 0, hint="pass 1 or more, 0 for the libraries' defaults, or leave "
                                                             "it out")
        self.stream_options().check()

    def stream_options(self) -> StreamOptions:
        """The fields that say how a source is read (``StreamOptions``)."""
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


Sources = Any  # SOURCE, a list of SOURCEs (NAME=SOURCE names one) or of StreamSpecs (runtime/inference/streams.py)


def check_outputs(run: RunDir, sources: Sources, request: PredictRequest, outputs: dict[str, Path | None]) -> None:
    """Refuse, before any work, an output (``{"--out": path, ...}``, a ``{stream}`` template expanded per stream)
    onto what ``run`` reads (the sources' files, the thresholds file) or into the run directory, or onto another
    output."""
    from mlic_edge.io import refuse_output_onto_inputs
    from mlic_edge.runtime.inference.sources import source_files
    from mlic_edge.runtime.inference.streams import STREAM_FIELD, as_streams, output_paths

    streams = as_streams(sources)
    expanded: dict[str, Path] = {}
    for option, given in outputs.items():
        for name, path in output_paths(given, [stream.name for stream in streams], option).items():
            expanded.setdefault(f"{option} ({name})" if STREAM_FIELD in str(given) else option, path)
    refuse_output_onto_inputs(expanded, [*[path for stream in streams for path in source_files(stream.source)],
                                         *filter(None, [request.thresholds]), run.path])


def run_predict(run: RunDir, sources: Sources, request: PredictRequest = PredictRequest(), *,
                on_open: Callable[[list[Any], Any], ResultCallback | None] | None = None,
                stop: threading.Event | None = None, latency: Any = None,
                on_tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run the pipeline to the end of ``sources`` (or ``stop``): one source, or several streams batched together;
    returns the summary (latency per stage, backend, sources, counts, per stream under ``streams``).
    ``on_open(opened, classifier)`` is called once the streams (``[(StreamSpec, Source)]``) and the classifier are
    open, and returns the per-result callback ``(frame, result)``; ``frame.stream`` indexes ``opened``."""
    from mlic_edge.runtime.inference.streams import as_streams, open_streams, with_unopened

    request.check()
    options = request.stream_options()
    streams = as_streams(sources)
    with open_streams(streams, width=options.width, height=options.height, fps=options.fps,
                      max_reconnects=options.max_reconnects) as (opened, failed), \
            load_classifier(run, request) as classifier:
        on_result = on_open(opened, classifier) if on_open is not None else None
        summary = classifier.run(opened, options, stop=stop, latency=latency, on_tick=on_tick,
                                 **({"on_result": on_result} if on_result is not None else {}))
    return with_unopened(summary, streams, failed)


def parse_sources(sources: list[str], sources_file: Path | None = None) -> list[Any]:
    """The streams of a run (``StreamSpec``s) from SOURCE arguments and a ``--sources`` file
    (runtime/inference/streams.py: NAME=SOURCE names one; repeated sources or names refused)."""
    from mlic_edge.runtime.inference.streams import parse_streams

    return parse_streams(sources, sources_file)


def summary_tables(summary: dict[str, Any]) -> list[Any]:
    """What ``run`` prints at the end: the latency per stage, and with several streams each stream's row."""
    from mlic_edge.runtime.inference.latency import latency_table, streams_table

    tables = [latency_table(summary, f"latency per frame ({describe_backend(summary)})")]
    return tables + ([streams_table(summary)] if len(summary.get("streams", [])) > 1 else [])


def predict_to_outputs(run: RunDir, sources: Sources, request: PredictRequest = PredictRequest(),
                       outputs: PredictOutputs = PredictOutputs(), *,
                       on_open: Callable[[list[Any], Any], None] | None = None, stop: threading.Event | None = None,
                       latency: Any = None, on_tick: Callable[[], None] | None = None,
                       stats_every: float | None = None, on_stats: Callable[[str], None] | None = None,
                       ) -> dict[str, Any]:
    """``run_predict`` writing every record to ``outputs`` (checked before any work: nothing onto an input, every
    path writable); with several streams a path holding ``{stream}`` is one file per stream, else one shared file
    whose records name their stream (a video needs the template). Each output is closed whole, also when stopped.
    ``on_open(opened, classifier)`` is told once both are open. A window's q or Esc sets ``stop``.
    ``stats_every``: hand ``on_stats`` a latency line every so many seconds (``run --stats-every``)."""
    from mlic_edge.io import write_json
    from mlic_edge.runtime.inference.latency import LatencyRecorder, PeriodicStats
    from mlic_edge.runtime.inference.sinks import check_writable
    from mlic_edge.runtime.inference.streams import as_streams, output_paths
    from mlic_edge.stops import signals_deferred

    request.check()
    if stats_every is not None:
        require_seconds("--stats-every", stats_every)
        latency = latency or LatencyRecorder()
        periodic, then = PeriodicStats(latency, stats_every, on_stats or (lambda line: None)), on_tick

        def on_tick() -> None:
            periodic.maybe_emit()
            if then is not None:
                then()
    streams = as_streams(sources)
    names = [stream.name for stream in streams]
    output_paths(outputs.save_video, names, "--save-video", one_file=False)  # a video mixing streams: refused now
    check_outputs(run, streams, request, outputs.files())
    for option, given in outputs.files().items():
        for path in set(output_paths(given, names, option).values()):
            check_writable(path)  # before any work: an unwritable output fails now, not after an hour of camera
    stop = stop or threading.Event()
    sinks = _StreamSinks(run.spec().labels, outputs, request.all_scores or outputs.csv is not None, stop)

    def open_sinks(opened: list[Any], classifier: Any) -> ResultCallback:
        if on_open is not None:
            on_open(opened, classifier)
        return sinks.open(opened)

    ok = False
    try:
        summary = run_predict(run, streams, request, on_open=open_sinks, stop=stop, latency=latency, on_tick=on_tick)
        ok = True
    finally:
        with signals_deferred():
            sinks.close(ok or stop.is_set())
    if outputs.stats_json:
        write_json(outputs.stats_json, summary)
    return summary


class _StreamSinks:
    """Where each stream's records go: its own files (``{stream}`` paths) or files it shares, stdout, a window."""

    def __init__(self, labels: list[str], outputs: PredictOutputs, with_scores: bool, stop: threading.Event) -> None:
        self.labels, self.outputs, self.with_scores, self.stop = labels, outputs, with_scores, stop
        self.opened: list[Any] = []  # every sink once, in opening order (closed in that order)
        self.per_stream: list[list[Any]] = []
        self.windows: list[Any] = []

    def open(self, opened: list[Any]) -> ResultCallback:
        from mlic_edge.runtime.inference.sinks import CsvSink, JsonlSink, VideoSink, WindowSink
        from mlic_edge.runtime.inference.streams import output_paths

        names = [stream.name for stream, _ in opened]
        several = len(opened) > 1
        shared: dict[Any, Any] = {}

        def once(key: Any, make: Callable[[], Any]) -> Any:
            if key not in shared:
                shared[key] = make()
                self.opened.append(shared[key])
            return shared[key]

        outs = output_paths(self.outputs.out, names, "--out")
        csvs = output_paths(self.outputs.csv, names, "--csv")
        videos = output_paths(self.outputs.save_video, names, "--save-video", one_file=False)
        for stream, source in opened:
            path = outs.get(stream.name)
            sinks = [once(("out", path), lambda: JsonlSink(path, append=self.outputs.append))]
            if stream.name in csvs:
                csv_path = csvs[stream.name]
                sinks.append(once(("csv", csv_path), lambda: CsvSink(csv_path, self.labels,
                                                                     append=self.outputs.append,
                                                                     with_stream=several)))
            if stream.name in videos:
                sinks.append(once(("video", videos[stream.name]),
                                  lambda: VideoSink(videos[stream.name], source.fps)))
            if self.outputs.show:
                title = f"mlic-edge: {stream.name if several else stream.source}"
                window = once(("window", title), lambda: WindowSink(title))
                self.windows.append(window)
                sinks.append(window)
            self.per_stream.append(sinks)
        return self.write

    def write(self, frame: Any, result: Any) -> None:
        record = result.to_dict(scores=self.with_scores)
        for sink in self.per_stream[frame.stream]:
            sink.write(frame, record)
        if any(window.stop_requested for window in self.windows):
            self.stop.set()

    def close(self, ok: bool) -> None:
        for sink in self.opened:
            sink.close(ok)


def require_streams_ok(summary: dict[str, Any]) -> None:
    """Refuse a run in which a stream ended in error or never opened (the others ran to their end): one line naming
    each, for the exit status."""
    from mlic_edge.errors import SourceError
    from mlic_edge.runtime.inference.streams import failed_streams

    failed = failed_streams(summary)
    if failed:
        raise SourceError(f"{len(failed)} of {len(summary['streams'])} streams ended in error: "
                          + "; ".join(f"{stream['name']}: {stream['error']}" for stream in failed),
                          hint="the other streams ran to their end and every output is complete; per-stream "
                               "figures are in --stats-json")


def describe_backend(summary: dict[str, Any]) -> str:
    """"onnxruntime 1.32.0 on cpu, fp32": what ran, from a summary of ``run_predict``."""
    from mlic_edge.runtime.inference.backends.base import BackendInfo

    return BackendInfo(**summary["backend"]).describe()


def predict(run: RunDir, sources: Sources, request: PredictRequest = PredictRequest()) -> Iterator[Any]:
    """One ``Result`` per image or frame, as the pipeline produces them (files in order, live sources newest
    first; several sources batched together, each result naming its ``stream``). Leaving the loop early stops the
    sources and closes the backend; an error in the pipeline is raised here."""
    request.check()
    with load_classifier(run, request) as classifier:
        yield from classifier.stream(sources, **vars(request.stream_options()))
