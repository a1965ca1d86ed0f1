"""The validation split: images of the training split held out before training, so that what is decided after
training (the best epoch and EMA, the int8 build's accuracy target) is judged on images the model never trained on,
and the eval split stays untouched by any decision.

The images are chosen from the image ids and the seed alone (the ids sorted, then a seeded permutation), so the
trainer and the build derive the same ones; run.json's dataset section records the fraction, the seed, the count
and the sha256 of the sorted ids (``ValidationSplit.record``), which lets a reader re-derive and verify them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:
    from mlic_edge.data.dataset import MultiLabelDataset

VAL_MIN_IMAGES = 8  # a validation split holds at least this many images (at most half the training split)


def validation_count(total: int, fraction: float) -> int:
    """Images a validation split of ``fraction`` of ``total`` training images holds (0: none)."""
    if fraction <= 0 or total < 2:
        return 0
    return min(max(VAL_MIN_IMAGES, round(fraction * total)), total // 2)


def ids_sha256(image_ids: Iterable[str]) -> str:
    """SHA-256 of the sorted image ids, one per line: the same ids in any order give the same value."""
    return hashlib.sha256("\n".join(sorted(image_ids)).encode()).hexdigest()


@dataclass(frozen=True)
class ValidationSplit:
    """The validation images of a training split: ``image_ids`` sorted, chosen by ``fraction`` and ``seed``."""

    fraction: float
    seed: int
    image_ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def sha256(self) -> str:
        return ids_sha256(self.image_ids)

    @property
    def record(self) -> dict[str, object]:
        """The fields run.json's dataset section records (``DatasetSection``)."""
        return {"val_fraction": self.fraction, "val_seed": self.seed, "val_images": len(self.image_ids),
                "val_ids_sha256": self.sha256}


def validation_split(image_ids: Sequence[str], fraction: float, seed: int) -> ValidationSplit:
    """The validation images of a training split whose images are ``image_ids`` (in any order)."""
    ordered = sorted(image_ids)
    count = validation_count(len(ordered), fraction)
    picked = np.random.default_rng(seed).permutation(len(ordered))[:count]
    return ValidationSplit(float(fraction), int(seed), tuple(sorted(ordered[int(i)] for i in picked)))


def split_off_validation(dataset: "MultiLabelDataset", fraction: float, seed: int
                         ) -> tuple["MultiLabelDataset", "MultiLabelDataset", ValidationSplit]:
    """(the images to train on, the validation images, the split's record) of the training split ``dataset``."""
    split = validation_split(dataset.image_ids(), fraction, seed)
    chosen = set(split.image_ids)
    ids = dataset.image_ids()
    rest = [index for index, image_id in enumerate(ids) if image_id not in chosen]
    held = [index for index, image_id in enumerate(ids) if image_id in chosen]
    return dataset.subset(rest), dataset.subset(held), split


def recorded_validation(dataset: "MultiLabelDataset", fraction: float | None, seed: int | None,
                        sha256: str | None) -> tuple[ValidationSplit | None, str]:
    """The validation split run.json records, re-derived from ``dataset`` (the training split) and checked against
    the recorded sha256; (None, why) where the run records none or these images do not give the same ids."""
    if not fraction or seed is None or not sha256:
        return None, "run.json records no validation split (an imported checkpoint, an older run or --val-fraction 0)"
    split = validation_split(dataset.image_ids(), fraction, seed)
    if split.sha256 != sha256:
        return None, (f"the validation split re-derived from {dataset.spec} ({dataset.split}) is not the one run.json "
                      "records (other images than the run was trained on)")
    return split, ""
