"""The in-memory form every dataset format is read into.

Targets use three values per (image, class): 1 present, 0 absent, -1 ignore (for example a VOC class present only
as ``difficult`` objects under the default policy). Losses mask -1; AP leaves -1 entries out; thresholded metrics
count them as negatives (ML-GCN's convention, METHODS.md §7).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mlic_edge.errors import DataError

POSITIVE, NEGATIVE, IGNORE = 1, 0, -1
CLASSES_FILE = "classes.txt"


def read_text(path: Path) -> str:
    """A UTF-8 text file of a dataset (a BOM ignored); unreadable or undecodable is a DataError naming the file."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})",
                        hint="save it as UTF-8") from error
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}", hint="check the file") from error


def class_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a class name, or None: each name is one line of a classes.txt (and of the exported
    label files), so a line break or a control character in it is a quoting accident, never a class."""
    bad = next((char for char in name if unicodedata.category(char) in ("Cc", "Zl", "Zp")), None)
    return None if bad is None else f"holds the control character or line break {bad!r}"


def read_class_file(path: Path) -> list[str]:
    """A ``classes.txt``: one unique class name per line, in class order (blank lines and a BOM ignored)."""
    numbered = [(number, line.strip()) for number, line in enumerate(read_text(path).splitlines(), start=1)
                if line.strip()]
    if not numbered:
        raise DataError(f"{path} is empty", hint="write one class name per line")
    for number, name in numbered:
        problem = class_name_problem(name)
        if problem:
            raise DataError(f"{path}, line {number}: class name {name!r} {problem}",
                            hint="one printable class name per line")
    names = [name for _, name in numbered]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(f"{path} repeats {', '.join(map(repr, repeated))}", hint="one unique class name per line")
    return names


@dataclass
class MultiLabelDataset:
    """One split of a multi-label dataset: image paths and a target matrix in the dataset's class order."""

    names: list[str]
    """Class names in the dataset's order (VOC standard or classes.txt; COCO category-id order; CSV classes.txt or
    the train split's labels, sorted)."""
    image_paths: list[Path]
    targets: np.ndarray
    """int8 array (num_images, num_classes) with values in {1, 0, -1}."""
    root: Path
    format: str
    """'voc', 'coco', or 'csv'."""
    split: str
    spec: str
    """The DATA argument this was opened from, normalised to ``format:path`` (stored in run.json)."""
    notes: list[str] = field(default_factory=list)
    """Things a user should know about how the split was read (skipped entries, policy choices)."""

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def image_ids(self) -> list[str]:
        """Stable identifiers (paths relative to the dataset root) used to match scores across stages."""
        ids = []
        for path in self.image_paths:
            try:
                ids.append(path.relative_to(self.root).as_posix())
            except ValueError:
                ids.append(path.as_posix())
        return ids

    def class_counts(self) -> np.ndarray:
        """Images holding each class (positives only)."""
        return (self.targets == POSITIVE).sum(axis=0).astype(np.int64)

    def in_order(self, names: list[str]) -> "MultiLabelDataset":
        """The same images with the target columns in the order of ``names`` (a model's classes), matched by name:
        an imported ML-GCN numbers COCO's classes alphabetically, the COCO reader by category id. Other classes than
        the dataset's are not reordered (the caller compares the names and says what differs)."""
        if list(names) == list(self.names) or sorted(names) != sorted(self.names):
            return self
        column = {name: index for index, name in enumerate(self.names)}
        order = [column[name] for name in names]
        return replace(self, names=list(names), targets=self.targets[:, order],
                       notes=[*self.notes, f"classes matched by name to the model's order ({self.spec})"])

    def subset(self, indices: list[int] | np.ndarray) -> "MultiLabelDataset":
        idx = np.asarray(indices, dtype=np.int64)
        return MultiLabelDataset(
            names=list(self.names),
            image_paths=[self.image_paths[i] for i in idx],
            targets=self.targets[idx],
            root=self.root,
            format=self.format,
            split=self.split,
            spec=self.spec,
            notes=list(self.notes),
        )
