"""From a frame's scores to its ``Result`` (and JSON record): thresholds (global or per class), top-k, smoothing, only-changes.

Smoothing and only-changes keep state per stream, keyed by ``meta["source"]``: every frame of a camera, stream or
video shares one key, while each image of a folder is its own key, so unrelated images are never smoothed into
each other. Callers should still pass ``smoothing`` only for live and video sources, where frames follow in time.
"""

from __future__ import annotations

import csv
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mlic_edge.errors import DataError, MlicError
from mlic_edge.spec import BROKEN_GRAPH_HINT, DEFAULT_THRESHOLD, require_finite

MAX_TRACKED_SOURCES = 256
"""Streams whose smoothing / last label set are remembered; older keys are forgotten (a folder run stays bounded)."""


def decide_labels(scores: np.ndarray, labels: Sequence[str], threshold: float | np.ndarray,
                  top_k: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Labels at or over ``threshold`` (one value, or one per class), highest first, and the ``top_k`` best."""
    return labels_over(scores, labels, threshold), best_labels(scores, labels, top_k)


def labels_over(scores: np.ndarray, labels: Sequence[str], threshold: float | np.ndarray) -> list[dict[str, Any]]:
    scores = np.asarray(scores)
    passed = scores >= np.asarray(threshold)
    return [_entry(labels, scores, i) for i in np.argsort(-scores, kind="stable") if passed[i]]


def best_labels(scores: np.ndarray, labels: Sequence[str], k: int) -> list[dict[str, Any]]:
    scores = np.asarray(scores)
    return [_entry(labels, scores, i) for i in np.argsort(-scores, kind="stable")[:k]]


def _entry(labels: Sequence[str], scores: np.ndarray, index: int) -> dict[str, Any]:
    return {"label": labels[index], "score": round(float(scores[index]), 5)}


def read_thresholds(path: Path, labels: list[str], default: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-class thresholds from JSON ``{"label": t}`` or CSV/TXT ``label,threshold`` lines (``#`` comments and a
    ``label,threshold`` header allowed). Labels the file does not name get ``default`` (the ``--threshold``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise DataError(f"cannot read thresholds file {path}: {error.strerror or error}",
                        hint="pass a JSON or CSV file of label,threshold") from error
    entries = _json_entries(path, text) if path.suffix.lower() == ".json" else _csv_entries(path, text)
    thresholds = np.full(len(labels), float(default), dtype=np.float32)
    index_of = {label: i for i, label in enumerate(labels)}
    seen: dict[str, int] = {}
    for line, label, value in entries:
        where = f"{path}:{line}"
        if label not in index_of:
            raise DataError(f"{where}: unknown label {label!r}", hint=f"labels of this model: {_preview(labels)}")
        if label in seen:
            raise DataError(f"{where}: label {label!r} is already set on line {seen[label]}",
                            hint="give each label once")
        number = _parse_threshold(where, value)
        seen[label] = line
        thresholds[index_of[label]] = number
    return thresholds


def _json_entries(path: Path, text: str) -> list[tuple[int, str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: not valid JSON ({error.msg})",
                        hint='write an object like {"person": 0.6, "dog": 0.4}') from error
    if not isinstance(data, dict):
        raise DataError(f"{path}:1: expected a JSON object of label: threshold",
                        hint='write an object like {"person": 0.6, "dog": 0.4}')
    lines = text.splitlines()
    return [(_line_of(lines, json.dumps(label)), label, value) for label, value in data.items()]


def _line_of(lines: list[str], needle: str) -> int:
    """1-based line of the first occurrence of ``needle`` (JSON keeps no positions; this is for messages only)."""
    return next((number for number, line in enumerate(lines, 1) if needle in line), 1)


def _csv_entries(path: Path, text: str) -> list[tuple[int, str, Any]]:
    entries = []
    for number, row in enumerate(csv.reader(text.splitlines()), 1):
        cells = [cell.strip() for cell in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) != 2:
            raise DataError(f"{path}:{number}: expected 'label,threshold', got {','.join(cells)!r}",
                            hint="one label and one threshold per line")
        if not entries and [cell.lower() for cell in cells] == ["label", "threshold"]:
            continue  # header
        entries.append((number, cells[0], cells[1]))
    return entries


def _parse_threshold(where: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not 0.0 <= number <= 1.0:
        raise DataError(f"{where}: threshold {value!r} is not a number in [0, 1]",
                        hint="scores are probabilities: use a threshold between 0 and 1")
    return number


def _preview(labels: list[str], limit: int = 12) -> str:
    shown = ", ".join(labels[:limit])
    return shown + (f", … ({len(labels)} in all)" if len(labels) > limit else "")


@dataclass(eq=False)
class Result:
    """One image's or frame's classification, what ``Classifier`` returns and ``run`` writes (``to_dict``).

    ``scores`` is the full vector (float32, label order; the moving average when ``smoothed``), ``labels`` the labels
    at or over their threshold with their scores, highest first. ``timing`` is this image's time per stage in ms
    (``preprocess``, ``inference``, ``postprocess``; a batch's time shared out equally among its images, as
    Ultralytics' ``speed``). ``source`` / ``index`` / ``timestamp`` say where it came from: the path or stream and
    the position in it (for frames handed over as arrays: no source or timestamp, the index in the call);
    ``stream`` the stream's name in a run of several sources."""

    scores: np.ndarray
    names: tuple[str, ...]
    labels: list[dict[str, Any]]
    default_top_k: int = 5
    source: str | None = None
    index: int | None = None
    timestamp: float | None = None
    timing: dict[str, float] = field(default_factory=dict)
    smoothed: bool = False
    stream: str | None = None
    """The stream's name where a run has several sources."""

    def top_k(self, k: int | None = None) -> list[dict[str, Any]]:
        """The ``k`` best labels with their scores (default: the classifier's ``top_k``), highest first."""
        return best_labels(self.scores, self.names, self.default_top_k if k is None else k)

    def to_dict(self, scores: bool = False) -> dict[str, Any]:
        """The JSON record ``mlic-edge run`` writes (``scores``: with every label's score, as ``run --scores``)."""
        record: dict[str, Any] = {}
        if self.stream is not None:
            record["stream"] = self.stream
        if self.source is not None:
            record["source"] = self.source
        if self.index is not None:
            record["index"] = self.index
        if self.timestamp is not None:
            record["timestamp"] = round(float(self.timestamp), 4)
        record.update(labels=self.labels, top_k=self.top_k())
        if self.smoothed:
            record["smoothed"] = True  # the scores are the moving average, not this frame's own
        if scores:
            record["scores"] = [round(float(value), 5) for value in self.scores]
        record["timing"] = {f"{stage}_ms": round(ms, 3) for stage, ms in self.timing.items()}
        return record

    def plot(self, frame: np.ndarray) -> np.ndarray:
        """A copy of ``frame`` (BGR uint8) with the labels drawn, as ``run --save-video`` draws them."""
        from mlic_edge.runtime.inference.sinks import draw_labels

        return draw_labels(frame, self.labels)

    def __repr__(self) -> str:
        shown = ", ".join(f"{item['label']} {item['score']:.2f}" for item in self.labels) or "no label"
        where = f"{self.source}#{self.index}: " if self.source is not None else ""
        return f"Result({where}{shown})"


class Postprocessor:
    """Turns one frame's scores (C,) and its meta (``source``, ``index``, ``timestamp``) into a ``Result``.

    ``smoothing`` A is an exponential moving average per stream, s_t = A·s_{t-1} + (1-A)·x_t (0 = off), so labels
    do not flicker on a camera; the result's scores are then the smoothed ones. ``only_changes`` returns None for
    a frame whose label set equals the previous frame's of the same stream (the first frame is always emitted).
    Without smoothing or only-changes it keeps no state, so threads may share it.
    """

    def __init__(self, labels: list[str], *, threshold: float | np.ndarray = DEFAULT_THRESHOLD, top_k: int = 5,
                 smoothing: float = 0.0, only_changes: bool = False) -> None:
        threshold = np.asarray(threshold, dtype=np.float32)
        if threshold.ndim not in (0, 1) or (threshold.ndim == 1 and threshold.shape != (len(labels),)):
            raise MlicError(f"thresholds have shape {threshold.shape}, expected one value or {len(labels)}",
                            hint="read per-class thresholds with read_thresholds")
        if not np.all((threshold >= 0) & (threshold <= 1)):
            raise MlicError("--threshold must be in [0, 1]", hint="scores are probabilities")
        if not 0.0 <= smoothing < 1.0:
            raise MlicError(f"--smoothing {smoothing} is outside [0, 1)",
                            hint="0 = off; 0.5-0.9 steadies labels over a few frames")
        if top_k < 0:
            raise MlicError(f"--top-k {top_k} is negative", hint="use 0 for no top-k list")
        self.labels = tuple(labels)
        self.threshold = threshold
        self.top_k = top_k
        self.smoothing = float(smoothing)
        self.only_changes = only_changes
        self._smoothed: OrderedDict[str, np.ndarray] = OrderedDict()
        self._last_labels: OrderedDict[str, frozenset[str]] = OrderedDict()

    def __call__(self, scores: np.ndarray, meta: dict[str, Any]) -> Result | None:
        """``meta``: ``source`` (the stream's key), ``index``, ``timestamp``, and optionally ``timing`` (ms per
        stage so far, which the result keeps and this call adds its own time to)."""
        started = time.perf_counter()
        key = str(meta.get("source"))
        current = np.asarray(scores, dtype=np.float32).reshape(-1)
        require_finite(f"the model's scores for {key} (frame {meta.get('index')})", current,
                       at=lambda index: f"label {self.labels[index[0]]!r}", hint=BROKEN_GRAPH_HINT)
        if self.smoothing:
            previous = self._smoothed.get(key)
            if previous is not None:
                current = (self.smoothing * previous + (1.0 - self.smoothing) * current).astype(np.float32)
            _remember(self._smoothed, key, current)
        over = labels_over(current, self.labels, self.threshold)
        if self.only_changes:
            label_set = frozenset(item["label"] for item in over)
            unchanged = self._last_labels.get(key) == label_set
            _remember(self._last_labels, key, label_set)
            if unchanged:
                return None
        timing = dict(meta.get("timing") or {})
        timing["postprocess"] = timing.get("postprocess", 0.0) + (time.perf_counter() - started) * 1e3
        return Result(scores=current, names=self.labels, labels=over, default_top_k=self.top_k,
                      source=meta.get("source"), index=meta.get("index"), timestamp=meta.get("timestamp"),
                      timing=timing, smoothed=bool(self.smoothing), stream=meta.get("stream"))


def _remember(states: OrderedDict, key: str, value: Any) -> None:
    states[key] = value
    states.move_to_end(key)
    if len(states) > MAX_TRACKED_SOURCES:
        states.popitem(last=False)
