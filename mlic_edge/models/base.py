"""What every model in the zoo offers the stages after training."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn


class MultiLabelModel(nn.Module):
    """Base for the zoo: ``forward(images) -> logits`` (N, C); ``for_export()`` the graph that ships.

    ``hyperparameters`` holds exactly what the registry builder needs to rebuild the model from ``checkpoint.pt``.
    Methods trained in stages (semdep) list them in ``training_stages`` and switch with ``set_training_stage``;
    ``concurrent_stage`` names the stage that trains all of them at once (recipe ``stages="concurrent"``).
    """

    training_stages: tuple[str, ...] = ()
    concurrent_stage: str | None = None

    def __init__(self, name: str, num_classes: int, backbone_name: str, **hyperparameters: Any) -> None:
        super().__init__()
        self.model_name = name
        self.num_classes = num_classes
        self.backbone_name = backbone_name
        self.hyperparameters = hyperparameters

    def training_loss(self, images: torch.Tensor, targets: torch.Tensor, criterion: nn.Module) -> torch.Tensor:
        """The loss the trainer minimises. Methods with train-only parts (BatchFormerV2's second stream, MSRN's
        group compactness loss) override this; ``forward`` stays the inference graph."""
        return criterion(self(images), targets)

    def set_training_stage(self, stage: str) -> None:
        raise ValueError(f"{self.model_name} is not trained in stages")

    def config(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "num_classes": self.num_classes,
            "backbone": self.backbone_name,
            "hyperparameters": dict(self.hyperparameters),
        }

    def for_export(self) -> nn.Module:
        """The inference graph: image-independent parts precomputed, train-only parts gone, sigmoid scores out.

        Methods with a label branch override ``fold_static`` so it runs once here, not per image.
        """
        self.eval()
        return _ScoresOutput(self.fold_static()).eval()

    def fold_static(self) -> nn.Module:
        return self


class _ScoresOutput(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(images))
