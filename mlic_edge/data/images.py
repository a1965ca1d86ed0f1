"""Image decoding and the one preprocessing function shared by training-time evaluation, export checks and runtime.

Keeping a single numpy implementation is what makes parity meaningful: the PyTorch reference and every backend
see byte-identical input tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from mlic_edge.data.resample import pil_bilinear_resize
from mlic_edge.spec import DEFAULT_RESIZE, FLOAT_INPUT, RESIZE_MODES, UINT8_INPUT, ModelSpec, Preprocessing

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LETTERBOX_FILL = (114, 114, 114)  # the grey Ultralytics pads with


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


def resize_image(image: np.ndarray, width: int, height: int, mode: str = DEFAULT_RESIZE) -> np.ndarray:
    """``warp``: stretch to the size (OpenCV's bilinear, no antialiasing); ``warp-antialias``: stretch as PIL's
    bilinear does, smoothing when shrinking (the official ML-GCN, MSRN and Query2Label evaluations, to the grey
    level); ``center-crop``: scale the short side, crop the middle (timm's evaluation at crop_pct 1); ``letterbox``:
    scale the long side, pad with grey (Ultralytics)."""
    if mode == "warp":
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if mode == "warp-antialias":
        return pil_bilinear_resize(image, width, height)
    in_height, in_width = image.shape[:2]
    if mode == "center-crop":
        scale = max(width / in_width, height / in_height)
    elif mode == "letterbox":
        scale = min(width / in_width, height / in_height)
    else:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {', '.join(RESIZE_MODES)}")
    scaled_w, scaled_h = max(1, round(in_width * scale)), max(1, round(in_height * scale))
    scaled = cv2.resize(image, (scaled_w, scaled_h), interpolation=cv2.INTER_LINEAR)
    if mode == "center-crop":
        top, left = (scaled_h - height) // 2, (scaled_w - width) // 2
        return scaled[top:top + height, left:left + width]
    top, left = (height - scaled_h) // 2, (width - scaled_w) // 2
    return cv2.copyMakeBorder(scaled, top, height - scaled_h - top, left, width - scaled_w - left,
                              cv2.BORDER_CONSTANT, value=LETTERBOX_FILL)


def model_input(image_bgr: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float],
                resize: str = DEFAULT_RESIZE, input_format: str = FLOAT_INPUT) -> np.ndarray:
    """What the model takes for one image: the normalised float CHW RGB tensor, or — when the normalisation is folded
    into the graph (``uint8-nhwc-bgr``, see export/fold_input.py) — the resized frame itself, uint8 HWC BGR."""
    if input_format == UINT8_INPUT:
        return np.ascontiguousarray(resize_image(image_bgr, size, size, resize))
    return preprocess(image_bgr, size, mean, std, resize)


def spec_input(image_bgr: np.ndarray, spec: ModelSpec | Preprocessing) -> np.ndarray:
    """The model's input for one frame as ``spec`` says: exactly the preprocessing training evaluated with (or, with
    the normalisation folded into the graph, the resized uint8 frame)."""
    return model_input(image_bgr, spec.img_size, spec.mean, spec.std, spec.resize, spec.input_format)


def preprocess(
    image_bgr: np.ndarray,
    size: int | tuple[int, int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resize: str = DEFAULT_RESIZE,
) -> np.ndarray:
    """BGR uint8 HxWx3 -> float32 3xHxW, RGB, resized (``resize_image``) and normalised."""
    height, width = (size, size) if isinstance(size, int) else size
    return normalize(resize_image(image_bgr, width, height, resize), mean, std)


def normalize(resized_bgr: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """A resized BGR uint8 HxWx3 frame -> float32 3xHxW RGB, (x/255 - mean)/std."""
    height, width = resized_bgr.shape[:2]
    # (x/255 - mean)/std as one multiply-add per channel, written straight into CHW RGB: ~3x faster than
    # convert, normalise, transpose (this runs for every camera frame).
    std32 = np.asarray(std, dtype=np.float32)
    scale = (1.0 / (255.0 * std32)).astype(np.float32)
    shift = (-np.asarray(mean, dtype=np.float32) / std32).astype(np.float32)
    tensor = np.empty((3, height, width), np.float32)
    for channel, bgr_index in enumerate((2, 1, 0)):
        np.multiply(resized_bgr[:, :, bgr_index], scale[channel], out=tensor[channel])
        tensor[channel] += shift[channel]
    return tensor
