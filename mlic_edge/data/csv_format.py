"""CSV datasets: a folder with ``train.csv`` and ``test.csv`` (or ``val.csv``); any other ``<name>.csv`` is a split
too.

Each file needs a header with columns ``image,labels`` (other columns are ignored); ``labels`` holds
``;``-separated class names (empty: no label); image paths are relative to the folder.

Classes: ``classes.txt`` in the folder when present (its names and order; a label not in it is an error naming the
file and line), else the sorted union of names over every CSV file of the folder, so all splits agree. CSV files
without the ``image,labels`` header (a stray results.csv) are left out of that union and of the split list.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from mlic_edge.data.dataset import CLASSES_FILE, POSITIVE, MultiLabelDataset, read_class_file
from mlic_edge.errors import DataError

DEFAULT_SPLITS = {"train": ("train",), "eval": ("test", "val")}
REQUIRED_COLUMNS = ("image", "labels")


def _header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            first = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    return [column.strip() for column in first]


def _is_split_file(path: Path) -> bool:
    return path.is_file() and set(REQUIRED_COLUMNS) <= set(_header(path))


def available_splits(root: Path) -> list[str]:
    return sorted(p.stem for p in root.glob("*.csv") if _is_split_file(p))


def default_split(root: Path, role: str) -> str:
    for name in DEFAULT_SPLITS[role]:
        if (root / f"{name}.csv").is_file():
            return name
    raise DataError(f"{root} has no {' or '.join(n + '.csv' for n in DEFAULT_SPLITS[role])}",
                    hint=f"available splits: {', '.join(available_splits(root)) or 'none'}; "
                         "pass --train-split/--eval-split")


def _read_rows(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line number, image, label names) per data row."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [column.strip() for column in next(reader, [])]
            if not set(REQUIRED_COLUMNS) <= set(header):
                raise DataError(f"{path} needs a header line with columns image,labels",
                                hint=f"found columns: {', '.join(header) or 'none'}")
            image_col, labels_col = header.index("image"), header.index("labels")
            rows = []
            for record in reader:
                if not any(cell.strip() for cell in record):
                    continue
                line = reader.line_num
                image = record[image_col].strip() if image_col < len(record) else ""
                if not image:
                    raise DataError(f"{path}, line {line}: empty image path", hint="fill the image column")
                cell = record[labels_col] if labels_col < len(record) else ""
                labels = [name.strip() for name in cell.split(";") if name.strip()]
                rows.append((line, image, labels))
            return rows
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path} is not a readable CSV file ({error})", hint="save it as UTF-8 CSV") from error


def class_list(root: Path) -> tuple[list[str], bool]:
    """(names, custom): classes.txt when present, else the sorted union of labels over the folder's CSV files."""
    classes_file = root / CLASSES_FILE
    if classes_file.is_file():
        return read_class_file(classes_file), True
    seen = {name for path in sorted(root.glob("*.csv")) if _is_split_file(path)
            for _, _, labels in _read_rows(path) for name in labels}
    if not seen:
        raise DataError(f"no labels found in the CSV files of {root}",
                        hint="the labels column holds ;-separated class names")
    return sorted(seen), False


def read_csv_dataset(root: Path, split: str) -> MultiLabelDataset:
    path = root / f"{split}.csv"
    if not path.is_file():
        raise DataError(f"split {split!r} not found: {path} is missing",
                        hint=f"available splits: {', '.join(available_splits(root)) or 'none'}")
    rows = _read_rows(path)
    names, custom = class_list(root)
    index = {name: i for i, name in enumerate(names)}
    targets = np.zeros((len(rows), len(names)), dtype=np.int8)
    for row_number, (line, _, labels) in enumerate(rows):
        for name in labels:
            if name not in index:
                raise DataError(f"{path}, line {line}: unknown label {name!r}",
                                hint=f"add it to {root / CLASSES_FILE} or fix the label" if custom else
                                "the class list is the union of the folder's CSV files")
            targets[row_number, index[name]] = POSITIVE
    paths = [root / image for _, image, _ in rows]
    return MultiLabelDataset(names=names, image_paths=paths, targets=targets, root=root, format="csv", split=split,
                             spec=f"csv:{root}")
