"""Per-layer INT8 sensitivity: which quantized layers add the most error, named as ``--keep-fp`` accepts them.

Each quantized node's output, and the float tensors feeding its input Q/DQ, are exposed as graph outputs in both
the fp32 and the int8 graph; one ONNX Runtime pass over the same inputs in each gives every layer's relative
error. Errors accumulate downstream, so a layer is ranked by the error it *adds*: its output error minus the
largest error already present on its inputs. Two passes in all, against one quantization per layer for
quantize-one-layer-at-a-time, which costs as many calibrations as there are layers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx

from mlic_edge.calibration.int8 import constant_names, quantizable_nodes
from mlic_edge.errors import CalibrationError


def layer_sensitivity(fp32_path: Path, int8_path: Path, inputs: np.ndarray, top: int | None = 5) -> list[dict]:
    """The ``top`` (None: all) quantized layers adding the most relative error on ``inputs`` (a preprocessed NCHW
    batch), worst first: node name, op type, input and output relative error, added error and output SQNR in dB."""
    int8 = onnx.load(str(int8_path))
    layers = _quantized_layers(int8)
    if not layers:
        raise CalibrationError(f"{Path(int8_path).name} has no quantized layer", hint="quantize it with quantize_int8")
    tensors = sorted({name for _, _, ins, out in layers for name in (*ins, out)})
    fp32_values = _run_with_outputs(onnx.load(str(fp32_path)), tensors, inputs)
    int8_values = _run_with_outputs(int8, tensors, inputs)

    rows = []
    for name, op_type, layer_inputs, output in layers:
        if output not in fp32_values:
            continue
        out_error = _relative_error(int8_values[output], fp32_values[output])
        in_error = max((_relative_error(int8_values[t], fp32_values[t]) for t in layer_inputs if t in fp32_values),
                       default=0.0)
        rows.append({"node": name, "op_type": op_type, "input_error": in_error, "output_error": out_error,
                     "added_error": out_error - in_error, "sqnr_db": _sqnr_db(out_error)})
    rows.sort(key=lambda row: row["added_error"], reverse=True)
    return rows if top is None else rows[:top]


def _quantized_layers(model: onnx.ModelProto) -> list[tuple[str, str, list[str], str]]:
    """(node, op type, float tensors before its input Q/DQ, output) for every quantizable node (the names
    ``--keep-fp`` accepts) fed by a DequantizeLinear."""
    producer = {out: node for node in model.graph.node for out in node.output}
    constants = constant_names(model)
    quantizable = set(quantizable_nodes(model))
    layers = []
    for node in model.graph.node:
        if node.name not in quantizable:
            continue
        sources = [_before_qdq(name, producer) for name in node.input if name]
        if not any(name != original for name, original in zip(sources, node.input)):
            continue  # not quantized (kept in float)
        activations = [name for name in sources if name not in constants]
        layers.append((node.name, node.op_type, activations, node.output[0]))
    return layers


def _before_qdq(name: str, producer: dict[str, onnx.NodeProto]) -> str:
    """The float tensor a DequantizeLinear(QuantizeLinear(x)) chain started from (``name`` itself otherwise)."""
    dq = producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        return name
    q = producer.get(dq.input[0])
    return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else dq.input[0]


def _run_with_outputs(model: onnx.ModelProto, tensors: list[str], inputs: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    produced = {out for node in model.graph.node for out in node.output} | {i.name for i in model.graph.input}
    existing = {output.name for output in model.graph.output}
    wanted = [name for name in tensors if name in produced]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in wanted
                              if name not in existing)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor observable
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {model.graph.input[0].name: inputs if inputs.dtype == np.uint8 else inputs.astype(np.float32)}
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    values.update({model.graph.input[0].name: feeds[model.graph.input[0].name]})
    return {name: values[name] for name in wanted if name in values}


def _relative_error(approx: np.ndarray, exact: np.ndarray) -> float:
    exact64 = exact.astype(np.float64)
    noise = float(np.sum((approx.astype(np.float64) - exact64) ** 2))
    return math.sqrt(noise / max(float(np.sum(exact64 ** 2)), 1e-30))


def _sqnr_db(relative_error: float) -> float:
    return math.inf if relative_error == 0 else -20.0 * math.log10(relative_error)
