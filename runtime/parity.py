"""mAP parity: a backend's scores against the PyTorch reference (reference.npz) on the same images.

Tolerances are per precision (``DEFAULT_MAP_TOLERANCE``): the absolute mAP drop allowed, as a fraction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from mlic_edge import metrics
from mlic_edge.data import open_dataset
from mlic_edge.data.images import preprocess, read_image
from mlic_edge.errors import ParityError, RunDirError
from mlic_edge.rundir import RunDir
from mlic_edge.runtime.backends.base import Backend
from mlic_edge.runtime.pipeline import ModelSpec

DEFAULT_MAP_TOLERANCE = {"fp32": 0.001, "fp16": 0.005, "int8": 0.02}


@dataclass
class Reference:
    scores: np.ndarray
    targets: np.ndarray
    image_ids: list[str]
    labels: list[str]
    spec: str
    split: str

    @classmethod
    def load(cls, run: RunDir) -> "Reference":
        path = run.require(run.reference, "mlic-edge export")
        with np.load(path) as data:
            return cls(data["scores"], data["targets"], [str(i) for i in data["image_ids"]],
                       [str(n) for n in data["labels"]], str(data["spec"]), str(data["split"]))


def compute_parity(run: RunDir, backend: Backend, *, data: str | None = None, threshold: float = 0.5,
                   map_tolerance: float | None = None, batch_size: int = 16,
                   on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    meta = run.read()
    spec = ModelSpec.from_run(meta)
    reference = Reference.load(run)
    if reference.labels != spec.labels:
        raise RunDirError(f"{run.reference} was written for other labels than run.json",
                          hint="re-run `mlic-edge export` to refresh the reference")
    dataset = open_dataset(data or reference.spec, role="eval", split=reference.split,
                           difficult=meta.get("dataset", {}).get("difficult", "ignore"))
    by_id = {image_id: index for index, image_id in enumerate(dataset.image_ids())}
    missing = [image_id for image_id in reference.image_ids if image_id not in by_id]
    if missing:
        raise RunDirError(f"{len(missing)} reference images are not in {dataset.spec} (first: {missing[0]})",
                          hint="point --data at the dataset the reference was made on")

    scores = np.zeros_like(reference.scores)
    for start in range(0, len(reference.image_ids), batch_size):
        ids = reference.image_ids[start:start + batch_size]
        tensors = []
        for image_id in ids:
            image = read_image(dataset.image_paths[by_id[image_id]])
            if image is None:
                raise RunDirError(f"reference image {image_id} can no longer be read", hint="check the dataset")
            tensors.append(preprocess(image, spec.img_size, spec.mean, spec.std))
        scores[start:start + len(ids)] = backend.infer(np.stack(tensors))
        if on_batch:
            on_batch(len(ids))

    targets = reference.targets
    ref_map = metrics.mean_average_precision(reference.scores, targets).map
    got_map = metrics.mean_average_precision(scores, targets).map
    diff = np.abs(scores.astype(np.float64) - reference.scores.astype(np.float64))
    same_sets = np.all((scores >= threshold) == (reference.scores >= threshold), axis=1)
    tolerance = DEFAULT_MAP_TOLERANCE[backend.info.precision] if map_tolerance is None else map_tolerance
    drop = float(ref_map - got_map)
    return {
        "backend": backend.info.as_dict(),
        "reference": {"backend": "torch", "file": run.reference.name, **meta.get("reference", {})},
        "images": int(len(reference.image_ids)),
        "split": reference.split,
        "mAP_reference": float(ref_map),
        "mAP_backend": float(got_map),
        "mAP_diff": float(got_map - ref_map),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "per_label_max_abs_diff": {label: float(v) for label, v in zip(spec.labels, diff.max(axis=0))},
        "identical_label_sets": float(same_sets.mean()) if len(same_sets) else 1.0,
        "threshold": threshold,
        "map_tolerance": tolerance,
        "passed": bool(drop <= tolerance),
    }


def check_parity(report: dict[str, Any]) -> None:
    if not report["passed"]:
        raise ParityError(
            f"mAP {report['mAP_backend']:.4f} on {report['backend']['backend']} ({report['backend']['precision']}) "
            f"is {report['mAP_reference'] - report['mAP_backend']:.4f} below the reference "
            f"{report['mAP_reference']:.4f}, more than the tolerance {report['map_tolerance']}",
            hint="inspect reports/parity.json; pass --map-tolerance to accept a larger drop")


def parity_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    backend = report["backend"]
    return [
        ("backend", f"{backend['backend']} {backend['version']} ({backend['device']}, {backend['precision']})"),
        ("images", f"{report['images']} ({report['split']})"),
        ("mAP reference (PyTorch)", f"{report['mAP_reference'] * 100:.2f}"),
        ("mAP backend", f"{report['mAP_backend'] * 100:.2f}"),
        ("mAP difference (points)", f"{report['mAP_diff'] * 100:+.3f}"),
        ("max abs score diff", f"{report['max_abs_diff']:.2e}"),
        ("mean abs score diff", f"{report['mean_abs_diff']:.2e}"),
        (f"identical label sets @ {report['threshold']}", f"{report['identical_label_sets'] * 100:.1f}%"),
        ("tolerance (mAP drop)", f"{report['map_tolerance'] * 100:.2f} points"),
        ("result", "PASS" if report["passed"] else "FAIL"),
    ]


def parity_markdown(report: dict[str, Any]) -> str:
    lines = ["# Parity", "", "| | |", "|---|---|"] + [f"| {name} | {value} |" for name, value in parity_rows(report)]
    return "\n".join(lines) + "\n"


def parity_table(report: dict[str, Any]):
    from rich.table import Table

    table = Table(title="parity against the PyTorch reference", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in parity_rows(report):
        table.add_row(name, value)
    return table
