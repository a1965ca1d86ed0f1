"""A synthetic multi-label dataset in VOC layout: shapes on cluttered backgrounds, with learnable label structure.

Every class is one drawable kind of shape ("circle", "square", "star", ...). Scenes hold 1-4 classes, each instance at
its own scale, position, rotation and colour, over a textured gradient with thin lines and small distractor blobs that
are no class. Instances overlap; one that is more than ``difficult_threshold`` hidden (by later instances or the image
border, computed from the masks) is written ``difficult``.

Label structure a model can exploit (drawn from the seed, written to ``synth.json``):

* **together** pairs (A, B): when A is in an image, B is added with probability ``together_probability``;
* **never** pairs (A, B): when A is in an image, B is removed.

With ``long_tail`` the training split (trainval) follows the DBL/DAB recipe for VOC-MLT/COCO-MLT: per-class targets from
a Pareto pdf (shape ``pareto_alpha``) sampled between its ppf(0) and ppf(0.99), scaled so the head class is in ~70 % of
the training images and the tail in a handful (max/min ~40); the test split stays balanced, as those benchmarks
evaluate. Per-class frequencies are reached by calibrating Bernoulli rates on fixed random draws, so the rules hold and
the result is deterministic.

Same seed and arguments -> byte-identical label files (XML, ImageSets, synth.json) and images.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from mlic_edge.errors import DataError

GENERATOR = "mlic-edge synth"
FORMAT_VERSION = 1
SUMMARY_NAME = "synth.json"
SPLITS = ("trainval", "test")
# What a synth output folder holds; a re-run replaces exactly these entries.
_OUTPUT_ENTRIES = ("JPEGImages", "Annotations", "ImageSets", "video.mp4", "video_labels.json", SUMMARY_NAME)

Polys = list[np.ndarray]


# ----------------------------------------------------------------------------------------------------------- shapes
# Each kind is drawn in local coordinates inside the unit circle, as polygons to fill and polygons to cut out.
# Kinds are chosen to stay distinct under any rotation and scale (no "x" next to "cross", no "square" next to a
# rotated square: the diamond is a 2:1 rhombus, the ellipse 2.2:1).


def _arc(rx: float, ry: float, a0: float = 0.0, a1: float = 2 * math.pi, n: int = 40,
         cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    t = np.linspace(a0, a1, n, endpoint=not math.isclose(a1 - a0, 2 * math.pi))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _ngon(n: int, r: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    t = phase + np.arange(n) * 2 * math.pi / n
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _segment(p: tuple[float, float], q: tuple[float, float], half_width: float) -> np.ndarray:
    d = np.subtract(q, p)
    n = np.array([-d[1], d[0]]) / (np.hypot(*d) or 1.0) * half_width
    return np.array([np.add(p, n), np.add(q, n), np.subtract(q, n), np.subtract(p, n)])


def _star() -> Polys:
    t = -math.pi / 2 + np.arange(10) * math.pi / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    return [np.stack([r * np.cos(t), r * np.sin(t)], axis=1)]


def _heart() -> Polys:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return [np.stack([x, y + 2.5], axis=1) / 16.5]


def _sun() -> Polys:
    polys = [_arc(0.5, 0.5)]
    for k in range(8):
        a = k * math.pi / 4
        tip = (math.cos(a), math.sin(a))
        left = (0.45 * math.cos(a - 0.3), 0.45 * math.sin(a - 0.3))
        right = (0.45 * math.cos(a + 0.3), 0.45 * math.sin(a + 0.3))
        polys.append(np.array([left, tip, right]))
    return polys


def _zigzag() -> Polys:
    pts = [(-1.0, -0.35), (-0.5, 0.35), (0.0, -0.35), (0.5, 0.35), (1.0, -0.35)]
    return [_segment(pts[i], pts[i + 1], 0.14) for i in range(len(pts) - 1)]


# name -> (fill polygons, hole polygons)
_KINDS: dict[str, tuple[Polys, Polys]] = {
    "circle": ([_arc(1.0, 1.0)], []),
    "square": ([_rect(-0.72, -0.72, 0.72, 0.72)], []),
    "triangle": ([_ngon(3, 1.0)], []),
    "star": (_star(), []),
    "ring": ([_arc(1.0, 1.0)], [_arc(0.58, 0.58)]),
    "cross": ([_rect(-1.0, -0.28, 1.0, 0.28), _rect(-0.28, -1.0, 0.28, 1.0)], []),
    "ellipse": ([_arc(1.0, 0.45)], []),
    "diamond": ([np.array([[1.0, 0.0], [0.0, 0.5], [-1.0, 0.0], [0.0, -0.5]])], []),
    "hexagon": ([_ngon(6, 1.0, 0.0)], []),
    "arrow": ([_rect(-1.0, -0.17, 0.15, 0.17), np.array([[0.1, -0.55], [1.0, 0.0], [0.1, 0.55]])], []),
    "crescent": ([_arc(1.0, 1.0)], [_arc(0.82, 0.82, cx=0.48)]),
    "heart": (_heart(), []),
    "stripes": ([_rect(-0.8, y, 0.8, y + 0.24) for y in (-0.8, -0.35, 0.1, 0.55)], []),
    "pentagon": ([_ngon(5, 1.0)], []),
    "checker": ([_rect(-0.8 + 0.54 * i, -0.8 + 0.54 * j, -0.8 + 0.54 * (i + 1), -0.8 + 0.54 * (j + 1))
                 for i in range(3) for j in range(3) if (i + j) % 2 == 0], []),
    "semicircle": ([_arc(1.0, 1.0, 0.0, math.pi, 24, cy=-0.42)], []),
    "frame": ([_rect(-0.75, -0.75, 0.75, 0.75)], [_rect(-0.42, -0.42, 0.42, 0.42)]),
    "lshape": ([np.array([[-0.7, -0.95], [-0.15, -0.95], [-0.15, 0.4], [0.7, 0.4], [0.7, 0.95], [-0.7, 0.95]])], []),
    "hourglass": ([np.array([[-0.7, -1.0], [0.7, -1.0], [0.12, 0.0], [0.7, 1.0], [-0.7, 1.0], [-0.12, 0.0]])], []),
    "chevron": ([_segment((-0.6, -0.85), (0.0, 0.8), 0.17), _segment((0.6, -0.85), (0.0, 0.8), 0.17)], []),
    "sun": (_sun(), []),
    "bar": ([_rect(-1.0, -0.22, 1.0, 0.22)], []),
    "trapezoid": ([np.array([[-1.0, 0.5], [1.0, 0.5], [0.42, -0.5], [-0.42, -0.5]])], []),
    "zigzag": (_zigzag(), []),
}
KINDS: tuple[str, ...] = tuple(_KINDS)
MAX_CLASSES = len(KINDS)


# ----------------------------------------------------------------------------------------------------------- config
@dataclass
class SynthConfig:
    """What to generate. Defaults: 8 balanced classes, 800 images of 128 px, a quarter of them in the test split."""

    classes: int = 8
    images: int = 800
    size: int = 128
    seed: int = 0
    long_tail: bool = False
    test_fraction: float = 0.25
    video: bool = False
    video_frames: int = 90
    pareto_alpha: float = 6.0
    """Shape of the Pareto pdf the long-tail class targets follow (DBL's create_longtail_dataset uses 6)."""
    head_fraction: float = 0.7
    """Long tail: share of training images holding the head class."""
    tail_ratio: float = 40.0
    """Long tail: head/tail target ratio (VOC-MLT's 775/4 needs far more images than a synthetic run)."""
    labels_per_image: float = 2.0
    """Balanced splits: mean number of classes per image (each image holds 1-4)."""
    together_probability: float = 0.8
    typical_colour: float = 0.75
    """Share of instances painted near their class's own hue (real objects have typical colours); the rest get
    a random colour, so shape still matters."""
    difficult_threshold: float = 0.6
    """An instance more hidden than this (occlusion + image border) is written difficult."""
    jpeg_quality: int = 90
    video_fps: int = 10
    video_segment_s: float = 2.0
    """The set of objects in the video changes every this many seconds."""


MAX_LABELS = 4
_MAX_INSTANCES = 6
# Scene knobs, tuned so a small CNN trained from scratch on ~600 images at 96-128 px learns the shapes in minutes.
_RADIUS = (0.12, 0.25)  # instance radius range, as a fraction of the image side (log-uniform)
_ROTATION = 0.45  # instances are rotated uniformly in [-_ROTATION, _ROTATION] rad (+-26 deg). Full turns made
# the shapes far harder to learn from a few hundred images (small CNN from scratch: test mAP 0.50 vs 0.70 after
# 15 epochs on the default 8-class set), and the kinds stay distinct under any rotation anyway.
_OCCLUDER_P = 0.1  # chance an instance is placed on top of an earlier one (deliberate occlusion)
_TEXTURE = (8.0, 22.0)  # amplitude range of the low-frequency background texture


def _validate(out: Path, config: SynthConfig) -> None:
    def bad(message: str, hint: str) -> DataError:
        return DataError(message, hint)

    for name in ("classes", "images", "size", "seed", "video_frames", "jpeg_quality", "video_fps"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise bad(f"synth: {name} must be an integer, got {value!r}", f"pass a whole number for {name}")
    if config.classes < 1:
        raise bad(f"synth: classes must be at least 1, got {config.classes}", "use --classes between 1 and "
                  f"{MAX_CLASSES}")
    if config.classes > MAX_CLASSES:
        raise bad(f"synth: {config.classes} classes asked but only {MAX_CLASSES} distinct shape kinds exist "
                  f"({', '.join(KINDS)})", f"use --classes {MAX_CLASSES} or fewer")
    if config.images < 8:
        raise bad(f"synth: images must be at least 8, got {config.images}", "use --images 8 or more (800 trains "
                  "a small CNN in minutes)")
    if config.size < 32:
        raise bad(f"synth: size must be at least 32 px, got {config.size}", "use --size 32 or more (96-128 is "
                  "a good CPU size)")
    if config.size > 4096:
        raise bad(f"synth: size {config.size} px is too large", "use --size 4096 or less")
    if config.seed < 0:
        raise bad(f"synth: seed must be >= 0, got {config.seed}", "pass a non-negative --seed")
    if not 0.0 < float(config.test_fraction) < 1.0:
        raise bad(f"synth: test_fraction must be between 0 and 1, got {config.test_fraction}",
                  "use e.g. 0.25 (a quarter of the images in the test split)")
    n_test = _n_test(config)
    if n_test < 1 or config.images - n_test < 1:
        raise bad(f"synth: test_fraction {config.test_fraction} leaves a split empty with {config.images} images",
                  "raise --images or choose a test fraction nearer 0.25")
    if config.video and config.video_frames < 1:
        raise bad(f"synth: video_frames must be at least 1, got {config.video_frames}", "use e.g. 90 (9 s at 10 fps)")
    if config.video_fps < 1:
        raise bad(f"synth: video_fps must be at least 1, got {config.video_fps}", "use 10")
    if not config.pareto_alpha > 0:
        raise bad(f"synth: pareto_alpha must be > 0, got {config.pareto_alpha}", "use 6 (the DBL/DAB value)")
    if not 0.0 < config.head_fraction <= 0.95:
        raise bad(f"synth: head_fraction must be in (0, 0.95], got {config.head_fraction}", "use 0.7")
    if not config.tail_ratio >= 1.0:
        raise bad(f"synth: tail_ratio must be >= 1, got {config.tail_ratio}", "use e.g. 40")
    if not 1.0 <= config.labels_per_image <= MAX_LABELS:
        raise bad(f"synth: labels_per_image must be in [1, {MAX_LABELS}], got {config.labels_per_image}", "use 2")
    if not 0.0 <= config.together_probability <= 1.0:
        raise bad(f"synth: together_probability must be in [0, 1], got {config.together_probability}", "use 0.8")
    if not 0.0 <= config.typical_colour <= 1.0:
        raise bad(f"synth: typical_colour must be in [0, 1], got {config.typical_colour}", "use 0.75")
    if not 0.0 < config.difficult_threshold < 1.0:
        raise bad(f"synth: difficult_threshold must be in (0, 1), got {config.difficult_threshold}", "use 0.6")
    if not 1 <= config.jpeg_quality <= 100:
        raise bad(f"synth: jpeg_quality must be in [1, 100], got {config.jpeg_quality}", "use 90")
    if not config.video_segment_s > 0:
        raise bad(f"synth: video_segment_s must be > 0, got {config.video_segment_s}", "use 2")
    if out.exists() and not out.is_dir():
        raise bad(f"synth: output {out} exists and is not a folder", "choose a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not is_synth_output(out):
        raise bad(f"synth: output folder {out} is not empty and holds no previous synthetic dataset",
                  "choose a new or empty folder (a folder written by synth is overwritten)")


def _n_test(config: SynthConfig) -> int:
    return int(round(config.images * float(config.test_fraction)))


def is_synth_output(folder: Path) -> bool:
    """Whether ``folder`` holds a dataset written by :func:`generate` (its ``synth.json`` says so)."""
    try:
        data = json.loads((Path(folder) / SUMMARY_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("generator") == GENERATOR


def class_names(classes: int) -> list[str]:
    """The names of the first ``classes`` shape kinds, in class order."""
    return list(KINDS[:classes])


# ------------------------------------------------------------------------------------------------------------ labels
@dataclass
class _Rules:
    together: list[tuple[int, int]]
    never: list[tuple[int, int]]
    frequency_order: list[int]
    """Class indices from most to least frequent (used by the long tail; orients the rules)."""


def _draw_rules(num_classes: int, seed: int) -> _Rules:
    rng = np.random.default_rng([seed, 2])
    order = [int(k) for k in rng.permutation(num_classes)]
    rank = {k: r for r, k in enumerate(order)}
    n_together = min(4, max(1, num_classes // 4)) if num_classes >= 2 else 0
    n_never = min(3, max(1, num_classes // 6)) if num_classes >= 2 * n_together + 2 else 0
    shuffled = [int(k) for k in rng.permutation(num_classes)]

    def oriented(a: int, b: int) -> tuple[int, int]:
        # A is the rarer class: "A implies B" then never fights B's own (higher) frequency target.
        return (a, b) if rank[a] > rank[b] else (b, a)

    pairs = [oriented(shuffled[2 * i], shuffled[2 * i + 1]) for i in range(n_together + n_never)]
    return _Rules(together=pairs[:n_together], never=pairs[n_together:], frequency_order=order)


def long_tail_targets(n_images: int, num_classes: int, alpha: float = 6.0, head_fraction: float = 0.7,
                      tail_ratio: float = 40.0) -> np.ndarray:
    """Per-rank image counts: a Pareto(alpha) pdf on [ppf(0), ppf(0.99)], scaled to [head/tail_ratio, head]."""
    head = head_fraction * n_images
    if num_classes == 1:
        return np.array([float(n_images)])
    x = np.linspace(1.0, 100.0 ** (1.0 / alpha), num_classes)  # Pareto(b=alpha, scale 1): ppf(0)=1, ppf(.99)
    pdf = alpha / x ** (alpha + 1)
    w = (pdf - pdf.min()) / (pdf.max() - pdf.min())
    tail = max(1.0, head / tail_ratio)
    return tail + (head - tail) * w


def _sample_labels(rng: np.random.Generator, n: int, targets: np.ndarray, rules: _Rules, together_p: float,
                   max_labels: int = MAX_LABELS) -> np.ndarray:
    """(n, C) bool: 1..max_labels classes per row, rules applied, per-class counts calibrated towards ``targets``.

    The random draws are fixed up front and only the Bernoulli rates move, so the calibration converges smoothly and
    the outcome is a deterministic function of the seed.
    """
    num_classes = len(targets)
    u_base = rng.random((n, num_classes))
    u_rule = rng.random((n, max(1, len(rules.together))))
    u_keep = rng.random((n, num_classes))
    u_fill = rng.random(n)
    weights = np.cumsum(targets / targets.sum())
    fill_class = np.minimum(np.searchsorted(weights, u_fill, side="right"), num_classes - 1)
    rows = np.arange(n)
    p = np.clip(targets / n, 1e-3, 0.98)

    def labels_for(rates: np.ndarray) -> np.ndarray:
        present = u_base < rates
        empty = ~present.any(axis=1)
        present[rows[empty], fill_class[empty]] = True
        bonus = np.zeros((n, num_classes))
        for r, (a, b) in enumerate(rules.together):
            # Stratified: of the rows holding A, exactly ceil(p * n_A) (those with the smallest draws) get B, so
            # P(B | A) >= p holds in every split, not only on average.
            holders = np.flatnonzero(present[:, a])
            quota = math.ceil(together_p * holders.size - 1e-9)
            chosen = holders[np.argsort(u_rule[holders, r], kind="stable")[:quota]]
            added = np.zeros(n, dtype=bool)
            added[chosen] = True
            present[:, b] |= added
            both = present[:, a] & present[:, b]
            bonus[both, a] += 1.0  # the cap to max_labels drops unlinked classes first, then A before B,
            bonus[both, b] += 2.0  # so a kept A always keeps its B
        for a, b in rules.never:
            present[:, b] &= ~present[:, a]
        over = present.sum(axis=1) > max_labels
        if over.any():
            score = np.where(present, u_keep + bonus, -1.0)[over]
            keep = np.argsort(-score, axis=1, kind="stable")[:, :max_labels]
            capped = np.zeros_like(score, dtype=bool)
            np.put_along_axis(capped, keep, True, axis=1)
            present[over] = capped & present[over]
            # The cap may have dropped an A that held its B: top P(B | A) back up to the rule's probability by
            # adding B where the row has room, else dropping A (rule classes are disjoint, so no other rule breaks).
            for r, (a, b) in enumerate(rules.together):
                lacking = np.flatnonzero(present[:, a] & ~present[:, b])
                for row in lacking[np.argsort(u_rule[lacking, r], kind="stable")]:
                    n_a = int(present[:, a].sum())
                    if n_a == 0 or (present[:, a] & present[:, b]).sum() >= together_p * n_a - 1e-9:
                        break
                    if present[row].sum() < max_labels:
                        present[row, b] = True
                    else:
                        present[row, a] = False
        return present

    for _ in range(60):
        present = labels_for(p)
        counts = present.sum(axis=0).astype(np.float64)
        p = np.clip(p * (targets / np.maximum(counts, 0.5)) ** 0.7, 1e-4, 0.995)
    return labels_for(p)


# ------------------------------------------------------------------------------------------------------------ scenes
def _random_colour(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float],
                   hue: float | None = None) -> np.ndarray:
    """A BGR colour; ``hue`` (OpenCV's 0-180 scale) pins the hue within +-8, else it is random."""
    h = rng.uniform(0, 180) if hue is None else (hue + rng.uniform(-8, 8)) % 180
    hsv = np.array([[[h, rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]], dtype=np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Gradient between two colours + low-frequency texture + thin lines + small distractor blobs (float32 BGR)."""
    c0 = _random_colour(rng, (0.0, 0.6), (0.25, 0.9))
    c1 = _random_colour(rng, (0.0, 0.6), (0.25, 0.9))
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (xx * math.cos(angle) + yy * math.sin(angle))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    image = c0 + (c1 - c0) * t[..., None]
    grid = rng.normal(0.0, 1.0, (6, max(2, 6 * width // height), 3)).astype(np.float32)
    texture = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    image += texture * rng.uniform(*_TEXTURE)
    scale = min(height, width)
    for _ in range(int(rng.integers(2, 7))):
        p = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        q = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(float(v) for v in _random_colour(rng, (0.0, 1.0), (0.1, 1.0)))
        cv2.line(image, p, q, colour, 1, cv2.LINE_AA)
    for _ in range(int(rng.integers(3, 11))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (max(1, int(rng.uniform(0.008, 0.028) * scale)), max(1, int(rng.uniform(0.008, 0.028) * scale)))
        colour = tuple(float(v) for v in _random_colour(rng, (0.2, 1.0), (0.2, 1.0)))
        cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    return image


def _instance_mask(kind: str, cx: float, cy: float, radius: float, angle: float, height: int, width: int,
                   pad: int) -> np.ndarray:
    """uint8 mask (255 inside) of one instance on a canvas padded by ``pad`` on every side."""
    fills, holes = _KINDS[kind]
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]]) * radius
    offset = np.array([cx + pad, cy + pad])
    mask = np.zeros((height + 2 * pad, width + 2 * pad), dtype=np.uint8)
    for polys, value in ((fills, 255), (holes, 0)):
        for poly in polys:
            pts = np.round((poly @ rot.T + offset) * 16).astype(np.int32)
            cv2.fillPoly(mask, [pts], value, cv2.LINE_8, 4)
    return mask


@dataclass
class _Instance:
    cls: int
    mask: np.ndarray  # padded canvas
    colour: np.ndarray


def _paint(image: np.ndarray, mask: np.ndarray, colour: np.ndarray, rng: np.random.Generator | None = None) -> None:
    """Blend ``colour`` (with a little shading) into ``image`` through a softened ``mask`` (same size)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return
    y0, y1, x0, x1 = max(ys.min() - 2, 0), ys.max() + 3, max(xs.min() - 2, 0), xs.max() + 3
    alpha = cv2.GaussianBlur(mask[y0:y1, x0:x1], (3, 3), 0).astype(np.float32)[..., None] * (1.0 / 255.0)
    fill = np.broadcast_to(colour, alpha.shape[:2] + (3,))
    if rng is not None:  # a little shading along x or y, so instances are not flat stickers
        h, w = alpha.shape[:2]
        g = float(rng.uniform(-22, 22))
        ramp = (np.linspace(-g, g, w, dtype=np.float32)[None, :, None] if rng.random() < 0.5
                else np.linspace(-g, g, h, dtype=np.float32)[:, None, None])
        fill = fill + ramp
    region = image[y0:y1, x0:x1]
    region *= 1.0 - alpha
    region += alpha * fill


def _object_colour(rng: np.random.Generator, background: np.ndarray, mask_in_image: np.ndarray,
                   hue: float | None = None) -> np.ndarray:
    inside = mask_in_image > 0
    local = background[inside].mean(axis=0) if inside.any() else background.reshape(-1, 3).mean(axis=0)
    colour = _random_colour(rng, (0.45, 1.0), (0.45, 1.0), hue)
    for _ in range(6):
        if float(np.linalg.norm(colour - local)) >= 90.0:
            break
        colour = _random_colour(rng, (0.45, 1.0), (0.45, 1.0), hue)
    return colour


def class_hue(cls: int, num_classes: int) -> float:
    """Each class's typical hue, spread evenly round the colour wheel (OpenCV's 0-180 scale)."""
    return (cls * 180.0 / max(1, num_classes) + 7.0) % 180.0


def _render_scene(rng: np.random.Generator, labels: np.ndarray, names: list[str], size: int,
                  difficult_threshold: float, typical_colour: float = 0.75) -> tuple[np.ndarray, list[dict]]:
    """One image (uint8 BGR) and its VOC objects for the classes in ``labels`` (indices)."""
    pad = size // 2
    image = _background(rng, size, size)
    instances: list[int] = []
    for cls in labels:
        instances.append(int(cls))
    for cls in labels:
        if len(instances) < _MAX_INSTANCES and rng.random() < 0.2:
            instances.append(int(cls))
    order = rng.permutation(len(instances))
    instances = [instances[i] for i in order]

    placed: list[tuple[float, float, float]] = []
    drawn: list[_Instance] = []
    for cls in instances:
        radius = size * math.exp(rng.uniform(math.log(_RADIUS[0]), math.log(_RADIUS[1])))
        if placed and rng.random() < _OCCLUDER_P:
            # Deliberate occluder: on top of an earlier instance, at least as large.
            px, py, pr = placed[int(rng.integers(0, len(placed)))]
            radius = max(radius, pr * rng.uniform(0.95, 1.25))
            cx = px + rng.uniform(-0.35, 0.35) * pr
            cy = py + rng.uniform(-0.35, 0.35) * pr
        else:
            cx = rng.uniform(0.14, 0.86) * size
            cy = rng.uniform(0.14, 0.86) * size
        angle = rng.uniform(-_ROTATION, _ROTATION)
        placed.append((cx, cy, radius))
        mask = _instance_mask(names[cls], cx, cy, radius, angle, size, size, pad)
        hue = class_hue(cls, len(names)) if rng.random() < typical_colour else None
        colour = _object_colour(rng, image, mask[pad:pad + size, pad:pad + size], hue)
        drawn.append(_Instance(cls, mask, colour))
        _paint(image, mask[pad:pad + size, pad:pad + size], colour, rng)

    # Thin clutter lines over the objects now and then.
    for _ in range(int(rng.integers(0, 3))):
        p = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        q = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        colour = tuple(float(v) for v in _random_colour(rng, (0.0, 1.0), (0.1, 1.0)))
        cv2.line(image, p, q, colour, 1, cv2.LINE_AA)
    image += rng.normal(0.0, rng.uniform(2.0, 6.0), image.shape).astype(np.float32)
    out = np.clip(image + 0.5, 0, 255).astype(np.uint8)

    # Occlusion from the masks: what later instances and the image border leave of each instance.
    objects = []
    for inst, vis in zip(drawn, occlusion([inst.mask for inst in drawn], pad, (size, size), difficult_threshold)):
        objects.append({"name": names[inst.cls], **vis})
    return out, objects


def occlusion(masks: list[np.ndarray], pad: int, shape: tuple[int, int], difficult_threshold: float = 0.6
              ) -> list[dict]:
    """Per instance (in drawing order, later ones on top): hidden fraction, difficult/truncated flags, VOC bbox.

    ``masks`` are full-object masks on a canvas padded by ``pad`` around an image of ``shape`` (h, w), so the part
    outside the image is known. ``hidden`` = 1 - visible pixels / full area (later instances and the border both
    hide); ``difficult`` = hidden > ``difficult_threshold``; ``truncated`` = more than 15 % outside the image; the
    1-based inclusive ``bbox`` encloses the visible part (the in-image part when almost nothing is visible).
    """
    height, width = shape
    result: list[dict] = [{} for _ in masks]
    cover = np.zeros((height, width), dtype=bool)
    for i in range(len(masks) - 1, -1, -1):
        full = masks[i] > 0
        area = int(full.sum())
        in_image = full[pad:pad + height, pad:pad + width]
        visible = in_image & ~cover
        cover |= in_image
        n_in, n_visible = int(in_image.sum()), int(visible.sum())
        hidden = 1.0 - n_visible / max(area, 1)
        ys, xs = np.nonzero(visible if n_visible >= 4 else in_image)
        if ys.size == 0:  # entirely outside the image (the scene's centre ranges prevent it)
            ys, xs = np.array([0, height - 1]), np.array([0, width - 1])
        result[i] = {
            "truncated": int(n_in < 0.85 * area),
            "difficult": int(hidden > difficult_threshold),
            "bbox": (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1),
            "hidden": round(hidden, 4),
        }
    return result


def _annotation_xml(image_id: str, size: int, objects: list[dict], seed: int) -> str:
    lines = [
        "<annotation>",
        "\t<folder>synth</folder>",
        f"\t<filename>{image_id}.jpg</filename>",
        "\t<source>",
        "\t\t<database>mlic-edge synthetic shapes</database>",
        f"\t\t<annotation>{GENERATOR} seed {seed}</annotation>",
        "\t\t<image>synthetic</image>",
        "\t</source>",
        "\t<size>",
        f"\t\t<width>{size}</width>",
        f"\t\t<height>{size}</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
        "\t<segmented>0</segmented>",
    ]
    for obj in objects:
        x0, y0, x1, y1 = obj["bbox"]
        lines += [
            "\t<object>",
            f"\t\t<name>{obj['name']}</name>",
            "\t\t<pose>Unspecified</pose>",
            f"\t\t<truncated>{obj['truncated']}</truncated>",
            f"\t\t<difficult>{obj['difficult']}</difficult>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{x0}</xmin>",
            f"\t\t\t<ymin>{y0}</ymin>",
            f"\t\t\t<xmax>{x1}</xmax>",
            f"\t\t\t<ymax>{y1}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------- video
def _write_video(folder: Path, config: SynthConfig, names: list[str], rules: _Rules,
                 progress: Callable[[int], None]) -> dict:
    rng = np.random.default_rng([config.seed, 3])
    height, width = config.size, 2 * config.size
    fps = config.video_fps
    segment = max(1, int(round(config.video_segment_s * fps)))
    n_segments = -(-config.video_frames // segment)
    num_classes = len(names)
    targets = np.full(num_classes, max(1.0, n_segments * min(0.5, 1.8 / num_classes)))
    sets = _sample_labels(rng, n_segments, targets, rules, config.together_probability, max_labels=3)
    background = _background(rng, height, width)
    pad = config.size // 2

    state: dict[int, dict] = {}
    path = folder / "video.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise DataError("synth: OpenCV cannot write an mp4v video here", "install opencv-python (it bundles FFmpeg)")
    frames: list[list[str]] = []
    try:
        for f in range(config.video_frames):
            wanted = [int(k) for k in np.flatnonzero(sets[f // segment])]
            for k in list(state):
                if k not in wanted:
                    del state[k]
            for k in wanted:
                if k not in state:
                    radius = config.size * rng.uniform(0.14, 0.24)
                    speed = config.size * rng.uniform(0.012, 0.03)
                    heading = rng.uniform(0, 2 * math.pi)
                    state[k] = {
                        "x": rng.uniform(radius, width - radius), "y": rng.uniform(radius, height - radius),
                        "vx": speed * math.cos(heading), "vy": speed * math.sin(heading), "r": radius,
                        "a": rng.uniform(-_ROTATION, _ROTATION), "va": rng.uniform(-0.03, 0.03),
                        "colour": _random_colour(rng, (0.5, 1.0), (0.55, 1.0), class_hue(k, len(names))
                                                 if rng.random() < config.typical_colour else None),
                    }
            frame = background.copy()
            masks: list[tuple[int, np.ndarray]] = []
            for k in wanted:  # class order: a stable drawing order, so nothing flickers
                s = state[k]
                mask = _instance_mask(names[k], s["x"], s["y"], s["r"], s["a"], height, width, pad)
                inner = mask[pad:pad + height, pad:pad + width]
                _paint(frame, inner, s["colour"])
                masks.append((k, inner > 0))
                # Smooth motion, bouncing off the frame edges.
                s["x"] += s["vx"]
                s["y"] += s["vy"]
                s["a"] += s["va"]
                if abs(s["a"]) > _ROTATION:  # rock within the training images' rotation range
                    s["va"] = -s["va"]
                if not s["r"] * 0.6 <= s["x"] <= width - s["r"] * 0.6:
                    s["vx"] = -s["vx"]
                if not s["r"] * 0.6 <= s["y"] <= height - s["r"] * 0.6:
                    s["vy"] = -s["vy"]
            cover = np.zeros((height, width), dtype=bool)
            present: set[int] = set()
            for k, m in reversed(masks):
                area = int(m.sum())
                if area and (m & ~cover).sum() >= (1.0 - config.difficult_threshold) * area:
                    present.add(k)
                cover |= m
            frame += rng.normal(0.0, 3.0, frame.shape).astype(np.float32)
            writer.write(np.clip(frame + 0.5, 0, 255).astype(np.uint8))
            frames.append([names[k] for k in sorted(present)])
            progress(f + 1)
    finally:
        writer.release()
    labels = {
        "fps": fps, "width": width, "height": height, "frames_total": config.video_frames,
        "segment_frames": segment, "classes": names, "frames": frames,
    }
    (folder / "video_labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    return {"file": "video.mp4", "labels": "video_labels.json", "frames": config.video_frames, "fps": fps,
            "width": width, "height": height, "segment_frames": segment}


# ---------------------------------------------------------------------------------------------------------- generate
def generate(out: Path, config: SynthConfig, progress: Callable[[int, int], None] | None = None) -> dict:
    """Write a synthetic dataset in VOC layout under ``out``; return its summary (also written to ``synth.json``).

    Built in a temporary folder beside ``out`` and moved into place when complete. ``out`` must be new, empty, or a
    previous synth output (which is replaced). ``progress(done, total)`` is called after each image and video frame.
    """
    started = time.perf_counter()
    out = Path(out)
    _validate(out, config)
    names = class_names(config.classes)
    rules = _draw_rules(config.classes, config.seed)
    n_test = _n_test(config)
    sizes = {"trainval": config.images - n_test, "test": n_test}
    total = config.images + (config.video_frames if config.video else 0)
    report = progress or (lambda done, total_: None)
    split_targets, labels = _split_label_sets(config, rules, sizes)

    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.synth-", dir=out.parent))
    try:
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (build / sub).mkdir(parents=True)
        split_summary: dict[str, dict] = {}
        index = 0
        for split, n in sizes.items():
            split_summary[split] = _write_split(build, split, labels[split], split_targets[split], index, config,
                                                names, lambda done: report(done, total))
            index += n
        (build / "ImageSets" / "Main" / "classes.txt").write_text("".join(f"{name}\n" for name in names))

        video = None
        if config.video:
            video = _write_video(build, config, names, rules,
                                 lambda f: report(config.images + f, total))
        summary = _summary(config, names, rules, split_summary, video)
        (build / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
        _move_into_place(build, out)
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)

    result = dict(summary)
    result["root"] = str(out)
    result["spec"] = f"voc:{out}"
    result["paths"] = _output_paths(out, bool(video))
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def _split_label_sets(config: SynthConfig, rules: _Rules, sizes: dict[str, int]
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per split ({split: image count}): the target count of each class (the long tail's on trainval where asked,
    else balanced) and the label sets drawn towards them (one row per image)."""
    rank_targets = long_tail_targets(sizes["trainval"], config.classes, config.pareto_alpha, config.head_fraction,
                                     config.tail_ratio)
    split_targets: dict[str, np.ndarray] = {}
    balanced_fraction = min(0.5, config.labels_per_image / config.classes) if config.classes > 1 else 1.0
    for split, n in sizes.items():
        if split == "trainval" and config.long_tail:
            t = np.empty(config.classes)
            t[rules.frequency_order] = rank_targets
        else:
            t = np.full(config.classes, max(1.0, n * balanced_fraction))
        split_targets[split] = t
    labels = {
        split: _sample_labels(np.random.default_rng([config.seed, 0, i]), n, split_targets[split], rules,
                              config.together_probability)
        for i, (split, n) in enumerate(sizes.items())
    }
    return split_targets, labels


def _write_split(build: Path, split: str, labels: np.ndarray, targets: np.ndarray, first_index: int,
                 config: SynthConfig, names: list[str], report: Callable[[int], None]) -> dict:
    """Render and write a split's images (ids from ``first_index``), annotations and VOC image sets under
    ``build``; ``report(done)`` after each image (counted over the splits). Returns the split's summary."""
    n = len(labels)
    split_ids: list[str] = []
    per_class = np.zeros((n, config.classes), dtype=np.int8)  # VOC per-class value: 1 / 0 (difficult) / -1
    per_class[:] = -1
    n_objects = n_difficult = n_truncated = 0
    encode = [int(cv2.IMWRITE_JPEG_QUALITY), int(config.jpeg_quality)]
    for row in range(n):
        index = first_index + row
        image_id = f"{index:06d}"
        rng = np.random.default_rng([config.seed, 1, index])
        present = np.flatnonzero(labels[row])
        image, objects = _render_scene(rng, present, names, config.size, config.difficult_threshold,
                                      config.typical_colour)
        ok, data = cv2.imencode(".jpg", image, encode)
        if not ok:
            raise DataError("synth: OpenCV could not encode a JPEG", "check the opencv-python install")
        data.tofile(str(build / "JPEGImages" / f"{image_id}.jpg"))
        (build / "Annotations" / f"{image_id}.xml").write_text(
            _annotation_xml(image_id, config.size, objects, config.seed))
        for obj in objects:
            k = names.index(obj["name"])
            per_class[row, k] = max(per_class[row, k], 0 if obj["difficult"] else 1)
            n_objects += 1
            n_difficult += obj["difficult"]
            n_truncated += obj["truncated"]
        split_ids.append(image_id)
        report(index + 1)
    main = build / "ImageSets" / "Main"
    (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_ids))
    for k, name in enumerate(names):
        (main / f"{name}_{split}.txt").write_text(
            "".join(f"{i} {int(v):2d}\n" for i, v in zip(split_ids, per_class[:, k])))
    present_any = per_class >= 0
    counts = present_any.sum(axis=0)
    nonzero = counts[counts > 0]
    return {
        "images": n,
        "ids_file": f"ImageSets/Main/{split}.txt",
        "class_counts": {name: int(c) for name, c in zip(names, counts)},
        "class_counts_non_difficult": {name: int(c) for name, c in zip(names, (per_class == 1).sum(axis=0))},
        "target_counts": {name: round(float(t), 2) for name, t in zip(names, targets)},
        "labels_per_image_mean": round(float(present_any.sum(axis=1).mean()), 4),
        "imbalance_ratio": round(float(nonzero.max() / nonzero.min()), 3) if nonzero.size else None,
        "objects": n_objects,
        "difficult_objects": n_difficult,
        "truncated_objects": n_truncated,
    }


def _summary(config: SynthConfig, names: list[str], rules: _Rules, split_summary: dict[str, dict],
             video: dict | None) -> dict:
    """synth.json: the generator, its config, the classes, each split's summary, the rules and the video."""
    return {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "layout": "voc",
        "config": asdict(config),
        "classes": names,
        "splits": split_summary,
        "rules": {
            "together": [{"if": names[a], "then": names[b], "probability": config.together_probability}
                         for a, b in rules.together],
            "never": [{"if": names[a], "then_not": names[b]} for a, b in rules.never],
        },
        "long_tail": {
            "enabled": bool(config.long_tail),
            "applies_to": "trainval" if config.long_tail else None,
            "frequency_order": [names[k] for k in rules.frequency_order] if config.long_tail else None,
            "pareto_alpha": config.pareto_alpha,
        },
        "notes": [f"{split}: no image holds {', '.join(missing)} ({config.images} images are too few for "
                  f"{config.classes} classes)"
                  for split, missing in ((sp, [k for k, c in split_summary[sp]["class_counts"].items() if c == 0])
                                         for sp in SPLITS) if missing],
        "difficult_rule": f"an object more than {config.difficult_threshold:.0%} hidden (occlusion + border)",
        "video": video,
    }


def _output_paths(out: Path, video: bool) -> dict[str, str | None]:
    """Where the dataset's parts are (generate's result)."""
    return {
        "root": str(out),
        "images": str(out / "JPEGImages"),
        "annotations": str(out / "Annotations"),
        "image_sets": str(out / "ImageSets" / "Main"),
        "summary": str(out / SUMMARY_NAME),
        "video": str(out / "video.mp4") if video else None,
        "video_labels": str(out / "video_labels.json") if video else None,
    }


def _move_into_place(build: Path, out: Path) -> None:
    from mlic_edge.stops import signals_deferred

    with signals_deferred():  # a stop waits until the whole new output is in place
        _replace_output(build, out)


def _replace_output(build: Path, out: Path) -> None:
    if out.is_dir() and any(out.iterdir()):
        # A previous synth output: replace exactly the entries synth writes, leave anything else alone.
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        try:
            for entry in _OUTPUT_ENTRIES:
                if (out / entry).exists() or (out / entry).is_symlink():
                    os.replace(out / entry, trash / entry)
            for entry in _OUTPUT_ENTRIES:
                if (build / entry).exists():
                    os.replace(build / entry, out / entry)
        finally:
            shutil.rmtree(trash, ignore_errors=True)
    else:
        if out.is_dir():
            out.rmdir()
        os.replace(build, out)
