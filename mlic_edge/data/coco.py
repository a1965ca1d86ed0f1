"""COCO 2014/2017: ``annotations/instances_<split><year>.json`` and image folders ``<split><year>/`` (or
``images/<split><year>/``).

Classes are in category-id order, named by the category's ``name`` (ASL/Q2L order; ML-GCN's pickles are
alphabetical — never mix the two). Images without annotations are kept as all-negative (as Q2L does) unless
``drop_unannotated``; ML-GCN and MSRN drop them. Crowd annotations count like the others.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from mlic_edge.data.dataset import POSITIVE, MultiLabelDataset
from mlic_edge.errors import DataError

_INSTANCES = re.compile(r"^instances_([a-z]+)(\d{4})\.json$")
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


def _image_folder(root: Path, split: str) -> Path:
    for candidate in (root / split, root / "images" / split):
        if candidate.is_dir():
            return candidate
    return root / split


def read_coco(root: Path, split: str, drop_unannotated: bool = False) -> MultiLabelDataset:
    split = resolve_split(root, split)
    path = annotation_files(root)[split]
    try:
        data = json.loads(path.read_text())
        categories = sorted(data["categories"], key=lambda c: c["id"])
        images = data["images"]
        annotations = data.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path} is not a COCO instances file ({type(error).__name__}: {error})",
                        hint="it needs 'images', 'annotations' and 'categories'") from error
    names = [str(c["name"]) for c in categories]
    column_of = {c["id"]: i for i, c in enumerate(categories)}
    row_of = {image["id"]: i for i, image in enumerate(images)}
    targets = np.zeros((len(images), len(names)), dtype=np.int8)
    if annotations:
        try:
            rows = np.fromiter((row_of[a["image_id"]] for a in annotations), dtype=np.int64, count=len(annotations))
            cols = np.fromiter((column_of[a["category_id"]] for a in annotations), dtype=np.int64,
                               count=len(annotations))
        except KeyError as error:
            raise DataError(f"{path}: an annotation refers to unknown image or category id {error}",
                            hint="the file is inconsistent; re-download it") from error
        targets[rows, cols] = POSITIVE
    folder = _image_folder(root, split)
    paths = [folder / image["file_name"] for image in images]
    notes = []
    if drop_unannotated:
        keep = targets.any(axis=1)
        if not keep.all():
            notes.append(f"{int((~keep).sum())} unannotated image(s) of {split} dropped")
        paths = [p for p, k in zip(paths, keep) if k]
        targets = targets[keep]
    return MultiLabelDataset(names=names, image_paths=paths, targets=targets, root=root, format="coco", split=split,
                             spec=f"coco:{root}", notes=notes)
