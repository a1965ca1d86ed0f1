"""CSV datasets: a folder with ``train.csv`` and ``test.csv`` (or ``val.csv``), columns ``image,labels``, labels
``;``-separated class names, image paths relative to the folder.

Classes: ``classes.txt`` in the folder when present (its order; an unknown label is an error naming file and
line), else the sorted union of names over every CSV file of the folder, so all splits agree.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from mlic_edge.data.dataset import POSITIVE, MultiLabelDataset
from mlic_edge.errors import DataError

DEFAULT_SPLITS = {"train": ("train",), "eval": ("test", "val")}


def available_splits(root: Path) -> list[str]:
    return sorted(p.stem for p in root.glob("*.csv"))


def default_split(root: Path, role: str) -> str:
    for name in DEFAULT_SPLITS[role]:
        if (root / f"{name}.csv").is_file():
            return name
    raise DataError(f"{root} has no {' or '.join(n + '.csv' for n in DEFAULT_SPLITS[role])}",
                    hint=f"available splits: {', '.join(available_splits(root)) or 'none'}")


def _read_rows(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line number, image, label names) per data row."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"image", "labels"} <= set(reader.fieldnames):
            raise DataError(f"{path} needs a header with columns image,labels",
                            hint=f"found columns: {', '.join(reader.fieldnames or []) or 'none'}")
        rows = []
        for row in reader:
            image = (row["image"] or "").strip()
            if not image:
                raise DataError(f"{path}, line {reader.line_num}: empty image path", hint="fill the image column")
            labels = [name.strip() for name in (row["labels"] or "").split(";") if name.strip()]
            rows.append((reader.line_num, image, labels))
        return rows


def class_list(root: Path) -> tuple[list[str], bool]:
    classes_file = root / "classes.txt"
    if classes_file.is_file():
        names = [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
        if not names or len(set(names)) != len(names):
            raise DataError(f"{classes_file} is empty or repeats a name", hint="one unique class name per line")
        return names, True
    seen = {name for path in root.glob("*.csv") for _, _, labels in _read_rows(path) for name in labels}
    if not seen:
        raise DataError(f"no labels found in the CSV files of {root}", hint="labels are ;-separated class names")
    return sorted(seen), False


def read_csv_dataset(root: Path, split: str) -> MultiLabelDataset:
    path = root / f"{split}.csv"
    if not path.is_file():
        raise DataError(f"split {split!r} not found: {path} is missing",
                        hint=f"available splits: {', '.join(available_splits(root)) or 'none'}")
    names, _ = class_list(root)
    index = {name: i for i, name in enumerate(names)}
    rows = _read_rows(path)
    targets = np.zeros((len(rows), len(names)), dtype=np.int8)
    for row_number, (line, _, labels) in enumerate(rows):
        for name in labels:
            if name not in index:
                raise DataError(f"{path}, line {line}: unknown label {name!r}",
                                hint=f"known labels are listed in {root / 'classes.txt'}")
            targets[row_number, index[name]] = POSITIVE
    paths = [root / image for _, image, _ in rows]
    return MultiLabelDataset(names=names, image_paths=paths, targets=targets, root=root, format="csv", split=split,
                             spec=f"csv:{root}")
