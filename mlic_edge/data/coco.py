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
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mlic_edge.data.dataset import POSITIVE, MultiLabelDataset, class_name_problem
from mlic_edge.errors import DataError

# The 80 COCO 2014/2017 categories in category-id order (ids 1-90 with gaps): the order mlic-edge's reader and
# Query2Label use. ML-GCN and MSRN number them alphabetically instead (mlic_edge/models/official/).
COCO_CATEGORY_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")
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


def _not_coco(path: Path, why: str) -> DataError:
    return DataError(f"{path} is not a readable COCO instances file ({why})",
                     hint="it needs 'images', 'annotations' and 'categories'; re-download it")


def _json_kind(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    kinds = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}
    return kinds.get(type(value), type(value).__name__)


def _is_id(value: Any, *kinds: type) -> bool:
    return isinstance(value, kinds) and not isinstance(value, bool)  # JSON true is no id, though Python's 1 == True


def _objects(path: Path, data: dict, key: str) -> list[dict]:
    """``data[key]``: a list of JSON objects (``annotations`` may be missing or null: no annotation)."""
    entries = data.get(key)
    if entries is None and key == "annotations":
        return []
    if not isinstance(entries, list):
        raise _not_coco(path, f"no {key!r}" if entries is None else
                        f"{key!r} is {_json_kind(entries)}, not an array")
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _not_coco(path, f"{key}[{position}] is {_json_kind(entry)}, not an object")
    return entries


def _load(path: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """(categories in id order, images, annotations), each entry checked where a wrong one would mislabel."""
    try:
        with path.open("rb") as handle:
            data = json.load(handle)
    except (OSError, ValueError, RecursionError) as error:
        raise _not_coco(path, f"{type(error).__name__}: {error}") from error
    if not isinstance(data, dict):
        raise _not_coco(path, f"the top level is {_json_kind(data)}, not an object")
    categories, images = _objects(path, data, "categories"), _objects(path, data, "images")
    if not categories:
        raise _not_coco(path, "'categories' is empty")
    for position, category in enumerate(categories):
        name = category.get("name")
        if not _is_id(category.get("id"), int):
            problem = f"needs an integer id, has {category.get('id')!r}"
        elif not (isinstance(name, str) and name.strip()):
            problem = f"needs a non-empty name, has {name!r}"
        else:
            problem = class_name_problem(name)
        if problem:
            raise _not_coco(path, f"categories[{position}] {problem}")
    for key in ("id", "name"):
        repeated = [value for value, count in Counter(c[key] for c in categories).items() if count > 1]
        if repeated:
            raise _not_coco(path, f"category {key} {', '.join(map(repr, repeated))} appears more than once")
    seen_images: set[int | str] = set()
    for position, image in enumerate(images):
        image_id, file_name = image.get("id"), image.get("file_name")
        if not _is_id(image_id, int, str) or not (isinstance(file_name, str) and file_name.strip()):
            raise _not_coco(path, f"images[{position}] needs an integer or string id and a file_name")
        if image_id in seen_images:
            raise _not_coco(path, f"image id {image_id!r} appears more than once")
        seen_images.add(image_id)
    return sorted(categories, key=lambda c: c["id"]), images, _objects(path, data, "annotations")


def _annotation_problem(path: Path, annotations: list[dict], row_of: dict, column_of: dict) -> DataError:
    """The first annotation that names no image or category of the file (the slow pass, only after a failure)."""
    for position, annotation in enumerate(annotations):
        label = f"id {annotation['id']!r}" if "id" in annotation else f"#{position} (no id)"
        for key, known, what in (("image_id", row_of, "images"), ("category_id", column_of, "categories")):
            value = annotation.get(key)
            if not _is_id(value, int, str) or value not in known:
                return DataError(f"{path}: annotation {label} has {key} {value!r}, which is not among the file's "
                                 f"{what}", hint="the file is inconsistent; fix or re-download it")
    return _not_coco(path, "an annotation refers to an unknown image or category")


def read_coco(root: Path, split: str, drop_unannotated: bool = False) -> MultiLabelDataset:
    split = resolve_split(root, split)
    path = annotation_files(root)[split]
    folder = image_folder(root, split)
    categories, images, annotations = _load(path)
    names = [c["name"] for c in categories]
    column_of = {c["id"]: i for i, c in enumerate(categories)}
    row_of = {image["id"]: i for i, image in enumerate(images)}
    targets = np.zeros((len(images), len(names)), dtype=np.int8)
    if annotations:
        try:  # one pass: (row, column) of every annotation, then a single scatter
            rows = np.fromiter((row_of[a["image_id"]] for a in annotations), dtype=np.int64, count=len(annotations))
            cols = np.fromiter((column_of[a["category_id"]] for a in annotations), dtype=np.int64,
                               count=len(annotations))
        except (KeyError, TypeError) as error:
            raise _annotation_problem(path, annotations, row_of, column_of) from error
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
