"""timm backbones with the errors a user can act on (unknown name, no weights offline)."""

from __future__ import annotations

import difflib
from typing import Any

import timm
import torch.nn as nn

from mlic_edge.data.images import IMAGENET_MEAN, IMAGENET_STD
from mlic_edge.errors import MlicError


def create_backbone(
    name: str, pretrained: bool = False, pretrained_file: str | None = None, **kwargs: Any
) -> nn.Module:
    """A timm model without its classifier (``num_classes=0``): ``forward`` gives pooled features.

    ``pretrained_file`` loads ImageNet weights from a local file (timm's ``pretrained_cfg_overlay``), for machines
    without network access.
    """
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models() for names"
        raise MlicError(f"unknown timm backbone {name!r}", hint=hint)
    if pretrained_file:
        pretrained = True
        kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_file)}
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    except (OSError, RuntimeError, ValueError) as error:
        if not pretrained:
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MlicError(
            f"could not load ImageNet weights for {name!r}: {first_line[:200]}",
            hint="this machine may have no network: pass --pretrained-file FILE (a timm/torchvision "
            "checkpoint), put the weights in the Hugging Face cache, or train without --pretrained",
        ) from error


def feature_dim(backbone: nn.Module) -> int:
    """Width of the pooled features: timm models with a head block (MobileNetV3, ...) output ``head_hidden_size``
    rather than ``num_features`` when built with ``num_classes=0``."""
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


def backbone_data_config(backbone: nn.Module) -> dict[str, Any]:
    """Mean/std the backbone expects (its pretrained config), falling back to ImageNet's."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    return {
        "mean": [float(v) for v in cfg.get("mean", IMAGENET_MEAN)],
        "std": [float(v) for v in cfg.get("std", IMAGENET_STD)],
    }
