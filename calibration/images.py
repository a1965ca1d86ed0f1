"""Choosing the calibration images: every class covered (rarest first), then a random fill; hashed so that a
change of data is seen and forces a new calibration."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterator

import numpy as np

from mlic_edge.console import warn
from mlic_edge.data.dataset import POSITIVE, MultiLabelDataset
from mlic_edge.data.images import read_image, spec_input
from mlic_edge.errors import CalibrationError
from mlic_edge.io import sha256_file
from mlic_edge.spec import Preprocessing

DEFAULT_BATCH_SIZE = 16


@dataclass
class CalibrationSet:
    """The images chosen for calibration and what they cover."""

    image_paths: list[Path]
    image_ids: list[str]
    labels: list[str]
    class_counts: dict[str, int]
    """Images holding each class (positives only) among the chosen ones."""
    requested: int
    notes: list[str] = field(default_factory=list)
    """Things the user should be told (fewer images than asked, classes absent)."""
    targets: np.ndarray | None = field(default=None, repr=False, compare=False)
    """(images, classes) in the dataset's {1, 0, -1} encoding, for a set that is scored (the held-out set)."""
    _hashes: dict[str, str] | None = field(default=None, repr=False, compare=False)
    _inputs: dict[Preprocessing, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.image_paths)

    def missing_classes(self) -> list[str]:
        return [name for name in self.labels if self.class_counts.get(name, 0) == 0]

    def image_hashes(self) -> dict[str, str]:
        """SHA-256 of each image file, by image id (computed once)."""
        if self._hashes is None:
            self._hashes = {image_id: sha256_file(path) for image_id, path in zip(self.image_ids, self.image_paths)}
        return self._hashes

    def fingerprint(self) -> str:
        """SHA-256 over the sorted (image id, file hash) pairs: the same images in any order give the same value."""
        digest = hashlib.sha256()
        for image_id, file_hash in sorted(self.image_hashes().items()):
            digest.update(f"{image_id}\0{file_hash}\n".encode())
        return digest.hexdigest()

    def batches(self, preprocessing: Preprocessing, batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[np.ndarray]:
        """Preprocessed NCHW batches (or NHWC uint8, as ``preprocessing`` says), exactly as every runtime stage
        preprocesses; unreadable files skipped."""
        pending: list[np.ndarray] = []
        for path in self.image_paths:
            image = read_image(path)
            if image is None:
                continue
            pending.append(spec_input(image, preprocessing))
            if len(pending) == batch_size:
                yield np.stack(pending)
                pending = []
        if pending:
            yield np.stack(pending)

    def inputs_and_targets(self, preprocessing: Preprocessing | int, *loose: Any) -> tuple[np.ndarray, np.ndarray]:
        """Every readable image preprocessed (one NCHW array) and its targets; unreadable files left out of both.
        Read once per preprocessing (the build's searches and its fine-tuning all score the held-out set); the arrays
        are shared, not to be written to. (``loose``: scripts written before ``Preprocessing`` pass its five fields
        one by one, img_size first.)"""
        if not isinstance(preprocessing, Preprocessing):
            preprocessing = Preprocessing(preprocessing, *loose)
        if preprocessing not in self._inputs:
            self._inputs[preprocessing] = self._read_inputs(preprocessing)
        return self._inputs[preprocessing]

    def _read_inputs(self, preprocessing: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
        images, kept = [], []
        for index, path in enumerate(self.image_paths):
            image = read_image(path)
            if image is not None:
                images.append(spec_input(image, preprocessing))
                kept.append(index)
        if not images or self.targets is None:
            raise CalibrationError("none of the held-out images could be read" if self.targets is not None else
                                   "this image set has no targets to score against",
                                   hint="check the training split's image files")
        return np.stack(images), self.targets[kept]


def first_images(calibration: CalibrationSet, preprocessing: Preprocessing, count: int) -> np.ndarray:
    """The first ``count`` readable images of ``calibration``, preprocessed, as one array."""
    chunks, total = [], 0
    for batch in calibration.batches(preprocessing):
        chunks.append(batch)
        total += len(batch)
        if total >= count:
            break
    if not chunks:
        raise CalibrationError("none of the calibration images could be read", hint="check --calib-data")
    return np.concatenate(chunks)[:count]


def select_calibration_set(dataset: MultiLabelDataset, count: int, seed: int = 0,
                           purpose: str = "calibration") -> CalibrationSet:
    """Pick ``count`` images: one holding each class first (rarest class first), then random ones; deterministic
    for a seed. Fewer images than asked uses them all and says so; classes with no image are warned about by name.
    ``purpose`` names the set in those notes."""
    if count < 1:
        raise CalibrationError(f"calibration image count must be at least 1, got {count}",
                               hint="pass --calib-images N with N >= 1 (a few hundred is typical)")
    rng = np.random.default_rng(seed)
    positives = dataset.targets == POSITIVE
    notes: list[str] = []
    if count >= len(dataset):
        chosen = list(range(len(dataset)))
        if count > len(dataset):
            notes.append(f"asked for {count} {purpose} images but split {dataset.split!r} has only "
                         f"{len(dataset)}: using all {len(dataset)}")
    else:
        chosen = _cover_classes_then_fill(positives, count, rng)

    chosen.sort()
    picked = dataset.subset(chosen)
    counts = positives[chosen].sum(axis=0)
    calibration = CalibrationSet(
        image_paths=list(picked.image_paths),
        image_ids=picked.image_ids(),
        labels=list(dataset.names),
        class_counts={name: int(n) for name, n in zip(dataset.names, counts)},
        requested=count,
        notes=notes,
        targets=picked.targets,
    )
    missing = calibration.missing_classes()
    if missing:
        notes.append(f"no {purpose} image holds {len(missing)} class(es): {', '.join(missing)}"
                     + (" (their activations are calibrated only through other images)"
                        if purpose == "calibration" else ""))
    for note in notes:
        warn(note)
    return calibration


def _cover_classes_then_fill(positives: np.ndarray, count: int, rng: np.random.Generator) -> list[int]:
    per_class = positives.sum(axis=0)
    chosen: list[int] = []
    taken = np.zeros(len(positives), dtype=bool)
    for cls in np.argsort(per_class, kind="stable"):
        if len(chosen) == count:
            break
        if per_class[cls] == 0 or positives[taken, cls].any():
            continue
        candidates = np.flatnonzero(positives[:, cls] & ~taken)
        pick = int(rng.choice(candidates))
        chosen.append(pick)
        taken[pick] = True
    rest = rng.permutation(np.flatnonzero(~taken))[: count - len(chosen)]
    chosen.extend(int(i) for i in rest)
    return chosen


def validation_holdout(dataset: MultiLabelDataset, validation_ids: Collection[str], count: int, seed: int = 1
                       ) -> tuple[CalibrationSet, MultiLabelDataset]:
    """(judging images, the rest of the split): the run's validation images among ``dataset`` (the training split;
    held out before training, mlic_edge/data/splits.py), all of them up to ``count`` (past it, ``count`` chosen as
    held-out images are, every class first), to measure an INT8 model on images it never trained on; calibration then
    picks from the rest, the images the model trained on."""
    chosen = set(validation_ids)
    ids = dataset.image_ids()
    validation = dataset.subset([index for index, image_id in enumerate(ids) if image_id in chosen])
    rest = dataset.subset([index for index, image_id in enumerate(ids) if image_id not in chosen])
    if not len(validation):
        raise CalibrationError(f"none of the run's validation images is in {dataset.spec} ({dataset.split})",
                               hint="build where the run's training data is, or pass --calib-data")
    holdout = select_calibration_set(validation, min(count, len(validation)), seed=seed, purpose="validation")
    return holdout, rest


def split_holdout(dataset: MultiLabelDataset, count: int, seed: int = 1
                  ) -> tuple[CalibrationSet, MultiLabelDataset]:
    """(held-out images, the rest of the split): ``count`` images of ``dataset`` (the training split; at most a
    quarter of it) chosen as calibration images are, every class first, to measure an INT8 model on; calibration
    then picks from the rest, so the two never share an image, and neither is the eval split."""
    count = max(1, min(count, len(dataset) // 4))
    holdout = select_calibration_set(dataset, count, seed=seed, purpose="held-out")
    taken = set(holdout.image_ids)
    rest = [index for index, image_id in enumerate(dataset.image_ids()) if image_id not in taken]
    return holdout, dataset.subset(rest)
