"""PASCAL VOC 2007/2012 layout: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``.

The root may be the ``VOC2007`` folder itself or a folder holding ``VOCdevkit/VOC20xx`` or ``VOC20xx`` (exactly one
of them; several is an error asking to point at one).

Labels come from the XML ``<object><name>`` / ``<difficult>`` fields (not from the per-class
``<class>_<split>.txt`` files). A class with at least one non-difficult object is 1. ``difficult`` policy for a
class present only as difficult objects:
- ``ignore`` (default): -1 — left out of the loss and of AP, counted as negative by the thresholded metrics
  (ML-GCN's evaluation);
- ``positive``: 1 (DBL's choice);
- ``negative``: 0.

Classes: ``ImageSets/Main/classes.txt`` (one name per line, its order) when present — custom datasets and the
synthetic data use it; otherwise the 20 standard VOC classes in standard order, and an object with any other name
is an error asking for classes.txt.

Image path: ``JPEGImages/<filename from the XML>``, else ``JPEGImages/<id>.jpg``. An id of the split whose XML is
missing is skipped and counted in ``notes`` (as an image missing on disk is); an XML that is there but cannot be read
or parsed (truncated, not UTF-8) is an error naming it and the line, never a silently dropped image.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from mlic_edge.data.dataset import (CLASSES_FILE, IGNORE, NEGATIVE, POSITIVE, MultiLabelDataset, read_class_file,
                                    read_text)
from mlic_edge.errors import DataError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
DIFFICULT_POLICIES = ("ignore", "positive", "negative")
DIFFICULT_VALUE = {"ignore": IGNORE, "positive": POSITIVE, "negative": NEGATIVE}
DEFAULT_SPLITS = {"train": ("trainval", "train"), "eval": ("test", "val")}


def find_voc_root(path: Path) -> Path:
    """The folder holding Annotations/: ``path`` itself, or ``VOCdevkit/VOC20xx`` / ``VOC20xx`` below it."""
    if (path / "Annotations").is_dir():
        return path
    candidates = sorted({c.resolve() for pattern in ("VOCdevkit/VOC*", "VOC*") for c in path.glob(pattern)
                         if (c / "Annotations").is_dir()})
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        names = ", ".join(_relative(c, path) for c in candidates)
        raise DataError(f"{path} holds several VOC datasets ({names})", hint=f"point at one: voc:{candidates[0]}")
    raise DataError(f"{path} is not in VOC layout (no Annotations/ folder, nor VOCdevkit/VOC20xx or VOC20xx below)",
                    hint="point at the VOC2007 folder (Annotations/, JPEGImages/, ImageSets/Main/)")


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)


def available_splits(root: Path) -> list[str]:
    """Split files of ImageSets/Main, leaving out classes.txt and the per-class ``<class>_<split>.txt`` lists."""
    main = root / "ImageSets" / "Main"
    if not main.is_dir():
        return []
    try:
        names = class_list(root)[0]
    except DataError:
        names = list(VOC_CLASSES)
    prefixes = tuple(f"{name}_" for name in set(names) | set(VOC_CLASSES))
    return sorted(p.stem for p in main.glob("*.txt")
                  if p.is_file() and p.name != CLASSES_FILE and not p.stem.startswith(prefixes))


def default_split(root: Path, role: str) -> str:
    splits = available_splits(root)
    for name in DEFAULT_SPLITS[role]:
        if name in splits:
            return name
    raise DataError(f"{root} has no {' or '.join(DEFAULT_SPLITS[role])} split in ImageSets/Main",
                    hint=f"available splits: {', '.join(splits) or 'none'}; pass --train-split/--eval-split")


def class_list(root: Path) -> tuple[list[str], bool]:
    """(names, custom): ImageSets/Main/classes.txt when present, else the standard VOC classes."""
    classes_file = root / "ImageSets" / "Main" / CLASSES_FILE
    if classes_file.is_file():
        return read_class_file(classes_file), True
    return list(VOC_CLASSES), False


def read_split_ids(root: Path, split: str) -> list[str]:
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise DataError(f"split {split!r} not found: {split_file} is missing",
                        hint=f"available splits: {', '.join(available_splits(root)) or 'none'}")
    ids = [line.split()[0] for line in read_text(split_file).splitlines() if line.strip()]
    if not ids:
        raise DataError(f"split {split!r} of voc:{root} has no images: {split_file} is empty",
                        hint=f"one image id per line; available splits: {', '.join(available_splits(root))}")
    return ids


def _is_difficult(obj: ET.Element) -> bool:
    return (obj.findtext("difficult") or "0").strip().lower() in ("1", "true")


def _unreadable_annotation(root: Path, split: str, image_id: str, xml_path: Path,
                           error: OSError | ET.ParseError) -> DataError:
    hint = f"restore the file, or take {image_id!r} out of {root / 'ImageSets' / 'Main' / f'{split}.txt'}"
    if isinstance(error, ET.ParseError):
        reason = error.msg.rsplit(": line ", 1)[0]  # expat ends its message with the position, given here already
        return DataError(f"{xml_path}, line {error.position[0]}: invalid XML ({reason})", hint=hint)
    return DataError(f"cannot read {xml_path}: {error.strerror or error}", hint=hint)


def read_voc(root: Path, split: str, difficult: str = "ignore") -> MultiLabelDataset:
    if difficult not in DIFFICULT_POLICIES:
        raise DataError(f"unknown difficult policy {difficult!r}", hint=f"use one of {', '.join(DIFFICULT_POLICIES)}")
    ids = read_split_ids(root, split)
    names, custom = class_list(root)
    index = {name: i for i, name in enumerate(names)}
    only_difficult = DIFFICULT_VALUE[difficult]
    paths, rows, missing = [], [], []
    for image_id in ids:
        xml_path = root / "Annotations" / f"{image_id}.xml"
        try:
            annotation = ET.parse(xml_path).getroot()
        except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: an id holding a NUL names no file
            missing.append(xml_path.name)
            continue
        except (OSError, ET.ParseError) as error:
            raise _unreadable_annotation(root, split, image_id, xml_path, error) from error
        row = np.full(len(names), NEGATIVE, dtype=np.int8)
        hard = np.zeros(len(names), dtype=bool)
        for obj in annotation.findall("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in index:
                what = f"unknown class {name!r}" if name else "an object without a <name>"
                hint = (f"add it to {root / 'ImageSets' / 'Main' / CLASSES_FILE}" if custom else
                        "these are not the 20 standard VOC classes: write ImageSets/Main/classes.txt "
                        "(one class name per line, in the order you want)")
                raise DataError(f"{what} in {xml_path}", hint=hint)
            if _is_difficult(obj):
                hard[index[name]] = True
            else:
                row[index[name]] = POSITIVE
        row[hard & (row != POSITIVE)] = only_difficult
        filename = (annotation.findtext("filename") or "").strip() or f"{image_id}.jpg"
        paths.append(root / "JPEGImages" / filename)
        rows.append(row)
    notes = []
    if missing:
        notes.append(f"{len(missing)} annotation file(s) of split {split!r} missing, images skipped: "
                     f"{', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
    targets = np.stack(rows) if rows else np.zeros((0, len(names)), np.int8)
    return MultiLabelDataset(names=names, image_paths=paths, targets=targets, root=root, format="voc", split=split,
                             spec=f"voc:{root}", notes=notes)
