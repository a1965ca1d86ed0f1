"""Tensor-making data code for training and PyTorch evaluation.

Broken images (missing, empty, corrupt) never stop an epoch: the dataset yields ``None`` for them, the collate
function drops them and reports their indices, and the caller counts and names them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mlic_edge.data.dataset import MultiLabelDataset
from mlic_edge.data.images import preprocess, read_image
from mlic_edge.spec import DEFAULT_RESIZE
from mlic_edge.stops import ignore_stop_signals, signals_deferred


def random_resized_crop(image: np.ndarray, scale: tuple[float, float] = (0.5, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """Crop a random region of ``scale`` of the area and ``ratio`` aspect (torch RNG, so worker seeding holds)."""
    height, width = image.shape[:2]
    area = height * width
    for _ in range(10):
        target_area = area * float(torch.empty(1).uniform_(*scale))
        log_ratio = torch.empty(1).uniform_(float(np.log(ratio[0])), float(np.log(ratio[1])))
        aspect = float(torch.exp(log_ratio))
        crop_w = int(round(np.sqrt(target_area * aspect)))
        crop_h = int(round(np.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(torch.randint(0, height - crop_h + 1, (1,)))
            left = int(torch.randint(0, width - crop_w + 1, (1,)))
            return image[top:top + crop_h, left:left + crop_w]
    return image


def rand_augment(image: np.ndarray) -> np.ndarray:
    """torchvision's RandAugment (2 operations, magnitude 9: its defaults, Query2Label's) on a BGR uint8 image."""
    from torchvision.transforms import v2

    rgb = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1])).permute(2, 0, 1)
    return np.ascontiguousarray(v2.RandAugment()(rgb).permute(1, 2, 0).numpy()[:, :, ::-1])


def cutout(tensor: torch.Tensor, share: float = 0.5) -> torch.Tensor:
    """One square of ``share`` of the side, at a random centre (clipped at the borders), set to 0, the mean colour
    after normalisation (Query2Label's CutoutPIL, which fills a random colour instead)."""
    height, width = tensor.shape[-2:]
    side_h, side_w = int(height * share), int(width * share)
    top = int(torch.randint(0, height, (1,))) - side_h // 2
    left = int(torch.randint(0, width, (1,))) - side_w // 2
    tensor[..., max(0, top):max(0, top + side_h), max(0, left):max(0, left + side_w)] = 0.0
    return tensor


def cut_mix(images: torch.Tensor, targets: torch.Tensor, alpha: float = 1.0, probability: float = 0.5
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al. 2019) on a multi-label batch: with ``probability``, one box of every image is replaced by
    the same box of its partner (the batch reversed) and the targets mix by area, λ·y + (1 − λ)·y_partner, where λ is
    the share of the image kept; a label ignored (-1) in either image stays ignored. λ ~ Beta(α, α) and the box come
    from timm (``cutmix_bbox_and_lam``, λ corrected for a box clipped at the border)."""
    from timm.data.mixup import cutmix_bbox_and_lam

    if len(images) < 2 or float(torch.rand(1)) >= probability:
        return images, targets
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    (top, bottom, left, right), lam = cutmix_bbox_and_lam(images.shape, lam)
    partner_images, partner_targets = images.flip(0), targets.flip(0)
    mixed = images.clone()
    mixed[:, :, top:bottom, left:right] = partner_images[:, :, top:bottom, left:right]
    soft = lam * targets + (1.0 - lam) * partner_targets
    soft[(targets < 0) | (partner_targets < 0)] = -1.0
    return mixed, soft


class ImageDataset(Dataset):
    """Images of a split as normalised CHW float tensors; ``augment`` adds random resized crop and flip, and the
    ``extra`` augmentations a recipe asks for (``randaugment``, ``cutout``).

    The crop keeps at least ``crop_scale[0]`` of the image area: multi-label targets stay the image's, so a crop
    small enough to cut objects out would teach the model wrong labels.
    """

    def __init__(self, dataset: MultiLabelDataset, img_size: int, mean: Sequence[float], std: Sequence[float],
                 augment: bool = False, crop_scale: tuple[float, float] = (0.6, 1.0), resize: str = DEFAULT_RESIZE,
                 extra: Sequence[str] = ()) -> None:
        self.dataset = dataset
        self.crop_scale = crop_scale
        self.img_size = img_size
        self.mean = mean
        self.std = std
        self.augment = augment
        self.resize = resize
        self.extra = tuple(extra)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image = read_image(self.dataset.image_paths[index])
        target = torch.from_numpy(self.dataset.targets[index].astype(np.float32))
        if image is None:
            return None, target, index
        if self.augment:
            image = random_resized_crop(image, self.crop_scale)
            if float(torch.rand(1)) < 0.5:
                image = cv2.flip(image, 1)
            if "randaugment" in self.extra:
                image = rand_augment(image)
        tensor = torch.from_numpy(preprocess(image, self.img_size, self.mean, self.std, self.resize))
        if self.augment and "cutout" in self.extra:
            tensor = cutout(tensor)
        return tensor, target, index


@dataclass
class Batch:
    images: torch.Tensor
    targets: torch.Tensor
    """float (N, C) in {1, 0, -1}; -1 entries are ignored by losses and AP."""
    indices: torch.Tensor
    broken: list[int]


def collate_skip_broken(samples: list) -> Batch:
    kept = [sample for sample in samples if sample[0] is not None]
    broken = [sample[2] for sample in samples if sample[0] is None]
    if not kept:
        num_classes = samples[0][1].shape[0]
        return Batch(torch.empty(0), torch.empty(0, num_classes), torch.empty(0, dtype=torch.long), broken)
    return Batch(
        images=torch.stack([sample[0] for sample in kept]),
        targets=torch.stack([sample[1] for sample in kept]),
        indices=torch.tensor([sample[2] for sample in kept], dtype=torch.long),
        broken=broken,
    )


def start_worker(worker_id: int) -> None:
    """A DataLoader worker process leaves stops to the main process (docs/design.md, "Stops"), which shuts it down.
    It hands each batch's tensors over by passing file descriptors, from a thread of multiprocessing's that prints
    a traceback where the main process drops a transfer half-way (a stop landing in it): the main process reports
    any failure of its own, so such a broken connection is not reported twice, after the stop's one line."""
    ignore_stop_signals()
    sys.excepthook = _quiet_about_dropped_transfers


def _quiet_about_dropped_transfers(kind: type[BaseException], error: BaseException, trace: Any) -> None:
    if not issubclass(kind, (EOFError, ConnectionError, AuthenticationError)):
        sys.__excepthook__(kind, error, trace)


class StopSafeLoader(DataLoader):
    """A DataLoader for stop signals (docs/design.md, "Stops"): its workers (``start_worker``) leave a stop to the
    main process; they start and are shut down with stop signals held back (a stop half-way would leave workers
    nobody tells to end), and ``with loader:`` shuts them down when the block ends, a stop included, instead of at
    the interpreter's exit (where PyTorch no longer does)."""

    def __iter__(self):
        with signals_deferred():
            return super().__iter__()

    def __enter__(self) -> "StopSafeLoader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shut_down_workers()

    def shut_down_workers(self) -> None:
        """End the worker processes now (persistent workers live in the loader's one iterator); the next pass over
        the loader starts new ones."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            with signals_deferred():
                iterator._shutdown_workers()


def make_loader(dataset: ImageDataset, batch_size: int, shuffle: bool, workers: int, seed: int = 0,
                drop_last: bool = False, sampler: torch.utils.data.Sampler | None = None) -> StopSafeLoader:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return StopSafeLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skip_broken,
        generator=generator,
        drop_last=drop_last,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=start_worker,
    )


def describe_broken(dataset: MultiLabelDataset, broken: Sequence[int], shown: int = 3) -> str:
    """'2 images could not be read and were skipped: a.jpg, b.jpg'"""
    unique = sorted(set(broken))
    names = ", ".join(dataset.image_paths[i].name for i in unique[:shown])
    more = f" and {len(unique) - shown} more" if len(unique) > shown else ""
    return f"{len(unique)} image(s) could not be read and were skipped: {names}{more}"
