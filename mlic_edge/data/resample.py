"""PIL's bilinear resize without PIL: what the official ML-GCN, MSRN and Query2Label evaluations squash photos with
(``Image.resize(size, BILINEAR)``, which torchvision's ``Resize`` calls on PIL images), so that an imported
checkpoint sees its authors' pixels on the torch-free runtime.

Pillow's ``ImagingResample`` (src/libImaging/Resample.c) is separable: per axis, a triangle filter whose support
widens with the downscale factor (that is the antialiasing), its weights normalised per output pixel and rounded to
22-bit fixed point; one pass is rounded to uint8 before the other runs (``rows_first`` says which runs first). The
same integers are computed here, vectorised over the taps, with the weights of each (input size, output size)
cached.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass

import cv2
import numpy as np

PRECISION_BITS = 22  # Pillow's fixed point: 32 bits less 8 for the pixel and 2 for overflow
ROUNDING = 1 << (PRECISION_BITS - 1)


@dataclass(frozen=True)
class AxisFilter:
    """One axis of the resize: output pixel ``i`` is ``Σ_t pixel[sources[t, i]] · weights[t, i]`` in fixed point."""

    sources: np.ndarray  # (taps, out) int64; a tap past the filter's bounds has weight 0
    weights: np.ndarray  # (taps, out) int32, Pillow's coefficients times 2**22


@functools.lru_cache(maxsize=64)
def axis_filter(in_size: int, out_size: int) -> AxisFilter:
    """Pillow's ``precompute_coeffs`` for the bilinear filter (support 1) and ``normalize_coeffs_8bpc``, in the same
    float64 operations in the same order, so that the rounded coefficients are Pillow's."""
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = filter_scale
    taps = math.ceil(support) * 2 + 1
    centers = (np.arange(out_size) + 0.5) * scale
    starts = np.maximum(np.trunc(centers - support + 0.5), 0).astype(np.int64)
    counts = np.minimum(np.trunc(centers + support + 0.5).astype(np.int64), in_size) - starts
    offsets = np.arange(taps)[:, None]
    sources = starts[None, :] + offsets
    distance = np.abs((sources - centers + 0.5) * (1.0 / filter_scale))
    raw = np.where((distance < 1.0) & (offsets < counts), 1.0 - distance, 0.0)
    total = np.zeros(out_size)
    for row in raw:  # tap by tap, as Pillow sums
        total += row
    normalized = raw / np.where(total != 0.0, total, 1.0)
    fixed = normalized * (1 << PRECISION_BITS)
    weights = np.trunc(np.where(fixed < 0, fixed - 0.5, fixed + 0.5)).astype(np.int32)
    used = np.flatnonzero(weights.any(axis=1))
    weights = weights[: used[-1] + 1] if used.size else weights[:1]
    sources = np.minimum(sources[: len(weights)], in_size - 1)
    for array in (sources, weights):
        array.setflags(write=False)
    return AxisFilter(sources, weights)


def pil_bilinear_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` (HxW or HxWxC uint8, C <= 4) resized as Pillow's ``Image.resize((width, height), Image.BILINEAR)``
    resizes it: the same uint8 values, the channels independent (BGR frames work as they are). A pass whose size
    does not change is skipped, as Pillow skips it."""
    if image.dtype != np.uint8:
        raise ValueError(f"pil_bilinear_resize takes uint8 images, not {image.dtype}")
    in_height, in_width = image.shape[:2]
    out_shape = (height, width, *image.shape[2:])
    resized = np.ascontiguousarray(image)
    if rows_first(in_height, in_width, height, width):
        resized = _resample_columns(_resample_rows(resized, axis_filter(in_height, height)), width)
    else:
        resized = _resample_columns(resized, width)
        if height != in_height:
            resized = _resample_rows(resized, axis_filter(in_height, height))
    return resized.reshape(out_shape) if resized is not image else image.copy()


def rows_first(in_height: int, in_width: int, height: int, width: int) -> bool:
    """Whether Pillow resamples the rows (the vertical pass) first: since Pillow 13, when the height shrinks by more
    than twice as many pixels as the width. Earlier Pillows always ran the horizontal pass first, so on such images
    (portraits squashed to a square) some of their pixels differ from these by one grey level."""
    shrink = in_height - height
    return shrink > 0 and shrink > 2 * (in_width - width)


def _resample_columns(image: np.ndarray, width: int) -> np.ndarray:
    """The horizontal pass, as a row pass of the transposed image: whole rows are gathered, the fast way in numpy."""
    height, in_width = image.shape[:2]
    if width == in_width:
        return image
    transposed = cv2.transpose(_resample_rows(cv2.transpose(image), axis_filter(in_width, width)))
    return transposed.reshape(height, width, -1)


def _resample_rows(image: np.ndarray, rows: AxisFilter) -> np.ndarray:
    """One pass along the first axis of ``image``, rounded and clipped to uint8 as Pillow's clip8 does."""
    flat = image.reshape(image.shape[0], -1)
    total, product = _work_arrays((rows.sources.shape[1], flat.shape[1]))
    total.fill(ROUNDING)
    for sources, weights in zip(rows.sources, rows.weights):
        np.multiply(flat[sources], weights[:, None], out=product)
        total += product
    total >>= PRECISION_BITS
    np.clip(total, 0, 255, out=total)
    return total.astype(np.uint8).reshape(total.shape[0], *image.shape[1:])


_THREAD_WORK = threading.local()
KEPT_WORK_SHAPES = 4  # a stream needs two (one per pass); a few more for changing frame sizes


def _work_arrays(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Two int32 arrays of ``shape``, kept per thread: fresh ones cost more in page faults than the arithmetic
    (measured on a 640x480 frame's horizontal pass: 5 ms against 1 ms)."""
    kept: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = _THREAD_WORK.__dict__.setdefault("arrays", {})
    if shape not in kept:
        if len(kept) >= KEPT_WORK_SHAPES:
            kept.clear()
        kept[shape] = (np.empty(shape, np.int32), np.empty(shape, np.int32))
    return kept[shape]
