"""CSV datasets: a folder with ``train.csv`` and ``test.csv`` (or ``val.csv``); any other ``<name>.csv`` is a split
too.

Each file needs a header with columns ``image,labels`` (other columns are ignored); ``labels`` holds
``;``-separated class names (empty: no label); image paths are relative to the folder.

Classes: ``classes.txt`` in the folder when present (its names and order; a label not in it is an error naming the
file and line), else the sorted labels of the train split ``train.csv``, whichever split is read, so all splits
agree: a label of another split that the train split lacks (a typo in test.csv) is an error naming the file and
line, never a silent extra class. A folder without train.csv takes the sorted union over its CSV splits. CSV files
without the ``image,labels`` header (a stray results.csv) are left out of that union and of the split list. A label
holding a line break or control character (a quoting accident) is an error.

Every row is read or the file is refused naming the line: a quote left open swallows the rows after it, so a quote
never closed, or an image or labels cell running over several lines (a quote closed rows later), is an error naming
the line of the row it opened on.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from mlic_edge.data.dataset import CLASSES_FILE, POSITIVE, MultiLabelDataset, class_name_problem, read_class_file
from mlic_edge.errors import DataError

DEFAULT_SPLITS = {"train": ("train",), "eval": ("test", "val")}
TRAIN_SPLIT = DEFAULT_SPLITS["train"][0]  # its labels are the classes when classes.txt is absent
REQUIRED_COLUMNS = ("image", "labels")
QUOTING_HINT = 'check the quotes: a cell that starts with " ends at the next lone ", and a " inside it is written ""'


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
    """(line number where the row starts, image, label names) per data row."""
    line = 1  # where the row being read starts
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, strict=True)  # strict: a quote still open at the end is an error
            header = [column.strip() for column in next(reader, [])]
            if not set(REQUIRED_COLUMNS) <= set(header):
                raise DataError(f"{path} needs a header line with columns image,labels",
                                hint=f"found columns: {', '.join(map(repr, header)) or 'none'}")
            image_col, labels_col = header.index("image"), header.index("labels")
            rows = []
            line = reader.line_num + 1
            for record in reader:
                start, line = line, reader.line_num + 1  # a quoted cell may span lines: report the row's first
                if not any(cell.strip() for cell in record):
                    continue
                image = record[image_col].strip() if image_col < len(record) else ""
                if not image:
                    raise DataError(f"{path}, line {start}: empty image path", hint="fill the image column")
                cell = record[labels_col] if labels_col < len(record) else ""
                run_on = next((column for column, text in (("image", image), ("labels", cell))
                               if "\n" in text or "\r" in text), None)
                if run_on:
                    raise DataError(f"{path}, line {start}: the {run_on} cell runs on to line {line - 1}",
                                    hint=QUOTING_HINT)
                labels = [name.strip() for name in cell.split(";") if name.strip()]
                for name in labels:
                    problem = class_name_problem(name)
                    if problem:
                        raise DataError(f"{path}, line {start}: label {name!r} {problem}",
                                        hint="check the quoting of the labels column")
                rows.append((start, image, labels))
            return rows
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not a readable CSV file ({error})", hint="save it as UTF-8 CSV") from error
    except csv.Error as error:
        problem = ("the row starting here opens a quote that is never closed" if str(error) == "unexpected end of data"
                   else f"not readable as CSV ({error})")
        raise DataError(f"{path}, line {line}: {problem}", hint=QUOTING_HINT) from error
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}", hint="check the file") from error


def class_list(root: Path) -> tuple[list[str], Path | None]:
    """(names, source): the names of classes.txt when present, else the sorted labels of the train split (source
    train.csv), else, in a folder without train.csv, the sorted union over its CSV splits (source None)."""
    classes_file = root / CLASSES_FILE
    if classes_file.is_file():
        return read_class_file(classes_file), classes_file
    train_file = root / f"{TRAIN_SPLIT}.csv"
    source = train_file if train_file.is_file() else None
    files = [train_file] if source else [path for path in sorted(root.glob("*.csv")) if _is_split_file(path)]
    seen = {name for path in files for _, _, labels in _read_rows(path) for name in labels}
    if not seen:
        raise DataError(f"no labels found in {source or f'the CSV files of {root}'}",
                        hint="the labels column holds ;-separated class names")
    return sorted(seen), source


def _unknown_label(path: Path, line: int, name: str, source: Path | None) -> DataError:
    if source is not None and source.name == CLASSES_FILE:
        return DataError(f"{path}, line {line}: unknown label {name!r}", hint=f"add it to {source} or fix the label")
    where = f"the train split {source.name}" if source is not None else "the folder's CSV splits"
    return DataError(f"{path}, line {line}: label {name!r} is not a label of {where}",
                     hint=f"fix the label, or declare every class in {path.parent / CLASSES_FILE}")


def read_csv_dataset(root: Path, split: str) -> MultiLabelDataset:
    path = root / f"{split}.csv"
    if not path.is_file():
        raise DataError(f"split {split!r} not found: {path} is missing",
                        hint=f"available splits: {', '.join(available_splits(root)) or 'none'}")
    rows = _read_rows(path)
    names, source = class_list(root)
    index = {name: i for i, name in enumerate(names)}
    targets = np.zeros((len(rows), len(names)), dtype=np.int8)
    for row_number, (line, _, labels) in enumerate(rows):
        for name in labels:
            if name not in index:
                raise _unknown_label(path, line, name, source)
            targets[row_number, index[name]] = POSITIVE
    paths = [root / image for _, image, _ in rows]
    return MultiLabelDataset(names=names, image_paths=paths, targets=targets, root=root, format="csv", split=split,
                             spec=f"csv:{root}")
