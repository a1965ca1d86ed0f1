"""Pieces every label-graph model shares: checking the label vectors it is built with, and the folded
classifier its label branch becomes at export."""

from __future__ import annotations

import torch
import torch.nn as nn

from mlic_edge.label_graph import LabelGraph


def label_vectors_of(label_graph: LabelGraph | None, num_classes: int, label_dim: int | None,
                     model: str) -> tuple[torch.Tensor | None, int]:
    """(vectors (C, D) or None, D): checks the graph's vectors against ``num_classes`` and ``label_dim``."""
    if label_graph is None:
        if label_dim is None:
            raise ValueError(f"{model} needs a label_graph, or label_dim when rebuilt from a checkpoint")
        return None, int(label_dim)
    vectors = torch.as_tensor(label_graph.vectors, dtype=torch.float32)
    if vectors.ndim != 2 or vectors.shape[0] != num_classes:
        raise ValueError(f"label vectors have shape {tuple(vectors.shape)}, expected ({num_classes}, D)")
    if label_dim is not None and label_dim != vectors.shape[1]:
        raise ValueError(f"label_dim={label_dim} but the label vectors have {vectors.shape[1]} dims")
    return vectors, int(vectors.shape[1])


class FoldedClassifier(nn.Module):
    """Pooled features (from ``features``) times a constant classifier matrix (C, D): the exported graph of a
    model whose label branch was precomputed. Shares the feature module's weights."""

    def __init__(self, features: nn.Module, classifiers: torch.Tensor) -> None:
        super().__init__()
        self.features = features
        self.register_buffer("classifiers", classifiers.detach().clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images) @ self.classifiers.t()
