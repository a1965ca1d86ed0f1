"""``mlic-edge bench``: the backend alone (like trtexec), the whole pipeline and the loop a user would write without
it, on a generated video, measured in interleaved rounds.

The ratio pipeline / backend-alone throughput at the same batch says how much of the engine's speed survives
decoding, preprocessing and output; pipeline / naive loop says what the threads and the thread budget buy. Each
round runs all three once, so a load that comes and goes on the machine falls on all of them alike; the report
gives the median and spread of each over the rounds, the ratios of the medians, and every round.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from mlic_edge.errors import MlicError
from mlic_edge.runtime.inference.backends.base import Backend
from mlic_edge.runtime.inference.classifier import Classifier
from mlic_edge.runtime.inference.latency import LatencyRecorder, describe_threads
from mlic_edge.runtime.inference.pipeline import run_pipeline
from mlic_edge.spec import ModelSpec
from mlic_edge.runtime.inference.sources import open_source

VIDEO_SIZE = (640, 480)  # a typical camera frame: decoding and resizing it is part of the real cost


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    values = np.asarray(samples_ms, dtype=np.float64)
    return {"mean_ms": float(values.mean()), "p50_ms": float(np.percentile(values, 50)),
            "p90_ms": float(np.percentile(values, 90)), "p99_ms": float(np.percentile(values, 99))}


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and the relative spread (max - min) / median of one measurement's rounds."""
    array = np.asarray(values, dtype=np.float64)
    median = float(np.median(array))
    return {"median": median, "min": float(array.min()), "max": float(array.max()),
            "relative_spread": float((array.max() - array.min()) / median) if median else 0.0}


def bench_backend(backend: Backend, spec: ModelSpec, batch: int, iterations: int, warmup: int) -> dict[str, Any]:
    """``infer`` on a fixed random batch, after warm-up: latency per batch, images/s, and the backend's own
    timings (TensorRT: host→device, GPU compute, device→host from CUDA events) where it measures them."""
    images = spec.random_batch(batch)
    for _ in range(warmup):
        backend.infer(images)
    wall, device_timings = [], []
    for _ in range(iterations):
        started = time.perf_counter()
        backend.infer(images)
        wall.append((time.perf_counter() - started) * 1e3)
        timings = getattr(backend, "last_timings", None)
        if timings:
            device_timings.append(dict(timings))
    result = {"batch": batch, "iterations": iterations, "latency": percentiles(wall),
              "images_per_s": batch * iterations / (sum(wall) / 1e3)}
    if device_timings:
        result["device_ms"] = {key: float(np.mean([t[key] for t in device_timings])) for key in device_timings[0]}
    return result


def make_video(path: Path, frames: int, fps: float = 30.0, size: tuple[int, int] = VIDEO_SIZE) -> Path:
    """A clip of moving shapes on a changing background (content does not matter, decoding cost does)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise MlicError(f"cannot write a test video to {path}", hint="check the temporary folder")
    rng = np.random.default_rng(0)
    width, height = size
    for index in range(frames):
        image = np.full((height, width, 3), (index * 3) % 255, np.uint8)
        for _ in range(4):
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.circle(image, centre, int(rng.integers(10, 80)), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
        writer.write(image)
    writer.release()
    return path


def bench_pipeline(classifier: Classifier, video: Path, batch: int) -> dict[str, Any]:
    """The whole pipeline over ``video`` (decode, preprocess, batch, infer, postprocess; no output written)."""
    latency = LatencyRecorder()
    with open_source(str(video)) as source:
        stats = run_pipeline(source, classifier, batch_size=batch, latency=latency)
    summary = latency.summary()
    return {"batch": batch, "frames": stats.frames, "wall_s": summary["wall_s"],
            "images_per_s": stats.frames / summary["wall_s"] if summary["wall_s"] else None,
            "stages_ms": summary["stages_ms"]}


def naive_loop(classifier: Classifier, video: Path, batch: int) -> dict[str, Any]:
    """What a user writes without the pipeline, timed the way the pipeline is: one thread reads ``batch`` frames,
    classifies them (``classifier.predict``: preprocessing, inference, labels) and writes each result as a JSON
    line, then the next."""
    import json

    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise MlicError(f"cannot read the test video {video}", hint="check OpenCV's video support (FFmpeg)")
    frames, started = 0, time.perf_counter()
    try:
        ended = False
        while not ended:
            images = []
            while len(images) < batch:
                ok, image = capture.read()
                if not ok:
                    ended = True
                    break
                images.append(image)
            if images:
                for result in classifier.predict(images):
                    json.dumps(result.to_dict())
                frames += len(images)
    finally:
        capture.release()
    wall = time.perf_counter() - started
    return {"batch": batch, "frames": frames, "wall_s": wall, "images_per_s": frames / wall if wall else None}


MEASUREMENTS = ("backend_alone", "pipeline", "naive_loop")
ROUND_WARMUP = 3  # untimed backend-alone inferences at the start of each round


def run_bench(backend: Backend, spec: ModelSpec, batches: list[int], *, iterations: int, warmup: int,
              video_frames: int, rounds: int = 5, naive_backend: Backend | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Per batch size: warm-up, then ``rounds`` rounds of backend alone (``iterations`` timed inferences in all,
    shared out over the rounds), the pipeline over the video, and the naive loop over it (on ``naive_backend``:
    the same model opened with the libraries' default threads, as a user's loop would; else ``backend``)."""
    say = progress or (lambda message: None)
    naive_backend = naive_backend or backend
    # not closed here: the caller owns the backends
    classifier, naive_classifier = Classifier(backend, spec), Classifier(naive_backend, spec)
    per_round = max(1, -(-iterations // rounds))
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlic-edge-bench-") as work:
        say("writing the test video")
        video = make_video(Path(work) / "bench.mp4", video_frames)
        for batch in batches:
            say(f"batch {batch}: warm-up")
            bench_backend(backend, spec, batch, 1, warmup)
            bench_pipeline(classifier, video, batch)  # file cache, thread start-up
            naive_loop(naive_classifier, video, batch)
            measured = []
            for number in range(1, rounds + 1):
                say(f"batch {batch}: round {number}/{rounds} (backend alone, pipeline, naive loop)")
                # a few untimed inferences first: the naive loop's own session has just had the cores
                measured.append({"backend_alone": bench_backend(backend, spec, batch, per_round, ROUND_WARMUP),
                                 "pipeline": bench_pipeline(classifier, video, batch),
                                 "naive_loop": naive_loop(naive_classifier, video, batch)})
            rows.append(_summarise(batch, measured))
    return {"backend": backend.info.as_dict(), "naive_backend": naive_backend.info.as_dict(),
            "threads": _budget(backend), "naive_threads": _budget(naive_backend),
            "video": {"frames": video_frames, "size": list(VIDEO_SIZE)}, "iterations": iterations,
            "iterations_per_round": per_round, "rounds": rounds, "warmup": warmup, "results": rows}


def _budget(backend: Backend) -> dict[str, Any] | None:
    return backend.thread_budget.as_dict() if backend.thread_budget is not None else None


def _summarise(batch: int, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One batch size's row: each measurement's median images/s and spread over the rounds, the ratios of the
    medians, the round whose pipeline throughput is the median (its stage times), and every round."""
    throughput = {name: spread([entry[name]["images_per_s"] or 0.0 for entry in rounds]) for name in MEASUREMENTS}
    median_round = min(rounds, key=lambda entry: abs((entry["pipeline"]["images_per_s"] or 0.0)
                                                     - throughput["pipeline"]["median"]))
    alone_ms = [entry["backend_alone"]["latency"]["p50_ms"] for entry in rounds]
    row: dict[str, Any] = {"batch": batch}
    for name in MEASUREMENTS:
        row[name] = {"images_per_s": throughput[name]["median"], "images_per_s_spread": throughput[name]}
    row["backend_alone"]["latency"] = {"p50_ms": float(np.median(alone_ms)),
                                       "p99_ms": float(np.median([entry["backend_alone"]["latency"]["p99_ms"]
                                                                  for entry in rounds]))}
    device = [entry["backend_alone"]["device_ms"] for entry in rounds if entry["backend_alone"].get("device_ms")]
    if device:
        row["backend_alone"]["device_ms"] = {key: float(np.median([d[key] for d in device])) for key in device[0]}
    row["pipeline"]["stages_ms"] = median_round["pipeline"]["stages_ms"]
    medians = {name: throughput[name]["median"] for name in MEASUREMENTS}
    row["ratio"] = medians["pipeline"] / medians["backend_alone"] if medians["backend_alone"] else None
    row["pipeline_over_naive"] = medians["pipeline"] / medians["naive_loop"] if medians["naive_loop"] else None
    row["rounds"] = rounds
    return row


def bench_table(report: dict[str, Any]):
    from rich import box
    from rich.table import Table

    info = report["backend"]
    threads = report.get("threads")
    table = Table(caption="vs alone: pipeline / backend alone; vs naive: pipeline / naive loop (decode, preprocess, "
                          "infer, JSON one after another, the libraries' default threads)",
                  caption_justify="left",
                  title=f"bench: {info['backend']} {info['version']} on {info['device']}, {info['precision']} "
                        f"(pipeline and naive loop: {report['video']['frames']} frames {report['video']['size'][0]}x"
                        f"{report['video']['size'][1]} video; medians of {report['rounds']} interleaved rounds, "
                        f"± half their range){'; ' + describe_threads(threads) if threads else ''}",
                  title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("batch", "alone ms p50", "alone img/s", "pipeline img/s", "naive img/s", "vs alone",
                   "vs naive"):
        table.add_column(column, justify="right", no_wrap=True)

    def rate(entry: dict[str, Any]) -> str:
        return f"{entry['images_per_s']:.1f} ±{entry['images_per_s_spread']['relative_spread'] * 50:.0f}%"

    for row in report["results"]:
        alone = row["backend_alone"]
        table.add_row(str(row["batch"]), f"{alone['latency']['p50_ms']:.2f}", rate(alone), rate(row["pipeline"]),
                      rate(row["naive_loop"]), f"{row['ratio'] * 100:.1f}%" if row["ratio"] else "-",
                      f"{row['pipeline_over_naive']:.2f}x" if row["pipeline_over_naive"] else "-")
    device = [row["backend_alone"].get("device_ms") for row in report["results"] if row["backend_alone"].get("device_ms")]
    if device:
        table.caption += "\ndevice timings (CUDA events), mean ms: " + "; ".join(
            f"batch {row['batch']}: " + ", ".join(f"{k} {v:.3f}" for k, v in row["backend_alone"]["device_ms"].items())
            for row in report["results"])
    return table
