"""Small PNG charts drawn with OpenCV (no plotting library on edge devices)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from mlic_edge.io import atomic_path

_COLOURS = [(200, 90, 30), (40, 150, 40), (30, 30, 200), (150, 60, 150)]


def line_chart(path: Path, title: str, x: Sequence[float], series: dict[str, Sequence[float | None]],
               size: tuple[int, int] = (640, 360)) -> Path:
    """One panel per series (each with its own y range), sharing the x axis; ``None`` values are gaps."""
    width, panel_height = size[0], size[1] // max(1, len(series))
    canvas = np.full((panel_height * len(series) + 30, width, 3), 255, np.uint8)
    cv2.putText(canvas, title, (10, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    xs = np.asarray(x, dtype=np.float64)
    for row, (name, values) in enumerate(series.items()):
        top = 30 + row * panel_height
        left, right, bottom = 60, width - 15, top + panel_height - 25
        cv2.rectangle(canvas, (left, top + 5), (right, bottom), (180, 180, 180), 1)
        ys = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        finite = np.isfinite(ys)
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging loss: huge values are drawn as gaps
            low, high = (float(np.min(ys[finite])), float(np.max(ys[finite]))) if finite.any() else (0.0, 0.0)
            if high - low < 1e-12:
                low, high = low - 0.5, high + 0.5
            span_x = max(1e-12, float(xs.max() - xs.min()))
            px = left + (xs - xs.min()) / span_x * (right - left)
            py = bottom - (ys - low) / (high - low) * (bottom - top - 10)
        finite &= np.isfinite(px) & np.isfinite(py)
        if finite.any():
            points = [(int(a), int(b)) for a, b, ok in zip(px, py, finite) if ok]
            colour = _COLOURS[row % len(_COLOURS)]
            for a, b in zip(points, points[1:]):
                cv2.line(canvas, a, b, colour, 2, cv2.LINE_AA)
            for point in points:
                cv2.circle(canvas, point, 3, colour, -1, cv2.LINE_AA)
            for value, y in ((high, top + 12), (low, bottom)):
                cv2.putText(canvas, f"{value:.3g}", (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (60, 60, 60), 1)
        cv2.putText(canvas, name, (left + 8, top + 22), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    with atomic_path(path) as tmp:  # the temporary name keeps the .png suffix that cv2 reads the format from
        if not cv2.imwrite(str(tmp), canvas):
            raise OSError(f"cannot write {path}")
    return path
