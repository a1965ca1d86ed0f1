"""Dataset statistics: class counts, head/middle/tail groups, labels per image, co-occurrence (+ a heatmap PNG).

Counts are images holding a class (targets == 1; ``-1`` "ignore" entries are counted apart, never as positives).
Groups follow DBL/DAB's evaluation split: head > ``head_threshold`` training images, tail < ``tail_threshold``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mlic_edge.data.dataset import IGNORE, POSITIVE, MultiLabelDataset
from mlic_edge.errors import DataError
from mlic_edge.io import atomic_path


def cooccurrence_matrix(targets: np.ndarray) -> np.ndarray:
    """(C, C) int64: images holding both i and j (positives only); the diagonal is each class's count."""
    positive = (np.asarray(targets) == POSITIVE).astype(np.int64)
    return positive.T @ positive


def dataset_stats(dataset: MultiLabelDataset, head_threshold: int = 100, tail_threshold: int = 20) -> dict:
    """JSON-ready statistics of one split (plain Python types only).

    Keys: ``images``, ``labels`` (names in order), ``class_counts`` {name: images}, ``labels_per_image``
    {mean, min, max, histogram {"k": images}}, ``images_without_labels``, ``ignored_entries`` (count of -1),
    ``groups`` {head, middle, tail: [names]}, ``imbalance_ratio`` (max / min nonzero count, ``None`` without any),
    ``cooccurrence`` (C x C list of ints), ``split``, ``spec``, plus ``format``, ``classes``, ``positives``,
    ``classes_without_images``, ``thresholds``. Histogram keys are strings so the dict survives a JSON round trip.
    """
    targets = np.asarray(dataset.targets)
    names = list(dataset.names)
    if targets.ndim != 2 or targets.shape != (len(dataset.image_paths), len(names)):
        raise DataError(
            f"dataset targets have shape {targets.shape}, expected ({len(dataset.image_paths)}, {len(names)})",
            "the dataset reader built an inconsistent split; re-open the dataset")
    n_images = int(targets.shape[0])
    positive = targets == POSITIVE
    counts = positive.sum(axis=0).astype(np.int64)
    per_image = positive.sum(axis=1).astype(np.int64)
    histogram: dict[str, int] = {}
    if n_images:
        values, freq = np.unique(per_image, return_counts=True)
        histogram = {str(int(v)): int(f) for v, f in zip(values, freq)}
    nonzero = counts[counts > 0]
    groups: dict[str, list[str]] = {"head": [], "middle": [], "tail": []}
    for name, count in zip(names, counts):
        if count > head_threshold:
            groups["head"].append(name)
        elif count < tail_threshold:
            groups["tail"].append(name)
        else:
            groups["middle"].append(name)
    return {
        "images": n_images,
        "classes": len(names),
        "labels": names,
        "class_counts": {name: int(c) for name, c in zip(names, counts)},
        "positives": int(counts.sum()),
        "labels_per_image": {
            "mean": float(per_image.mean()) if n_images else 0.0,
            "min": int(per_image.min()) if n_images else 0,
            "max": int(per_image.max()) if n_images else 0,
            "histogram": histogram,
        },
        "images_without_labels": int((per_image == 0).sum()),
        "ignored_entries": int((targets == IGNORE).sum()),
        "classes_without_images": [name for name, c in zip(names, counts) if c == 0],
        "groups": groups,
        "thresholds": {"head_above": int(head_threshold), "tail_below": int(tail_threshold)},
        "imbalance_ratio": float(nonzero.max() / nonzero.min()) if nonzero.size else None,
        "cooccurrence": cooccurrence_matrix(targets).tolist(),
        "split": dataset.split,
        "spec": dataset.spec,
        "format": dataset.format,
    }


def format_stats_table(stats: dict[str, Any]):
    """A rich Table of per-class count, share of images and group, for the CLI to print."""
    from rich.table import Table

    group_of = {name: group for group, members in stats["groups"].items() for name in members}
    n_images = max(int(stats["images"]), 1)
    ratio = stats.get("imbalance_ratio")
    per_image = stats["labels_per_image"]
    title = (f"{stats.get('spec') or 'dataset'} [{stats.get('split') or '-'}]: {stats['images']} images, "
             f"{len(stats['labels'])} classes, {per_image['mean']:.2f} labels/image")
    if ratio:
        title += f", imbalance {ratio:.1f}"
    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("share", justify="right")
    table.add_column("group")
    for index, name in enumerate(stats["labels"]):
        count = int(stats["class_counts"][name])
        table.add_row(str(index), name, str(count), f"{100.0 * count / n_images:.1f}%", group_of.get(name, ""))
    if stats.get("images_without_labels") or stats.get("ignored_entries"):
        table.caption = (f"{stats.get('images_without_labels', 0)} images without labels, "
                         f"{stats.get('ignored_entries', 0)} ignored (-1) entries")
    return table


def stats_rows(stats: dict[str, Any]) -> list[tuple[str, int, float, str]]:
    """(class, images, share of images, group) per class: the table's content as plain values."""
    group_of = {name: group for group, members in stats["groups"].items() for name in members}
    n_images = max(int(stats["images"]), 1)
    return [(name, int(stats["class_counts"][name]), int(stats["class_counts"][name]) / n_images,
             group_of.get(name, "")) for name in stats["labels"]]


# ------------------------------------------------------------------------------------------------------------ heatmap
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text_size(text: str, scale: float) -> tuple[int, int, int]:
    (w, h), base = cv2.getTextSize(text, _FONT, scale, 1)
    return w, h, base


def conditional_probability(cooccurrence: np.ndarray) -> np.ndarray:
    """P(j | i) = cooc[i, j] / cooc[i, i]; rows of classes without images are 0."""
    cooc = np.asarray(cooccurrence, dtype=np.float64)
    counts = np.diag(cooc)
    with np.errstate(divide="ignore", invalid="ignore"):
        prob = np.where(counts[:, None] > 0, cooc / np.maximum(counts[:, None], 1.0), 0.0)
    return prob


def render_cooccurrence_heatmap(names: list[str], cooccurrence: np.ndarray, title: str) -> np.ndarray:
    """BGR uint8 image: C x C cells coloured (viridis) by P(column | row), names on both axes, a colour bar."""
    num = len(names)
    cell = int(np.clip(1000 // max(num, 1), 16, 48))
    scale = float(np.clip(cell / 40.0, 0.38, 0.6))
    prob = conditional_probability(cooccurrence)
    counts = np.diag(np.asarray(cooccurrence))
    grid_px = num * cell

    levels = np.round(np.clip(prob, 0.0, 1.0) * 255).astype(np.uint8)
    colours = cv2.applyColorMap(levels, cv2.COLORMAP_VIRIDIS)
    colours[counts == 0] = (160, 160, 160)  # no images for this row: undefined, grey
    grid = cv2.resize(colours, (grid_px, grid_px), interpolation=cv2.INTER_NEAREST)
    if cell >= 12:
        for k in range(1, num):
            grid[k * cell, :] = 255
            grid[:, k * cell] = 255
    if cell >= 36:  # room for the value itself
        for i in range(num):
            for j in range(num):
                if counts[i] == 0:
                    continue
                text = f"{prob[i, j]:.2f}"
                w, h, _ = _text_size(text, scale * 0.7)
                colour = (0, 0, 0) if prob[i, j] > 0.55 else (255, 255, 255)
                cv2.putText(grid, text, (j * cell + (cell - w) // 2, i * cell + (cell + h) // 2), _FONT,
                            scale * 0.7, colour, 1, cv2.LINE_AA)

    label_w = max(_text_size(name, scale)[0] for name in names) + 10
    title_scale = 0.6
    title_h = _text_size(title, title_scale)[1] + 2 * 12
    subtitle = "cell (row i, column j) = P(j | i) = images with i and j / images with i"
    bar_w, bar_gap, bar_label_w = 18, 20, _text_size("1.0", 0.45)[0] + 8
    margin = 12
    width = max(margin + label_w + grid_px + bar_gap + bar_w + bar_label_w + margin,
                margin + _text_size(title, title_scale)[0] + margin,
                margin + _text_size(subtitle, 0.42)[0] + margin)
    top = title_h + 22 + label_w
    height = top + grid_px + margin
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)

    cv2.putText(canvas, title, (margin, 12 + _text_size(title, title_scale)[1]), _FONT, title_scale, (0, 0, 0), 1,
                cv2.LINE_AA)
    cv2.putText(canvas, subtitle, (margin, title_h + 12), _FONT, 0.42, (60, 60, 60), 1, cv2.LINE_AA)
    gx, gy = margin + label_w, top
    canvas[gy:gy + grid_px, gx:gx + grid_px] = grid

    # Row names, right-aligned against the grid.
    for i, name in enumerate(names):
        w, h, _ = _text_size(name, scale)
        cv2.putText(canvas, name, (gx - 6 - w, gy + i * cell + (cell + h) // 2), _FONT, scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    # Column names, written horizontally on a strip and turned to read bottom-to-top above each column.
    strip = np.full((cell, label_w), 255, dtype=np.uint8)
    for j, name in enumerate(names):
        strip[:] = 255
        w, h, _ = _text_size(name, scale)
        cv2.putText(strip, name, (4, (cell + h) // 2), _FONT, scale, 0, 1, cv2.LINE_AA)
        turned = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)  # (label_w, cell)
        canvas[gy - label_w:gy, gx + j * cell:gx + (j + 1) * cell] = turned[:, :, None]

    # Colour bar.
    bx = gx + grid_px + bar_gap
    ramp = np.linspace(255, 0, grid_px).astype(np.uint8)[:, None]
    bar = cv2.applyColorMap(np.repeat(ramp, bar_w, axis=1), cv2.COLORMAP_VIRIDIS)
    canvas[gy:gy + grid_px, bx:bx + bar_w] = bar
    for value, y in (("1.0", gy + 10), ("0.5", gy + grid_px // 2 + 4), ("0.0", gy + grid_px - 2)):
        cv2.putText(canvas, value, (bx + bar_w + 4, y), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def save_cooccurrence_heatmap(dataset: MultiLabelDataset, path: Path) -> Path:
    """Write the co-occurrence heatmap of ``dataset`` as a PNG at ``path`` (atomically); return the path."""
    if dataset.num_classes < 1:
        raise DataError("cannot draw a co-occurrence heatmap for a dataset with no classes",
                        "check the dataset's labels")
    path = Path(path)
    cooc = cooccurrence_matrix(dataset.targets)
    title = f"Label co-occurrence: {dataset.spec or dataset.root} [{dataset.split}], {len(dataset)} images"
    image = render_cooccurrence_heatmap(list(dataset.names), cooc, title)
    ok, data = cv2.imencode(".png", image)  # PNG whatever the suffix; the temp name from atomic_path does not matter
    if not ok:
        raise DataError(f"could not encode the heatmap for {path}", "check the opencv-python install")
    with atomic_path(path) as tmp:
        data.tofile(str(tmp))
    return path
