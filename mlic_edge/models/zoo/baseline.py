"""Baseline: a timm backbone, global pooling and a linear head — the reference point of every seed paper
(ML-GCN's "ResNet-101 GAP/GMP" rows)."""

from __future__ import annotations

import torch
import torch.nn as nn

from mlic_edge.models.backbone import create_backbone, feature_dim
from mlic_edge.models.base import MultiLabelModel
from mlic_edge.models.registry import register_model


@register_model(name="baseline", paper="global pooling + linear head (ML-GCN baseline)",
                default_backbone="resnet50", default_img_size=224)
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
