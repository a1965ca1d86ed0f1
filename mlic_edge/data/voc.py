"""PASCAL VOC 2007/2012 layout: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``.

Labels come from the XML objects (not the per-class list files). ``difficult`` policy:
- ``ignore`` (default): a class present only as difficult objects is -1 — left out of the loss and of AP, counted
  as negative by the thresholded metrics (ML-GCN's evaluation);
- ``positive``: it is a positive (DBL's choice);
- ``negative``: it is a negative.
Classes: ``ImageSets/Main/classes.txt`` when present (custom datasets, the synthetic data); otherwise the 20
standard VOC classes in standard order.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from mlic_edge.data.dataset import IGNORE, NEGATIVE, POSITIVE, MultiLabelDataset
from mlic_edge.errors import DataError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
DIFFICULT_POLICIES = ("ignore", "positive", "negative")
DEFAULT_SPLITS = {"train": ("trainval", "train"), "eval": ("test", "val")}


def find_voc_root(path: Path) -> Path:
    """The folder holding Annotations/: ``path`` itself, or ``VOCdevkit/VOC20xx`` / ``VOC20xx`` below it."""
    if (path / "Annotations").is_dir():
        return path
    candidates = sorted({c for pattern in ("VOCdevkit/VOC*", "VOC*") for c in path.glob(pattern)
                         if (c / "Annotations").is_dir()})
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        names = ", ".join(str(c.relative_to(path)) for c in candidates)
        raise DataError(f"{path} holds several VOC datasets ({names})", hint=f"point at one: voc:{candidates[0]}")
    raise DataError(f"{path} is not in VOC layout (no Annotations/ folder)",
                    hint="point at the VOC2007 folder (Annotations/, JPEGImages/, ImageSets/Main/)")


def available_splits(root: Path) -> list[str]:
    main = root / "ImageSets" / "Main"
    if not main.is_dir():
        return []
    return sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem and p.stem != "classes")


def default_split(root: Path, role: str) -> str:
    splits = available_splits(root)
    for name in DEFAULT_SPLITS[role]:
        if name in splits:
            return name
    raise DataError(f"{root} has no {' or '.join(DEFAULT_SPLITS[role])} split in ImageSets/Main",
                    hint=f"available splits: {', '.join(splits) or 'none'}; pass --train-split/--eval-split")


def class_list(root: Path) -> tuple[list[str], bool]:
    """(names, custom): classes.txt when present, else the standard VOC classes."""
    classes_file = root / "ImageSets" / "Main" / "classes.txt"
    if classes_file.is_file():
        names = [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
        if not names or len(set(names)) != len(names):
            raise DataError(f"{classes_file} is empty or repeats a name", hint="one unique class name per line")
        return names, True
    return list(VOC_CLASSES), False


def read_voc(root: Path, split: str, difficult: str = "ignore") -> MultiLabelDataset:
    if difficult not in DIFFICULT_POLICIES:
        raise DataError(f"unknown difficult policy {difficult!r}", hint=f"use one of {', '.join(DIFFICULT_POLICIES)}")
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise DataError(f"split {split!r} not found: {split_file} is missing",
                        hint=f"available splits: {', '.join(available_splits(root)) or 'none'}")
    ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    names, custom = class_list(root)
    index = {name: i for i, name in enumerate(names)}
    paths, rows, unreadable = [], [], []
    for image_id in ids:
        xml_path = root / "Annotations" / f"{image_id}.xml"
        try:
            tree = ET.parse(xml_path)
        except (OSError, ET.ParseError):
            unreadable.append(xml_path.name)
            continue
        row = np.full(len(names), NEGATIVE, dtype=np.int8)
        for obj in tree.getroot().iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in index:
                hint = ("add it to ImageSets/Main/classes.txt" if custom else
                        "a dataset with other classes needs ImageSets/Main/classes.txt (one name per line)")
                raise DataError(f"unknown class {name!r} in {xml_path}", hint=hint)
            column = index[name]
            if (obj.findtext("difficult") or "0").strip() == "1":
                if row[column] == NEGATIVE:
                    row[column] = {"ignore": IGNORE, "positive": POSITIVE, "negative": NEGATIVE}[difficult]
            else:
                row[column] = POSITIVE
        filename = (tree.getroot().findtext("filename") or f"{image_id}.jpg").strip()
        paths.append(root / "JPEGImages" / filename)
        rows.append(row)
    notes = []
    if unreadable:
        notes.append(f"{len(unreadable)} annotation file(s) of split {split!r} missing or unreadable, images "
                     f"skipped: {', '.join(unreadable[:3])}" + (" ..." if len(unreadable) > 3 else ""))
    targets = np.stack(rows) if rows else np.zeros((0, len(names)), np.int8)
    return MultiLabelDataset(names=names, image_paths=paths, targets=targets, root=root, format="voc", split=split,
                             spec=f"voc:{root}", notes=notes)
