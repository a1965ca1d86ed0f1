"""Image decoding and the one preprocessing function shared by training-time evaluation, export checks and runtime.

Keeping a single numpy implementation is what makes parity meaningful: the PyTorch reference and every backend
see byte-identical input tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | Path) -> np.ndarray | None:
    """Decode an image file as a BGR uint8 array; ``None`` when it is missing, empty or corrupt."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        return None
    return image


def preprocess(
    image_bgr: np.ndarray,
    size: int | tuple[int, int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """BGR uint8 HxWx3 -> float32 3xHxW, RGB, resized (warped, as ML-GCN evaluates) and normalised."""
    height, width = (size, size) if isinstance(size, int) else size
    resized = cv2.resize(image_bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB).astype(np.float32) * (1.0 / 255.0)
    rgb -= np.asarray(mean, dtype=np.float32)
    rgb /= np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))
