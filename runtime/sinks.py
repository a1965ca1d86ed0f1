"""Where results go: JSON lines (stdout or a file) and an annotated video."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from mlic_edge.errors import SourceError
from mlic_edge.io import atomic_path


class JsonlSink:
    def __init__(self, path: Path | None = None) -> None:
        self._context = atomic_path(path) if path else None
        self._handle: TextIO = open(self._context.__enter__(), "w") if self._context else sys.stdout

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record) + "\n")

    def close(self, ok: bool = True) -> None:
        self._handle.flush()
        if self._context:
            self._handle.close()
            self._context.__exit__(None if ok else RuntimeError, None, None)
            self._context = None


class VideoSink:
    """Draws the predicted labels on each frame and writes an MP4 (frames resized to the first frame's size)."""

    def __init__(self, path: Path, fps: float | None) -> None:
        self.path = path
        self.fps = fps or 10.0
        self._context = atomic_path(path)
        self._tmp = self._context.__enter__()
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def write(self, image: np.ndarray, labels: list[dict[str, Any]]) -> None:
        if self._writer is None:
            height, width = image.shape[:2]
            self._size = (width, height)
            self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size)
            if not self._writer.isOpened():
                raise SourceError(f"cannot write video {self.path}", hint="check the folder and the .mp4 suffix")
        frame = image if (image.shape[1], image.shape[0]) == self._size else cv2.resize(image, self._size)
        self._writer.write(draw_labels(frame, labels))

    def close(self, ok: bool = True) -> None:
        if self._writer is not None:
            self._writer.release()
        self._context.__exit__(None if ok and self._writer is not None else RuntimeError, None, None)


def draw_labels(image: np.ndarray, labels: list[dict[str, Any]]) -> np.ndarray:
    canvas = image.copy()
    scale = max(0.4, min(canvas.shape[:2]) / 400)
    line = int(22 * scale) + 4
    for row, item in enumerate(labels):
        text = f"{item['label']} {item['score']:.2f}"
        origin = (6, line * (row + 1))
        cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (80, 255, 80), 1, cv2.LINE_AA)
    return canvas
