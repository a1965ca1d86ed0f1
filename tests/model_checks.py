"""Checks shared by the model tests: a few optimisation steps, and export through the project's exporter."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import onnx
import torch

from mlic_edge.export.onnx_export import export_graph, simplify_graph


def fit_steps(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, criterion: torch.nn.Module,
              steps: int = 40, lr: float = 1e-3, after_first_backward: Callable[[], None] | None = None) -> list[float]:
    """Adam on one batch through ``model.training_loss``; returns the loss of every step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses: list[float] = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model.training_loss(images, targets, criterion)
        loss.backward()
        if not losses and after_first_backward is not None:
            after_first_backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def to_onnx(graph: torch.nn.Module, path: Path, img_size: int = 64, simplify: bool = False) -> onnx.ModelProto:
    """Export as ``mlic-edge export`` does (opset 17, dynamic batch, input ``images``, output ``scores``), simplified
    as it does where ``simplify``."""
    export_graph(graph, torch.zeros(2, 3, img_size, img_size), path)
    proto = onnx.load(str(path))
    return simplify_graph(proto) if simplify else proto


def assert_onnxruntime_matches(graph: torch.nn.Module, path: Path, img_size: int = 64, atol: float = 1e-4) -> None:
    """ONNX Runtime on ``path`` gives ``graph``'s scores at batch 1 and 3 (the batch axis really is dynamic)."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        images = torch.randn(batch, 3, img_size, img_size)
        with torch.no_grad():
            expected = graph(images).numpy()
        (got,) = session.run(None, {"images": images.numpy()})
        np.testing.assert_allclose(got, expected, atol=atol, rtol=0)


def change_one_weight(path: Path, by: float = 0.5) -> None:
    """Add ``by`` to one value of the first float weight tensor of the ONNX at ``path``: still a valid graph that
    loads and runs, but no longer the bytes that were made or verified."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weight = next(init for init in model.graph.initializer
                  if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) >= 2)
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] += by
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(model, str(path))
