"""What ``mlic-edge models`` reports: paper, defaults, parameters and compute of each registered model."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from mlic_edge.label_graph import LabelGraph
from mlic_edge.models.registry import ModelEntry, create_model, model_options


def placeholder_label_graph(num_classes: int, dim: int = 300, seed: int = 0) -> LabelGraph:
    """Random vectors and co-occurrence: enough to build a graph model for counting, never for training."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((4 * num_classes + 8, num_classes)) < 0.3).astype(np.int8)
    return LabelGraph.from_targets([f"class{i}" for i in range(num_classes)], targets,
                                   rng.standard_normal((num_classes, dim)).astype(np.float32), "placeholder")


def summarize(entry: ModelEntry, num_classes: int = 80, img_size: int | None = None,
              count_flops: bool = True) -> dict[str, Any]:
    """Parameters of the exported (inference) graph and of training, and forward FLOPs for one image."""
    size = img_size or entry.default_img_size
    graph = placeholder_label_graph(num_classes) if entry.needs_label_graph else None
    model = create_model(entry.name, num_classes, label_graph=graph).eval()
    inference = model.for_export()
    row: dict[str, Any] = {
        "name": entry.name,
        "paper": entry.paper,
        "default_backbone": entry.default_backbone,
        "default_backbone_weights": _hub_id(entry.default_backbone),
        "default_img_size": entry.default_img_size,
        "num_classes": num_classes,
        "img_size": size,
        "params_train_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "params_inference_M": sum(t.numel() for t in _tensors(inference)) / 1e6,
        "needs_label_graph": entry.needs_label_graph,
        "options": model_options(entry.name),
        "recipes": {name: recipe.as_dict() for name, recipe in entry.recipes.items()},
    }
    if count_flops:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            inference(torch.zeros(1, 3, size, size))
        flops = counter.get_total_flops()
        row["GFLOPs"] = flops / 1e9
        row["GMACs"] = flops / 2e9
    return row


def _hub_id(backbone: str) -> str | None:
    """The Hugging Face repository of the backbone's default ImageNet weights (timm's pretrained config): what
    `mlic-edge train` names, before PyTorch loads, where they cannot be had (models/hub.py)."""
    import timm

    try:
        return timm.models.get_pretrained_cfg(backbone).hf_hub_id or None
    except (RuntimeError, AttributeError):
        return None


def _tensors(module: torch.nn.Module):
    """Parameters and buffers (folded label branches are buffers), each counted once."""
    seen = set()
    for tensor in list(module.parameters()) + list(module.buffers()):
        if id(tensor) not in seen and tensor.is_floating_point():
            seen.add(id(tensor))
            yield tensor
