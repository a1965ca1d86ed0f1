"""COCO 2014/2017: ``annotations/instances_<split><year>.json`` and image folders ``<split><year>/`` (or
``images/<split><year>/``).

Splits: ``train`` / ``val`` pick the newest year present (2017 before 2014); ``train2014``, ``val2017`` ... pick
that file.

Classes are in category-id order (1, 2, ... 90 with gaps), named by the category's ``name`` — ASL/Q2L order;
ML-GCN's pickles are alphabetical, so never mix the two.

Images without any annotation are KEPT as all-negative rows (as Q2L does; about 1% of COCO) unless
``drop_unannotated=True`` (ML-GCN and MSRN drop them); how many were kept or dropped goes in ``notes``.
Crowd (``iscrowd=1``) annotations count like the others.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from mlic_edge.data.dataset import POSITIVE, MultiLabelDataset
from mlic_edge.errors import DataError

_INSTANCES = re.compile(r"^instances_([A-Za-z]+)(\d{4})\.json$")
DEFAULT_SPLITS = {"train": "train", "eval": "val"}


def annotation_files(root: Path) -> dict[str, Path]:
    """{'train2017': path, 'val2017': path, ...} of the instances files present."""
    folder = root / "annotations"
    found = {}
    for path in sorted(folder.glob("instances_*.json")) if folder.is_dir() else []:
        match = _INSTANCES.match(path.name)
        if match:
            found[match.group(1) + match.group(2)] = path
    return found


def available_splits(root: Path) -> list[str]:
    return list(annotation_files(root))


def resolve_split(root: Path, split: str) -> str:
    """'train' -> the newest trainYYYY present; 'train2014' as is."""
    files = annotation_files(root)
    if split in files:
        return split
    matches = sorted((name for name in files if re.fullmatch(rf"{re.escape(split)}\d{{4}}", name)), reverse=True)
    if matches:
        return matches[0]
    raise DataError(f"COCO split {split!r} not found under {root / 'annotations'}",
                    hint=f"available: {', '.join(files) or 'no instances_*.json files'}")


def image_folder(root: Path, split: str) -> Path:
    candidates = (root / split, root / "images" / split)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DataError(f"no image folder for COCO split {split}: neither {candidates[0]} nor {candidates[1]} exists",
                    hint=f"unpack {split}.zip into {root}")


def _load(path: Path) -> tuple[list[dict], list[dict], list[dict]]:
    try:
        with path.open("rb") as handle:
            data = json.load(handle)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        images = data["images"]
        annotations = data.get("annotations") or []
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path} is not a readable COCO instances file ({type(error).__name__}: {error})",
                        hint="it needs 'images', 'annotations' and 'categories'; re-download it") from error
    return categories, images, annotations


def read_coco(root: Path, split: str, drop_unannotated: bool = False) -> MultiLabelDataset:
    split = resolve_split(root, split)
    path = annotation_files(root)[split]
    folder = image_folder(root, split)
    categories, images, annotations = _load(path)
    names = [str(c["name"]) for c in categories]
    column_of = {c["id"]: i for i, c in enumerate(categories)}
    row_of = {image["id"]: i for i, image in enumerate(images)}
    targets = np.zeros((len(images), len(names)), dtype=np.int8)
    if annotations:
        try:  # one pass: (row, column) of every annotation, then a single scatter
            rows = np.fromiter((row_of[a["image_id"]] for a in annotations), dtype=np.int64, count=len(annotations))
            cols = np.fromiter((column_of[a["category_id"]] for a in annotations), dtype=np.int64,
                               count=len(annotations))
        except KeyError as error:
            raise DataError(f"{path}: an annotation refers to an unknown image or category id {error}",
                            hint="the file is inconsistent; re-download it") from error
        targets[rows, cols] = POSITIVE
    del annotations
    paths = [folder / image["file_name"] for image in images]
    notes = []
    annotated = targets.any(axis=1)
    unannotated = int((~annotated).sum())
    if unannotated and drop_unannotated:
        notes.append(f"{unannotated} image(s) of {split} without annotations dropped")
        paths = [p for p, keep in zip(paths, annotated) if keep]
        targets = targets[annotated]
    elif unannotated:
        notes.append(f"{unannotated} image(s) of {split} without annotations kept as all-negative")
    return MultiLabelDataset(names=names, image_paths=paths, targets=targets, root=root, format="coco", split=split,
                             spec=f"coco:{root}", notes=notes)
