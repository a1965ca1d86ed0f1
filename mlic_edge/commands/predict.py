"""`mlic-edge run` as a library: a model over a camera, stream, video, image, folder, glob or list.

``run_predict`` drives the threaded pipeline and hands each record to a callback (what the CLI writes to its sinks);
``predict`` is the same as a generator of records, for a notebook or a service.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from mlic_edge.console import warn
from mlic_edge.rundir import RunDir
from mlic_edge.spec import require_at_least, require_fraction

RecordCallback = Callable[[Any, dict[str, Any]], None]  # (frame, record)


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
    all_scores: bool = False  # every label's score in each record (a CSV needs them)
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
        require_fraction("--smoothing", self.smoothing, upper_open=True, hint="0 turns it off; 0.8 is a good start")
        require_at_least("--top-k", self.top_k, 0, hint="0 reports no best labels")
        require_at_least("--batch", self.batch, 1, hint="images per inference, for example 8")
        require_at_least("--threads", self.threads, 0, hint="pass 1 or more, 0 for the libraries' defaults, or leave "
                                                             "it out")
        require_at_least("--max-frames", self.max_frames, 1, hint="pass 1 or more")
        require_at_least("--max-reconnects", self.max_reconnects, 0, hint="0 never reconnects")
        require_at_least("--width", self.width, 1, hint="a capture width in pixels, for example 1280")
        require_at_least("--height", self.height, 1, hint="a capture height in pixels, for example 720")
        require_at_least("--fps", self.fps, 0, above=True, hint="a capture frame rate, for example 30")


def check_outputs(run: RunDir, source: str, request: PredictRequest, outputs: dict[str, Path | None]) -> None:
    """Refuse, before any work, an output (``{"--out": path, ...}``) onto what ``run`` reads (the source's files,
    the thresholds file) or into the run directory, or onto another output."""
    from mlic_edge.io import refuse_output_onto_inputs
    from mlic_edge.runtime.inference.sources import source_files

    refuse_output_onto_inputs(outputs, [*source_files(source), *filter(None, [request.thresholds]), run.path])


def run_predict(run: RunDir, source: str, request: PredictRequest = PredictRequest(), *,
                on_open: Callable[[Any, Any], RecordCallback | None] | None = None,
                stop: threading.Event | None = None, latency: Any = None,
                on_tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run the pipeline to the end of ``source`` (or ``stop``); returns the summary (latency per stage, backend,
    source, counts). ``on_open(source, backend)`` is called once both are open and returns the per-record
    callback."""
    from mlic_edge.runtime.inference.backends import create_backend
    from mlic_edge.runtime.inference.latency import LatencyRecorder
    from mlic_edge.runtime.inference.pipeline import run_pipeline
    from mlic_edge.runtime.inference.postprocess import Postprocessor, read_thresholds
    from mlic_edge.runtime.inference.sources import open_source
    from mlic_edge.spec import ModelSpec

    request.check()
    spec = ModelSpec.from_run(run.spec())
    limits = (read_thresholds(request.thresholds, spec.labels, default=request.threshold) if request.thresholds
              else request.threshold)
    latency = latency or LatencyRecorder()
    stop = stop or threading.Event()
    with open_source(source, width=request.width, height=request.height, fps=request.fps,
                     max_reconnects=request.max_reconnects) as frames, \
            create_backend(request.backend, run, request.precision, request.device,
                           cuda_graph=request.cuda_graph, threads=request.threads,
                           fp16_fallback=request.fp16_fallback) as engine:
        live_or_video = frames.live or frames.kind == "video"
        postprocess = Postprocessor(spec.labels, threshold=limits, top_k=request.top_k,
                                    smoothing=request.smoothing if live_or_video else 0.0,
                                    only_changes=request.only_changes, all_scores=request.all_scores)
        if request.smoothing and not live_or_video:
            warn("--smoothing applies to videos and live sources; images of a folder are not smoothed")
        on_record = on_open(frames, engine) if on_open is not None else None
        stats = run_pipeline(frames, engine, spec, postprocess=postprocess, on_record=on_record,
                             batch_size=request.batch, max_frames=request.max_frames, latency=latency, stop=stop,
                             on_tick=on_tick)
    if stats.unreadable:
        warn(f"{stats.unreadable} unreadable image(s) skipped: {', '.join(stats.unreadable_names)}")
    budget = engine.thread_budget
    return {**latency.summary(), "backend": engine.info.as_dict(),
            "threads": budget.as_dict() if budget is not None else None, "source": source, "kind": frames.kind,
            "records": stats.records, "unreadable": stats.unreadable, "stopped": stats.stopped,
            **dict(getattr(frames, "stats", {}))}


def describe_backend(summary: dict[str, Any]) -> str:
    """"onnxruntime 1.32.0 on cpu, fp32": what ran, from a summary of ``run_predict``."""
    from mlic_edge.runtime.inference.backends.base import BackendInfo

    return BackendInfo(**summary["backend"]).describe()


def predict(run: RunDir, source: str, request: PredictRequest = PredictRequest()) -> Iterator[dict[str, Any]]:
    """One record per image or frame, as the pipeline produces them (files in order, live sources newest first).
    Leaving the loop early stops the source; an error in the pipeline is raised here."""
    records: queue.Queue = queue.Queue(maxsize=64)
    stop = threading.Event()
    done = object()
    failure: list[BaseException] = []

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                records.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def work() -> None:
        try:
            run_predict(run, source, request, on_open=lambda frames, engine: lambda frame, record: put(record),
                        stop=stop)
        except BaseException as error:  # handed to the consumer
            failure.append(error)
        finally:
            records.put(done)

    worker = threading.Thread(target=work, name="mlic-edge-predict", daemon=True)
    worker.start()
    try:
        while (item := records.get()) is not done:
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue, then let it finish cleanly
            try:
                records.get(timeout=0.1)
            except queue.Empty:
                pass
        worker.join()
    if failure:
        raise failure[0]
