"""Datasets, chosen by a DATA argument: a path (format detected) or ``voc:PATH``, ``coco:PATH``, ``csv:PATH``.

Detection of a plain path: ``Annotations/``, ``VOCdevkit/`` or ``VOC20xx/Annotations`` -> voc;
``annotations/instances_*.json`` -> coco; ``train.csv`` (or any ``*.csv``) -> csv.

``open_dataset`` returns a :class:`MultiLabelDataset` whose ``spec`` is the normalised ``format:absolute_root``
and whose ``split`` is the split actually read. Images missing on disk are dropped (existence check only, no
decoding; corrupt files are skipped later by the loaders) and counted in ``notes``.

numpy and OpenCV only: this package runs on a torch-free edge install (parity reads the eval split with it).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mlic_edge.data.dataset import CLASSES_FILE, IGNORE, NEGATIVE, POSITIVE, MultiLabelDataset
from mlic_edge.errors import DataError

FORMATS = ("voc", "coco", "csv")
ROLES = ("train", "eval")
_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9_-]+):(.+)$")


def parse_data_spec(spec: str | Path) -> tuple[str, Path]:
    """``'voc:/data/VOC2007'`` -> ``('voc', Path)``; a plain path has its format detected."""
    spec = str(spec)
    fmt, _, rest = spec.partition(":")
    if fmt in FORMATS and rest:
        path = Path(rest).expanduser()
    else:
        fmt, path = "", Path(spec).expanduser()
    if not path.exists():
        match = _PREFIX.match(spec)
        if match and match.group(1) not in FORMATS:
            raise DataError(f"dataset path {spec} does not exist and {match.group(1)!r} is not a dataset format",
                            hint=f"use {', '.join(f + ':PATH' for f in FORMATS)} or a plain path")
        raise DataError(f"dataset path {path} does not exist", hint="check the path given to --data")
    if not path.is_dir():
        raise DataError(f"dataset path {path} is not a folder", hint="give the dataset's root folder")
    path = path.resolve()
    if fmt:
        return fmt, path
    return detect_format(path), path


def detect_format(path: Path) -> str:
    if (path / "Annotations").is_dir() or (path / "VOCdevkit").is_dir() or any(
            (c / "Annotations").is_dir() for c in path.glob("VOC*")):
        return "voc"
    if any((path / "annotations").glob("instances_*.json")):
        return "coco"
    if (path / "train.csv").is_file() or any(path.glob("*.csv")):
        return "csv"
    raise DataError(f"cannot tell the dataset format of {path}",
                    hint="looked for Annotations/ or VOCdevkit/ (VOC), annotations/instances_*.json (COCO) and "
                         "train.csv (CSV); or say it: voc:PATH, coco:PATH, csv:PATH")


def _root(fmt: str, path: Path) -> Path:
    if fmt == "voc":
        from mlic_edge.data.voc import find_voc_root

        return find_voc_root(path)
    return path


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")


def _default_split(fmt: str, root: Path, role: str) -> str:
    if fmt == "voc":
        from mlic_edge.data import voc

        return voc.default_split(root, role)
    if fmt == "coco":
        from mlic_edge.data import coco

        return coco.resolve_split(root, coco.DEFAULT_SPLITS[role])
    from mlic_edge.data import csv_format

    return csv_format.default_split(root, role)


def default_split(spec: str, role: str) -> str:
    """The split ``open_dataset(spec, role)`` reads: VOC trainval/train and test/val; COCO the newest train/val
    year; CSV train and test/val."""
    _check_role(role)
    fmt, path = parse_data_spec(spec)
    return _default_split(fmt, _root(fmt, path), role)


def available_splits(spec: str) -> list[str]:
    fmt, path = parse_data_spec(spec)
    return _available_splits(fmt, _root(fmt, path))


def _available_splits(fmt: str, root: Path) -> list[str]:
    if fmt == "voc":
        from mlic_edge.data import voc

        return voc.available_splits(root)
    if fmt == "coco":
        from mlic_edge.data import coco

        return coco.available_splits(root)
    from mlic_edge.data import csv_format

    return csv_format.available_splits(root)


def open_dataset(spec: str, role: str = "train", split: str | None = None, *, difficult: str = "ignore",
                 drop_unannotated: bool = False, labels: list[str] | None = None) -> MultiLabelDataset:
    """Read one split. ``role`` picks the default split (train: trainval/train; eval: test/val); ``split`` wins.

    ``difficult`` is the VOC difficult-object policy (ignore/positive/negative); ``drop_unannotated`` drops COCO
    images without annotations (kept as all-negative by default). Both are ignored by the other formats.
    ``labels``: a model's classes; a dataset holding the same classes in another order is put in that order.
    """
    _check_role(role)
    fmt, path = parse_data_spec(spec)
    root = _root(fmt, path)
    split = split or _default_split(fmt, root, role)
    if fmt == "voc":
        from mlic_edge.data.voc import read_voc

        dataset = read_voc(root, split, difficult=difficult)
    elif fmt == "coco":
        from mlic_edge.data.coco import read_coco

        dataset = read_coco(root, split, drop_unannotated=drop_unannotated)
    else:
        from mlic_edge.data.csv_format import read_csv_dataset

        dataset = read_csv_dataset(root, split)
    dataset = _drop_missing_images(dataset)
    if len(dataset) == 0:
        splits = ", ".join(_available_splits(fmt, root)) or "none"
        detail = f"; {dataset.notes[-1]}" if dataset.notes else ""
        raise DataError(f"split {dataset.split!r} of {dataset.spec} has no images",
                        hint=f"available splits: {splits}{detail}")
    return dataset.in_order(labels) if labels is not None else dataset


def dataset_files(dataset: MultiLabelDataset) -> list[Path]:
    """What reading ``dataset`` took its labels and images from: its format's label files, or the folders holding
    them (VOC's Annotations/ and ImageSets/, COCO's annotations/), and its images. The inputs no output may
    overwrite (``mlic_edge.io.refuse_output_onto_inputs``)."""
    root = dataset.root
    labels = {"voc": [root / "Annotations", root / "ImageSets"], "coco": [root / "annotations"],
              "csv": [*root.glob("*.csv"), root / CLASSES_FILE]}[dataset.format]
    return [*labels, *dataset.image_paths]


def _on_disk(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long for the file system, or holding a NUL, names no file on disk
        return False


def _drop_missing_images(dataset: MultiLabelDataset) -> MultiLabelDataset:
    """Existence only (cheap); corrupt files are skipped later, when the loaders decode them."""
    present = np.fromiter((_on_disk(path) for path in dataset.image_paths), dtype=bool, count=len(dataset))
    if present.all():
        return dataset
    missing = [dataset.image_paths[i] for i in np.flatnonzero(~present)]
    shown = []
    for path in missing[:3]:
        try:
            shown.append(path.relative_to(dataset.root).as_posix())
        except ValueError:
            shown.append(str(path))
    kept = dataset.subset(np.flatnonzero(present))
    kept.notes.append(f"{len(missing)} image(s) of split {dataset.split!r} missing on disk and skipped: "
                      f"{', '.join(shown)}" + (" ..." if len(missing) > 3 else ""))
    return kept


__all__ = ["FORMATS", "IGNORE", "NEGATIVE", "POSITIVE", "MultiLabelDataset", "available_splits", "dataset_files",
           "default_split", "detect_format", "open_dataset", "parse_data_spec"]
