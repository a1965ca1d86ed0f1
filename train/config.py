"""What a training run is asked to do: ``TrainConfig`` holds the only defaults (the CLI's options take theirs from
it). torch-free, so ``mlic-edge train --help`` stays fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlic_edge.errors import MlicError
from mlic_edge.spec import DEFAULT_RESIZE, RESIZE_MODES

SAMPLERS = ("random", "class-aware")
DIFFICULT_POLICIES = ("ignore", "positive", "negative")  # VOC difficult objects


@dataclass
class TrainConfig:
    model: str
    data: str
    out: Path
    backbone: str | None = None
    epochs: int = 20
    img_size: int | None = None
    batch_size: int = 32
    lr: float | None = None
    optimizer: str = "sgd"
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-4
    loss: str = "bce"
    loss_options: dict[str, Any] = field(default_factory=dict)
    sampler: str = "random"
    stages: bool = False
    label_vectors: str | None = None
    crop_scale: float = 0.6
    resize: str = DEFAULT_RESIZE
    pretrained: bool = False
    pretrained_file: str | None = None
    train_split: str | None = None
    eval_split: str | None = None
    difficult: str = "ignore"
    workers: int = 2
    seed: int = 0
    resume: bool = False
    overwrite: bool = False  # train afresh into a run that has exports: its old generation moves to previous/
    device: str = "auto"
    model_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.lr is None or self.lr > 0, "--lr must be positive"),
            (self.img_size is None or self.img_size >= 32, "--img-size must be at least 32"),
            (self.workers >= 0, "--workers must be 0 or more"),
            (0.05 <= self.crop_scale <= 1.0, "--crop-scale must be in [0.05, 1]"),
            (self.sampler in SAMPLERS, f"--sampler must be one of {', '.join(SAMPLERS)}"),
            (self.resize in RESIZE_MODES, f"--resize must be one of {', '.join(RESIZE_MODES)}"),
            (self.difficult in DIFFICULT_POLICIES, f"--difficult must be one of {', '.join(DIFFICULT_POLICIES)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise MlicError(message)
