"""The run loop: frames -> preprocess -> backend -> labels -> sinks, timed per stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from mlic_edge.data.images import preprocess
from mlic_edge.runtime.backends.base import Backend
from mlic_edge.runtime.latency import LatencyRecorder
from mlic_edge.runtime.sources import Frame, Source


@dataclass(frozen=True)
class ModelSpec:
    """How to feed the model and name its outputs (from run.json, the same values as the ONNX metadata)."""

    labels: list[str]
    img_size: int
    mean: list[float]
    std: list[float]

    @classmethod
    def from_run(cls, meta: dict[str, Any]) -> "ModelSpec":
        return cls(list(meta["labels"]), int(meta["img_size"]), list(meta["mean"]), list(meta["std"]))


def decide_labels(scores: np.ndarray, labels: list[str], threshold: float, top_k: int) -> tuple[list, list]:
    """Labels at or over ``threshold`` (highest first) and the ``top_k`` best, as {label, score} dicts."""
    order = np.argsort(-scores, kind="stable")
    over = [{"label": labels[i], "score": round(float(scores[i]), 5)} for i in order if scores[i] >= threshold]
    best = [{"label": labels[i], "score": round(float(scores[i]), 5)} for i in order[:top_k]]
    return over, best


@dataclass
class RunStats:
    frames: int = 0
    unreadable: int = 0
    unreadable_names: list[str] | None = None


def _batches(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    batch: list[Frame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_pipeline(source: Source, backend: Backend, spec: ModelSpec, *, threshold: float = 0.5, top_k: int = 5,
                 max_frames: int | None = None, batch_size: int = 1,
                 on_result: Callable[[Frame, dict[str, Any], list[dict]], None] | None = None,
                 latency: LatencyRecorder | None = None) -> RunStats:
    """Run ``backend`` over ``source``. ``on_result(frame, record, labels)`` receives every JSON record."""
    latency = latency or LatencyRecorder()
    stats = RunStats(unreadable_names=[])
    live = source.kind in ("camera", "stream")

    def limited() -> Iterator[Frame]:
        for count, frame in enumerate(source):
            if max_frames is not None and count >= max_frames:
                return
            yield frame

    latency.start()
    for batch in _batches(limited(), 1 if live else batch_size):
        readable = []
        for frame in batch:
            latency.add("decode", frame.decode_ms)
            if frame.image is None:
                stats.unreadable += 1
                if len(stats.unreadable_names) < 3:
                    stats.unreadable_names.append(frame.source)
            else:
                readable.append(frame)
        if not readable:
            continue
        with latency.measure("preprocess", len(readable)):
            tensor = np.stack([preprocess(f.image, spec.img_size, spec.mean, spec.std) for f in readable])
        with latency.measure("inference", len(readable)):
            scores = backend.infer(tensor)
        with latency.measure("postprocess", len(readable)):
            results = []
            for frame, frame_scores in zip(readable, scores):
                over, best = decide_labels(frame_scores, spec.labels, threshold, top_k)
                record = {"source": frame.source, "index": frame.index, "timestamp": round(frame.timestamp, 4),
                          "labels": over, "top_k": best}
                results.append((frame, record, over))
        for frame, record, over in results:
            if on_result:
                on_result(frame, record, over)
        stats.frames += len(readable)
        latency.frames += len(readable)
    latency.stop()
    return stats
