"""Baseline: a timm backbone, global pooling and a linear head — the reference point of every seed paper
(ML-GCN's "ResNet-101 GAP/GMP" rows)."""

from __future__ import annotations

import torch
import torch.nn as nn

from mlic_edge.models.backbone import create_backbone, feature_dim
from mlic_edge.models.base import MultiLabelModel
from mlic_edge.models.recipe import Recipe
from mlic_edge.models.registry import register_model


PAPER_RECIPE = Recipe(
    source="no paper of its own: the ImageNet-pretrained ResNet fine-tune ML-GCN's baseline uses (SGD 0.01, momentum "
           "0.9, weight decay 1e-4, gradient norm 10); cosine decay over 20 epochs, a 1-epoch warm-up, batch 32 and "
           "crops down to 0.6 of the area chosen (ML-GCN's own step schedule never decays within its 20 epochs)",
    optimizer="sgd", lr=0.01, weight_decay=1e-4, schedule="cosine", warmup_epochs=1.0, epochs=20, batch_size=32,
    grad_clip=10.0, crop_scale=0.6, loss="bce")


@register_model(name="baseline", paper="global pooling + linear head (ML-GCN baseline)",
                default_backbone="resnet50", default_img_size=224, recipe=PAPER_RECIPE)
class Baseline(MultiLabelModel):
    """Backbone, global average (or max) pooling, one linear classifier per label."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        pretrained: bool = False,
        pretrained_file: str | None = None,
        pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__("baseline", num_classes, backbone, pool=pool, drop_rate=drop_rate)
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.backbone = create_backbone(backbone, pretrained, pretrained_file, global_pool=pool)
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(feature_dim(self.backbone), num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(images)))
