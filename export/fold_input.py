"""Fold the normalisation into the graph: a uint8 NHWC BGR input, so frames go to the GPU as captured.

The runtime then only resizes (``resize_image``); the cast to float, ``(x/255 - mean)/std``, the channel flip and the
NHWC → NCHW transpose run inside the model — on the GPU with TensorRT, and a quarter of the bytes cross the bus.
No torch here: this works on any exported ONNX, on the training machine or the device.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mlic_edge.errors import MlicError
from mlic_edge.export.metadata import derive_metadata, read_metadata
from mlic_edge.spec import DEFAULT_RESIZE, INPUT_LAYOUTS, UINT8_INPUT


def fold_uint8_input(model: onnx.ModelProto, mean: Sequence[float], std: Sequence[float]) -> onnx.ModelProto:
    """``model`` (one float NCHW RGB input) with a uint8 NHWC BGR input of the same name and the normalisation as
    its first nodes: Cast → Mul → Add (per channel, BGR order) → Transpose → Gather (BGR → RGB)."""
    graph = model.graph
    if len(graph.input) != 1:
        raise MlicError(f"folding the input needs a model with one input, this one has {len(graph.input)}")
    source = graph.input[0]
    dims = source.type.tensor_type.shape.dim
    if source.type.tensor_type.elem_type != TensorProto.FLOAT or len(dims) != 4 or dims[1].dim_value != 3:
        raise MlicError(f"input {source.name!r} is not a float NCHW image with 3 channels; it cannot take uint8 frames")
    name = source.name
    inner = f"{name}_normalized"
    for node in graph.node:
        node.input[:] = [inner if value == name else value for value in node.input]

    std32 = np.asarray(std, np.float32)
    scale = (1.0 / (255.0 * std32))[::-1].reshape(1, 1, 1, 3).astype(np.float32)  # BGR order, as frames come
    shift = (-np.asarray(mean, np.float32) / std32)[::-1].reshape(1, 1, 1, 3).astype(np.float32)
    constants = [numpy_helper.from_array(scale, f"{name}_scale_bgr"), numpy_helper.from_array(shift, f"{name}_shift_bgr"),
                 numpy_helper.from_array(np.array([2, 1, 0], np.int64), f"{name}_bgr_to_rgb")]
    nodes = [
        helper.make_node("Cast", [name], [f"{name}_float"], to=TensorProto.FLOAT, name=f"{name}_cast"),
        helper.make_node("Mul", [f"{name}_float", f"{name}_scale_bgr"], [f"{name}_scaled"], name=f"{name}_scale"),
        helper.make_node("Add", [f"{name}_scaled", f"{name}_shift_bgr"], [f"{name}_nhwc"], name=f"{name}_shift"),
        helper.make_node("Transpose", [f"{name}_nhwc"], [f"{name}_bgr"], perm=[0, 3, 1, 2], name=f"{name}_to_nchw"),
        helper.make_node("Gather", [f"{name}_bgr", f"{name}_bgr_to_rgb"], [inner], axis=1, name=f"{name}_to_rgb"),
    ]
    batch = dims[0].dim_param or dims[0].dim_value
    height, width = dims[2].dim_value, dims[3].dim_value
    new_input = helper.make_tensor_value_info(name, TensorProto.UINT8, [batch, height, width, 3])
    graph.initializer.extend(constants)
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old_nodes)
    graph.input.remove(source)
    graph.input.insert(0, new_input)
    resize = read_metadata(model).get("resize") or DEFAULT_RESIZE
    derive_metadata(model, model, input_format=UINT8_INPUT,
                    input_layout=INPUT_LAYOUTS[UINT8_INPUT].format(resize=resize))
    onnx.checker.check_model(model)
    return model

