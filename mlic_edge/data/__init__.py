"""Datasets, chosen by a DATA argument: a path (format detected) or ``voc:PATH``, ``coco:PATH``, ``csv:PATH``.

numpy and OpenCV only: this package runs on a torch-free edge install (parity reads the eval split with it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlic_edge.data.dataset import IGNORE, NEGATIVE, POSITIVE, MultiLabelDataset
from mlic_edge.errors import DataError

FORMATS = ("voc", "coco", "csv")
ROLES = ("train", "eval")


def parse_data_spec(spec: str) -> tuple[str, Path]:
    """``'voc:/data/VOC2007'`` -> ``('voc', Path)``; a plain path has its format detected."""
    spec = str(spec)
    fmt, _, rest = spec.partition(":")
    if fmt in FORMATS and rest:
        path = Path(rest).expanduser()
    else:
        fmt, path = "", Path(spec).expanduser()
    if not path.exists():
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
                    hint="expected Annotations/ (VOC), annotations/instances_*.json (COCO) or train.csv (CSV); "
                         "or say it: voc:PATH, coco:PATH, csv:PATH")


def _root(fmt: str, path: Path) -> Path:
    if fmt == "voc":
        from mlic_edge.data.voc import find_voc_root

        return find_voc_root(path)
    return path


def default_split(spec: str, role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    fmt, path = parse_data_spec(spec)
    root = _root(fmt, path)
    if fmt == "voc":
        from mlic_edge.data import voc

        return voc.default_split(root, role)
    if fmt == "coco":
        from mlic_edge.data import coco

        return coco.resolve_split(root, coco.DEFAULT_SPLITS[role])
    from mlic_edge.data import csv_format

    return csv_format.default_split(root, role)


def open_dataset(spec: str, role: str = "train", split: str | None = None, *,
                 difficult: str = "ignore") -> MultiLabelDataset:
    """Read one split. ``role`` picks the default split (train: trainval/train; eval: test/val); ``split`` wins."""
    fmt, path = parse_data_spec(spec)
    root = _root(fmt, path)
    split = split or default_split(f"{fmt}:{root}", role)
    if fmt == "voc":
        from mlic_edge.data.voc import read_voc

        dataset = read_voc(root, split, difficult=difficult)
    elif fmt == "coco":
        from mlic_edge.data.coco import read_coco

        dataset = read_coco(root, split)
    else:
        from mlic_edge.data.csv_format import read_csv_dataset

        dataset = read_csv_dataset(root, split)
    dataset = _drop_missing_images(dataset)
    if len(dataset) == 0:
        raise DataError(f"split {dataset.split!r} of {dataset.spec} has no images",
                        hint="check the split file and the image folder" + (
                            f" ({dataset.notes[-1]})" if dataset.notes else ""))
    return dataset


def _drop_missing_images(dataset: MultiLabelDataset) -> MultiLabelDataset:
    """Existence only (cheap); corrupt files are skipped later, when the loaders decode them."""
    present = np.array([path.is_file() for path in dataset.image_paths], dtype=bool)
    if present.all():
        return dataset
    missing = [dataset.image_paths[i].name for i in np.flatnonzero(~present)]
    kept = dataset.subset(np.flatnonzero(present))
    kept.notes.append(f"{len(missing)} image(s) of split {dataset.split!r} missing on disk and skipped: "
                      f"{', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
    return kept


__all__ = ["FORMATS", "IGNORE", "NEGATIVE", "POSITIVE", "MultiLabelDataset", "default_split", "detect_format",
           "open_dataset", "parse_data_spec"]
