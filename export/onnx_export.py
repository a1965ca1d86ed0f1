"""PyTorch -> ONNX: dynamic batch, static label branches folded (``for_export``), simplified with onnxsim,
metadata attached, and checked against PyTorch on real images of the eval split."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

import mlic_edge
from mlic_edge.console import info, warn
from mlic_edge.data import open_dataset
from mlic_edge.data.images import model_input, preprocess, read_image
from mlic_edge.export.fold_input import fold_uint8_input
from mlic_edge.export.metadata import write_metadata
from mlic_edge.errors import MlicError
from mlic_edge.export.lineage import CHECKPOINT_SHA
from mlic_edge.io import sha256_file
from mlic_edge.models.checkpoint import load_model
from mlic_edge.rundir import RunDir
from mlic_edge.spec import FLOAT_INPUT, UINT8_INPUT, WEIGHTED_OP_TYPES, ExportCheck, ExportSection, RunSpec

INPUT_NAME, OUTPUT_NAME = "images", "scores"
DEFAULT_OPSET = 17  # the newest opset TensorRT 8.6 (JetPack 6.0) parses


@dataclass
class ExportResult:
    path: Path
    opset: int
    max_abs_diff: float
    mean_abs_diff: float
    check_images: int
    seconds: float


def export_onnx(run: RunDir, opset: int = DEFAULT_OPSET, simplify: bool = True, dynamo: bool = False,
                check_images: int = 16, uint8_input: bool = False) -> ExportResult:
    """model.onnx from the checkpoint, checked against PyTorch on real eval images. ``uint8_input`` folds the
    normalisation into the graph (uint8 NHWC BGR frames in; export/fold_input.py) and checks the folded graph on
    the raw frames against the float graph on the preprocessed ones."""
    spec = run.spec()
    run.require_checkpoint()
    info(f"exporting {spec.model} ({spec.backbone}, {spec.img_size} px) to ONNX…")
    checkpoint_sha = sha256_file(run.checkpoint)
    model = load_model(run.checkpoint)
    graph = model.for_export()
    started = time.monotonic()
    example = torch.zeros(2, 3, spec.img_size, spec.img_size)

    with run.transaction() as change:  # model.onnx and run.json's export section, put in place together
        tmp = change.path(run.onnx("fp32"))
        write_onnx(graph, example, tmp, spec, opset=opset, simplify=simplify, dynamo=dynamo,
                   checkpoint_sha256=checkpoint_sha)
        frames = _check_frames(spec, check_images)
        inputs = _float_inputs(spec, frames)
        max_diff, mean_diff = _compare_with_torch(graph, tmp, inputs)
        if uint8_input:
            max_diff = max(max_diff, _fold_and_check(tmp, spec, frames, inputs))
        result = ExportResult(run.onnx("fp32"), opset, max_diff, mean_diff, len(inputs), time.monotonic() - started)
        change.update(input_format=UINT8_INPUT if uint8_input else FLOAT_INPUT, export=ExportSection(
            onnx=result.path.name, opset=opset, simplified=simplify, exporter="dynamo" if dynamo else "torchscript",
            input=INPUT_NAME, output=OUTPUT_NAME, source_checkpoint_sha256=checkpoint_sha,
            check=ExportCheck(images=result.check_images, max_abs_diff=max_diff, mean_abs_diff=mean_diff,
                              backend="onnxruntime CPUExecutionProvider")))
    return result


def write_onnx(graph: torch.nn.Module, example: torch.Tensor, path: Path, spec: RunSpec | dict[str, Any], *,
               opset: int = DEFAULT_OPSET, simplify: bool = True, dynamo: bool = False,
               checkpoint_sha256: str | None = None) -> None:
    """The model.onnx every later stage reads: exported, simplified, checked, with the run contract as metadata
    (``spec``: a RunSpec, or run.json's content) and the sha256 of the checkpoint it came from (export/lineage.py)."""
    export_graph(graph, example, path, opset, dynamo)
    proto = onnx.load(str(path))
    if simplify:
        proto = simplify_graph(proto)
    _set_metadata(proto, spec if isinstance(spec, RunSpec) else RunSpec.from_run_json(spec), precision="fp32",
                  lineage={CHECKPOINT_SHA: checkpoint_sha256} if checkpoint_sha256 else {})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def write_float_onnx(graph: torch.nn.Module, path: Path, spec: RunSpec) -> None:
    """``graph`` (weights changed since model.onnx, e.g. fine-tuned) as a float ONNX in model.onnx's form: exported
    and simplified as it is, the input folded to uint8 where model.onnx's is."""
    write_onnx(graph, torch.zeros(2, 3, spec.img_size, spec.img_size), path, spec)
    if spec.input_format == UINT8_INPUT:
        onnx.save(fold_uint8_input(onnx.load(str(path)), spec.mean, spec.std), str(path))


def write_qdq_onnx(graph: torch.nn.Module, path: Path, spec: RunSpec, source_onnx: Path, *,
                   opset: int = DEFAULT_OPSET, **stamps: str) -> int:
    """The int8 Q/DQ graph of a fake-quantized model (quantization-aware training, train/qat.py): exported like
    model.onnx (same names, dynamic batch, onnxsim unless it changes the Q/DQ pairs, the input folded to uint8 where
    model.onnx's is), each weight's QuantizeLinear folded into an int8 initializer (the form post-training int8
    has: a quarter of the size), and model.onnx's metadata with ``precision=int8``, ``source_onnx_sha256`` and
    ``stamps`` on top. Returns the number of DequantizeLinear nodes."""
    from mlic_edge.export.lineage import ONNX_SHA
    from mlic_edge.export.metadata import derive_metadata

    export_graph(graph, torch.zeros(2, 3, spec.img_size, spec.img_size), path, opset)
    proto = onnx.load(str(path))
    pairs = _qdq_counts(proto)
    simplified = simplify_graph(proto)
    if _qdq_counts(simplified) == pairs:
        proto = simplified
    else:
        warn("onnxsim changed the Q/DQ pairs of the int8 graph; keeping the unsimplified graph")
    fold_weight_quantizers(proto)
    if spec.input_format == UINT8_INPUT:
        proto = fold_uint8_input(proto, spec.mean, spec.std)
    derive_metadata(proto, onnx.load(str(source_onnx), load_external_data=False), precision="int8",
                    **{ONNX_SHA: sha256_file(source_onnx)}, **stamps)
    proto.producer_name, proto.producer_version = "mlic-edge", mlic_edge.__version__
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return _qdq_counts(proto)[1]


def _qdq_counts(proto: onnx.ModelProto) -> tuple[int, int]:
    ops = [node.op_type for node in proto.graph.node]
    return ops.count("QuantizeLinear"), ops.count("DequantizeLinear")


def fold_weight_quantizers(proto: onnx.ModelProto) -> int:
    """Replace each QuantizeLinear of a constant (a weight, as torch exports fake quantization: float weight -> Q
    -> DQ) by its int8 result, so the DequantizeLinear reads an int8 initializer; the same values, ONNX's rounding
    (half to even, saturated). Returns how many were folded."""
    from onnx import numpy_helper

    graph = proto.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    constant_nodes = {node.output[0]: node for node in graph.node if node.op_type == "Constant"}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1

    def value(name: str):
        if name in constants:
            return numpy_helper.to_array(constants[name])
        node = constant_nodes.get(name)
        return numpy_helper.to_array(node.attribute[0].t) if node is not None and node.attribute[0].name == "value" \
            else None

    folded, kept = 0, []
    for node in graph.node:
        weight = value(node.input[0]) if node.op_type == "QuantizeLinear" else None
        if weight is None or weight.dtype != np.float32:
            kept.append(node)
            continue
        scale, zero = value(node.input[1]), value(node.input[2]) if len(node.input) > 2 else None
        axis = next((attribute.i for attribute in node.attribute if attribute.name == "axis"), 1)
        if scale is None or (zero is not None and zero.dtype != np.int8):
            kept.append(node)
            continue
        shape = [1] * weight.ndim
        if scale.ndim:
            shape[axis] = scale.size
        zero_point = zero.reshape(shape).astype(np.float32) if zero is not None and zero.ndim else float(zero or 0)
        quantized = np.clip(np.round(weight / scale.reshape(shape)) + zero_point, -128, 127).astype(np.int8)
        name = node.output[0]
        graph.initializer.append(numpy_helper.from_array(quantized, name))
        if node.input[0] in constants and consumers.get(node.input[0]) == 1:
            graph.initializer.remove(constants.pop(node.input[0]))
        folded += 1
    used = {name for node in kept for name in node.input} | {out.name for out in graph.output}
    kept = [node for node in kept if node.op_type != "Constant" or node.output[0] in used]
    del graph.node[:]
    graph.node.extend(kept)
    return folded


def export_graph(graph: torch.nn.Module, example: torch.Tensor, path: Path, opset: int = DEFAULT_OPSET,
                 dynamo: bool = False) -> None:
    """torch -> ONNX with the names and dynamic batch axis every stage after export relies on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if dynamo:
                batch = torch.export.Dim("batch", min=1, max=4096)
                torch.onnx.export(graph, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  opset_version=max(opset, 18), dynamo=True, dynamic_shapes=({0: batch},),
                                  verbose=False)
            else:
                torch.onnx.export(graph, (example,), str(path), input_names=[INPUT_NAME],
                                  output_names=[OUTPUT_NAME], opset_version=opset, dynamo=False,
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        except Exception as error:
            raise MlicError(f"torch.onnx.export failed: {str(error).splitlines()[0][:300]}",
                            hint="try the other exporter (--dynamo / --no-dynamo) or another --opset; "
                                 "rerun with --debug for the traceback") from error


def simplify_graph(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` simplified by onnxsim, each weighted node under the exporter's scope (``restore_scopes``); ``proto``
    itself where onnxsim cannot validate its result."""
    import onnxsim

    simplified, ok = onnxsim.simplify(proto)
    if not ok:
        warn("onnxsim could not validate the simplified model; keeping the unsimplified graph")
        return proto
    restore_scopes(proto, simplified)
    return simplified


def restore_scopes(exported: onnx.ModelProto, simplified: onnx.ModelProto) -> None:
    """Name each weighted node ``simplified`` made (onnxsim fuses a MatMul and its bias Add into a Gemm named
    ``Gemm_N``) under the scope of the ``exported`` node it replaced, found by the weight the two read:
    ``/model/encoder.0/linear1/MatMul`` becomes ``/model/encoder.0/linear1/Gemm``. The scope names the module a node
    came from, which ``--keep-fp``, the int8 search's report and the fine-tuning (train/qat.py ``float_modules``)
    rely on. A weight read by more than one exported node names none."""
    readers: dict[str, list[str]] = {}
    for node in exported.graph.node:
        if node.op_type in WEIGHTED_OP_TYPES and len(node.input) > 1:
            readers.setdefault(node.input[1], []).append(node.name)
    exported_names = {node.name for node in exported.graph.node}
    taken = {node.name for node in simplified.graph.node}
    for node in simplified.graph.node:
        if node.name in exported_names or node.op_type not in WEIGHTED_OP_TYPES or len(node.input) < 2:
            continue
        sources = readers.get(node.input[1], [])
        scope = sources[0].rpartition("/")[0] if len(sources) == 1 else ""
        if not scope:
            continue
        name = f"{scope}/{node.op_type}"
        suffix = 0
        while name in taken:
            suffix += 1
            name = f"{scope}/{node.op_type}_{suffix}"
        taken.discard(node.name)
        node.name = name
        taken.add(name)


def _set_metadata(proto: onnx.ModelProto, spec: RunSpec, precision: str, lineage: dict[str, str]) -> None:
    """Everything a runtime needs to preprocess and name outputs, so an ONNX file alone is usable."""
    spec = replace(spec, input_format=FLOAT_INPUT)  # folding, if asked, comes after
    write_metadata(proto, {**spec.onnx_metadata(precision, mlic_edge.__version__), **lineage})
    proto.producer_name = "mlic-edge"
    proto.producer_version = mlic_edge.__version__


def _check_frames(spec: RunSpec, count: int) -> list[np.ndarray]:
    """Real images of the eval split (BGR, as read); random uint8 images when the split cannot be read, so that the
    check feeds what the run's preprocessing makes of a frame (noise of any other range can push a model where no
    image takes it, and report a difference no image shows)."""
    frames: list[np.ndarray] = []
    try:
        recorded = spec.dataset_record
        if not recorded.spec:
            raise MlicError("run.json names no dataset")
        dataset = open_dataset(recorded.spec, role="eval", split=recorded.eval_split)
        for path in dataset.image_paths:
            image = read_image(path)
            if image is not None:
                frames.append(image)
            if len(frames) >= count:
                break
    except MlicError as error:
        warn(f"export check cannot read the eval split ({error}); checking on random uint8 images through the run's "
             "preprocessing instead")
        rng = np.random.default_rng(0)
        frames = list(rng.integers(0, 256, (max(2, count), spec.img_size, spec.img_size, 3), dtype=np.uint8))
    return frames


def _float_inputs(spec: RunSpec, frames: list[np.ndarray]) -> np.ndarray:
    """The frames preprocessed like the runtime does."""
    return np.stack([preprocess(image, spec.img_size, spec.mean, spec.std, spec.resize) for image in frames])


def _fold_and_check(path: Path, spec: RunSpec, frames: list[np.ndarray], inputs: np.ndarray) -> float:
    """Fold the normalisation into ``path``; max |folded(raw frames) - float graph(preprocessed)|."""
    import onnxruntime as ort

    float_scores = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        [OUTPUT_NAME], {INPUT_NAME: inputs})[0]
    onnx.save(fold_uint8_input(onnx.load(str(path)), spec.mean, spec.std), str(path))
    raw = np.stack([model_input(image, spec.img_size, spec.mean, spec.std, spec.resize, UINT8_INPUT)
                    for image in frames])
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run([OUTPUT_NAME], {INPUT_NAME: raw})[0]
    diff = float(np.abs(got.astype(np.float64) - float_scores.astype(np.float64)).max())
    info(f"normalisation folded into the graph (uint8 NHWC BGR input): max |folded - float| = {diff:.2e}")
    return diff


def _compare_with_torch(graph: torch.nn.Module, onnx_path: Path, inputs: np.ndarray) -> tuple[float, float]:
    import onnxruntime as ort

    info(f"export check: PyTorch against ONNX Runtime on {len(inputs)} images…")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = graph(torch.from_numpy(inputs)).numpy()
    got = session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0]
    diff = np.abs(expected.astype(np.float64) - got.astype(np.float64))
    info(f"export check on {len(inputs)} images: max |PyTorch - ONNX Runtime| = {diff.max():.2e}")
    return float(diff.max()), float(diff.mean())
