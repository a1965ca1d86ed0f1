"""``mlic-edge bench``: the backend alone (like trtexec) and the whole pipeline on a generated video, side by side.

The ratio pipeline / backend-alone throughput at the same batch says how much of the engine's speed survives
decoding, preprocessing and output; the pipeline overlaps those with inference on threads.
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
from mlic_edge.runtime.inference.latency import LatencyRecorder
from mlic_edge.runtime.inference.pipeline import run_pipeline
from mlic_edge.spec import ModelSpec
from mlic_edge.runtime.inference.sources import open_source

VIDEO_SIZE = (640, 480)  # a typical camera frame: decoding and resizing it is part of the real cost


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    values = np.asarray(samples_ms, dtype=np.float64)
    return {"mean_ms": float(values.mean()), "p50_ms": float(np.percentile(values, 50)),
            "p90_ms": float(np.percentile(values, 90)), "p99_ms": float(np.percentile(values, 99))}


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


def bench_pipeline(backend: Backend, spec: ModelSpec, video: Path, batch: int) -> dict[str, Any]:
    """The whole pipeline over ``video`` (decode, preprocess, batch, infer, postprocess; no output written)."""
    from mlic_edge.runtime.inference.postprocess import Postprocessor

    latency = LatencyRecorder()
    with open_source(str(video)) as source:
        stats = run_pipeline(source, backend, spec, postprocess=Postprocessor(spec.labels), batch_size=batch,
                             latency=latency)
    summary = latency.summary()
    return {"batch": batch, "frames": stats.frames, "wall_s": summary["wall_s"],
            "images_per_s": stats.frames / summary["wall_s"] if summary["wall_s"] else None,
            "stages_ms": summary["stages_ms"]}


def interleaved_latency(backends: dict[str, Backend], spec: ModelSpec, batches: Sequence[int], rounds: int = 10,
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


def run_bench(backend: Backend, spec: ModelSpec, batches: list[int], *, iterations: int, warmup: int,
              video_frames: int, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda message: None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlic-edge-bench-") as work:
        say("writing the test video")
        video = make_video(Path(work) / "bench.mp4", video_frames)
        for batch in batches:
            say(f"backend alone, batch {batch}")
            alone = bench_backend(backend, spec, batch, iterations, warmup)
            say(f"pipeline, batch {batch}")
            bench_pipeline(backend, spec, video, batch)  # warm-up pass: file cache, thread start-up
            pipeline = bench_pipeline(backend, spec, video, batch)
            ratio = pipeline["images_per_s"] / alone["images_per_s"] if pipeline["images_per_s"] else None
            rows.append({"batch": batch, "backend_alone": alone, "pipeline": pipeline, "ratio": ratio})
    return {"backend": backend.info.as_dict(), "video": {"frames": video_frames, "size": list(VIDEO_SIZE)},
            "iterations": iterations, "warmup": warmup, "results": rows}


def bench_table(report: dict[str, Any]):
    from rich import box
    from rich.table import Table

    info = report["backend"]
    table = Table(title=f"bench: {info['backend']} {info['version']} on {info['device']}, {info['precision']} "
                        f"(pipeline: {report['video']['frames']} frames {report['video']['size'][0]}x"
                        f"{report['video']['size'][1]} video)", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("batch", "alone ms/batch p50", "p99", "alone img/s", "pipeline img/s", "pipeline/alone"):
        table.add_column(column, justify="right")
    for row in report["results"]:
        alone, pipeline = row["backend_alone"], row["pipeline"]
        table.add_row(str(row["batch"]), f"{alone['latency']['p50_ms']:.2f}", f"{alone['latency']['p99_ms']:.2f}",
                      f"{alone['images_per_s']:.1f}", f"{pipeline['images_per_s']:.1f}",
                      f"{row['ratio'] * 100:.1f}%" if row["ratio"] else "-")
    device = [row["backend_alone"].get("device_ms") for row in report["results"] if row["backend_alone"].get("device_ms")]
    if device:
        table.caption = "device timings (CUDA events), mean ms: " + "; ".join(
            f"batch {row['batch']}: " + ", ".join(f"{k} {v:.3f}" for k, v in row["backend_alone"]["device_ms"].items())
            for row in report["results"])
    return table
