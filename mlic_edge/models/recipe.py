"""Training recipes as data: each registered model declares how its paper trains it (``paper``); every model also
has ``quick``, a from-scratch recipe that learns a small dataset in minutes on a CPU (``demo`` and the tests).

torch-free: ``mlic-edge train --help`` and ``mlic-edge models`` list recipes without importing PyTorch. The trainer
resolves ``TrainConfig`` against the recipe (every option the user gives overrides one field) and records the
resolved recipe in run.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

RECIPE_NAMES = ("paper", "quick")
STARTS_PRETRAINED = {"paper": True, "quick": False}
"""Whether a recipe starts from the backbone's ImageNet weights (``--pretrained``'s default): every paper fine-tunes
them; ``quick`` learns from scratch. Known by the recipe's name, so it is decided before PyTorch loads."""
WEIGHTS_FILE_FORMATS = "a timm or torchvision checkpoint (.pth/.pt) or a .safetensors file of the backbone"
"""What ``--pretrained-file`` takes (mlic_edge/models/backbone.py loads it)."""
SCHEDULES = ("cosine", "step", "onecycle")
AUGMENTATIONS = ("randaugment", "cutout", "cutmix")  # on top of the random resized crop and flip of every recipe
STAGE_MODES = ("none", "sequential", "concurrent")
"""How a model trained in stages (semdep) goes through them: ``none`` end to end; ``sequential`` one stage after the
other, the epochs split evenly, a schedule each (``training_stages``); ``concurrent`` every stage's loss at once,
each part held fixed for the parts after it by stopped gradients (the model's ``concurrent_stage``)."""


def stage_mode(value: str | bool | None) -> str | None:
    """A STAGE_MODES name; runs recorded before the modes existed wrote a bool (True: sequential)."""
    if isinstance(value, bool):
        return "sequential" if value else "none"
    return value


@dataclass(frozen=True)
class Recipe:
    """One way to train a model. ``source`` says where each value comes from (paper section or official file) and
    what was chosen where the paper is silent."""

    source: str
    optimizer: str = "sgd"  # sgd (momentum 0.9, Nesterov) | adamw
    lr: float = 0.01
    backbone_lr_scale: float = 1.0  # the backbone's learning rate is lr × this (ML-GCN, MSRN: 0.1)
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine | step (×0.1 at 60 % and 85 %) | onecycle (PyTorch's OneCycleLR)
    warmup_epochs: float = 1.0  # linear warm-up (cosine, step); onecycle's rise is its own (20 % of the steps)
    epochs: int = 20
    batch_size: int = 32
    img_size: int | None = None  # None: the model's default input size
    grad_clip: float | None = 10.0  # max global gradient norm; None: no clipping
    ema_decay: float | None = None  # exponential moving average of the weights (timm ModelEmaV3); None: off
    crop_scale: float = 0.6  # random resized crop keeps at least this share of the image area
    augment: tuple[str, ...] = ()  # extra augmentations from AUGMENTATIONS
    mean: tuple[float, float, float] | None = None  # input normalisation; None: the backbone's (timm's data config)
    std: tuple[float, float, float] | None = None
    # Both freezings apply to pretrained backbones only (from scratch the trainer trains them and says so).
    frozen_bn: bool = False  # backbone BatchNorm kept in eval mode, affine frozen (Query2Label's FrozenBatchNorm2d)
    frozen_stem: bool = False  # backbone stem and first stage not trained (Query2Label's/DETR's backbone: layer2-4)
    stages: str = "none"  # one of STAGE_MODES: how to go through the model's training stages (semdep §3.1)
    loss: str = "bce"
    loss_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", stage_mode(self.stages))

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["augment"] = list(self.augment)
        values["loss_options"] = dict(self.loss_options)
        return values

    def with_changes(self, **changes: Any) -> "Recipe":
        """This recipe with the fields given (not None) replaced: what the user's options override."""
        known = {item.name for item in fields(self)}
        return replace(self, **{key: value for key, value in changes.items() if key in known and value is not None})


QUICK = Recipe(
    source="mlic-edge: from scratch on a few hundred images in minutes on a CPU (the demo's settings: AdamW 3e-3, "
           "half an epoch of warm-up, 12 epochs at 96 px, mild crops); not a paper's",
    optimizer="adamw", lr=3e-3, weight_decay=1e-4, schedule="cosine", warmup_epochs=0.5, epochs=12, batch_size=32,
    img_size=96, grad_clip=10.0, crop_scale=0.8)


def quick_at(lr: float, why: str) -> Recipe:
    """The quick recipe at another learning rate, for a model the shared rate does not train; ``why``: what was
    measured, appended to the source."""
    return QUICK.with_changes(lr=lr, source=f"{QUICK.source}; {why}")


def recipes_of(paper: Recipe, quick: Recipe | None = None) -> dict[str, Recipe]:
    """A model's recipes by name: its paper's and the quick one (the shared ``QUICK`` unless it has its own)."""
    return {"paper": paper, "quick": quick or QUICK}
