"""fp32 ONNX -> mixed-precision fp16 ONNX (fp32 inputs/outputs), with the fp32 nodes decided by measurement.

ONNX Runtime's own converter does the conversion; this module decides its node block list:
1. ranges: the fp32 graph runs on calibration images with every intermediate tensor exposed; a node whose inputs
   or outputs exceed ``range_limit`` (fp16's max over a headroom factor), or whose outputs would mostly underflow
   fp16, stays fp32;
2. accuracy: the fp16 graph (emulated: fp16 storage made explicit with Casts, see ``_fp16_emulation``) runs beside
   the fp32 one; while the scores differ by more than ``tolerance``, the node whose relative error jumps most over
   its inputs' error is kept fp32 and the measurement repeated.
The converted graph is then fixed up for TensorRT's strongly typed parser (no fp16 round trip between fp32 nodes,
topological order) and written with the fp32 model's metadata, precision=fp16 and the fp32 file's sha256.
Every decision is a :class:`KeptNode` with the measured reason. No torch here: this runs on the edge device too.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from mlic_edge.errors import CalibrationError
from mlic_edge.export.metadata import derive_metadata
from mlic_edge.export.lineage import ONNX_SHA
from mlic_edge.io import atomic_path, sha256_file

FP16_MAX = float(np.finfo(np.float16).max)  # 65504
# Calibration images do not bound what unseen images produce: keep 4x (two binades) of margin below fp16's max.
RANGE_HEADROOM = 4.0
DEFAULT_RANGE_LIMIT = FP16_MAX / RANGE_HEADROOM
FP16_SMALLEST = 2.0 ** -24  # smallest fp16 subnormal; nonzero magnitudes below it become 0
UNDERFLOW_SHARE = 0.05  # a node output with more than this share of its nonzero values below FP16_SMALLEST stays fp32
# Sigmoid scores in [0, 1]: 1e-3 is about four fp16 rounding steps at 0.5, far below any change in a ranking.
DEFAULT_TOLERANCE = 1e-3
DEFAULT_MAX_REFINEMENTS = 8
MEASURE_BATCH = 8
ASKED_REASON = "asked (--keep-fp)"

Progress = Callable[[str], None]


@dataclass
class KeptNode:
    """One node left in fp32, and why (measured, or asked for)."""

    name: str
    op_type: str
    reason: str


@dataclass
class Fp16Report:
    path: Path
    kept_fp32: list[KeptNode]
    max_abs_diff: float
    mean_abs_diff: float
    images: int
    seconds: float
    nodes_total: int
    refinements: int = 0
    settings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


@dataclass
class _TensorStats:
    """Running statistics of one fp32 tensor over the calibration batches."""

    max_abs: float = 0.0
    nonzero: int = 0
    underflow: int = 0

    def add(self, values: np.ndarray) -> None:
        magnitude = np.abs(values.astype(np.float64, copy=False))
        if magnitude.size:
            self.max_abs = max(self.max_abs, float(np.max(magnitude)))
        self.nonzero += int(np.count_nonzero(magnitude))
        self.underflow += int(np.count_nonzero((magnitude > 0) & (magnitude < FP16_SMALLEST)))

    @property
    def underflow_share(self) -> float:
        return self.underflow / self.nonzero if self.nonzero else 0.0


@dataclass
class _ErrorStats:
    """Running ||fp16 - fp32|| and ||fp32|| of one tensor; non-finite fp16 values make the error infinite."""

    diff_sq: float = 0.0
    ref_sq: float = 0.0
    finite: bool = True

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        reference = reference.astype(np.float64, copy=False)
        candidate = candidate.astype(np.float64, copy=False)
        if not np.all(np.isfinite(candidate)):
            self.finite = False
            return
        self.diff_sq += float(np.sum((candidate - reference) ** 2))
        self.ref_sq += float(np.sum(reference ** 2))

    @property
    def relative(self) -> float:
        if not self.finite:
            return float("inf")
        return float(np.sqrt(self.diff_sq / max(self.ref_sq, 1e-30)))


def convert_to_fp16(fp32_path: Path, out_path: Path, inputs: np.ndarray, *, keep_fp32: Sequence[str] = (),
                    range_limit: float = DEFAULT_RANGE_LIMIT, tolerance: float = DEFAULT_TOLERANCE,
                    max_refinements: int = DEFAULT_MAX_REFINEMENTS, progress: Progress | None = None) -> Fp16Report:
    """Write ``out_path``: ``fp32_path`` in mixed fp16 with fp32 graph inputs/outputs, measured on ``inputs``.

    ``inputs`` are float32 NCHW preprocessed images (a few dozen from the training split). Raises
    CalibrationError when the scores still differ by more than ``tolerance`` after ``max_refinements``.
    """
    started = time.monotonic()
    say = progress or (lambda message: None)
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    inputs = _check_inputs(inputs)
    model = _load(fp32_path)
    nodes = {node.name: node for node in model.graph.node}

    kept = {name: KeptNode(name, nodes[name].op_type, ASKED_REASON) for name in _check_asked(keep_fp32, nodes)}
    say(f"measuring fp32 tensor ranges on {len(inputs)} images")
    stats = _range_stats(model, inputs)
    for node in model.graph.node:
        if node.name not in kept and (reason := _range_reason(node, stats, range_limit)):
            kept[node.name] = KeptNode(node.name, node.op_type, reason)

    refinements = 0
    while True:
        say(f"comparing fp16 (emulated) with fp32, {len(kept)} node(s) kept in fp32")
        errors, max_diff, mean_diff = _compare(model, _fp16_emulation(model, kept), inputs)
        say(f"max |fp16 - fp32| score difference: {max_diff:.2e} (tolerance {tolerance:.0e})")
        if max_diff <= tolerance:
            break
        culprit = _largest_error_node(model, errors, kept) if refinements < max_refinements else None
        if culprit is None:
            raise CalibrationError(
                f"fp16 scores differ from fp32 by {max_diff:.2e} (> tolerance {tolerance:.0e}) after "
                f"{refinements} refinement(s)",
                hint=f"keep more nodes in fp32 with --keep-fp NODE (largest errors: "
                     f"{', '.join(_worst_nodes(model, errors, kept))}), or raise the tolerance")
        kept[culprit.name] = culprit
        refinements += 1

    converted = _convert(model, kept)
    _finish_metadata(converted, model, fp32_path, list(kept.values()), keep_fp32)
    onnx.checker.check_model(converted)
    with atomic_path(out_path) as tmp:
        onnx.save(converted, str(tmp))
    return Fp16Report(out_path, list(kept.values()), max_diff, mean_diff, len(inputs), time.monotonic() - started,
                      len(model.graph.node), refinements,
                      {"range_limit": range_limit, "tolerance": tolerance, "underflow_share": UNDERFLOW_SHARE})


def _check_inputs(inputs: np.ndarray) -> np.ndarray:
    inputs = np.asarray(inputs)
    if inputs.ndim != 4 or not len(inputs):
        raise CalibrationError(f"fp16 conversion needs a batch of model inputs, got an array of shape {inputs.shape}",
                               hint="pass preprocessed calibration images (mlic_edge.data.images.model_input)")
    if inputs.dtype == np.uint8:  # a model whose normalisation is folded in takes the frames themselves
        return inputs
    return inputs.astype(np.float32, copy=False)


def _load(fp32_path: Path) -> onnx.ModelProto:
    if not fp32_path.is_file():
        raise CalibrationError(f"{fp32_path} is missing", hint="run `mlic-edge export` first")
    model = onnx.load(str(fp32_path))
    if len(model.graph.input) != 1:
        raise CalibrationError(f"{fp32_path} has {len(model.graph.input)} inputs; fp16 calibration feeds one",
                               hint="export the model with a single image input")
    used = {node.name for node in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if not node.name:  # the converter's node block list works by name
            node.name = _unique(f"{node.op_type}_{index}", used)
    return onnx.shape_inference.infer_shapes(model)


def _unique(name: str, used: set[str]) -> str:
    candidate, suffix = name, 0
    while candidate in used:
        suffix += 1
        candidate = f"{name}_{suffix}"
    used.add(candidate)
    return candidate


def _check_asked(keep_fp32: Sequence[str], nodes: dict[str, onnx.NodeProto]) -> list[str]:
    unknown = [name for name in keep_fp32 if name not in nodes]
    if unknown:
        examples = ", ".join(list(nodes)[:5])
        raise CalibrationError(f"--keep-fp names unknown node(s): {', '.join(unknown)}",
                               hint=f"give node names of the ONNX graph, e.g. {examples} "
                                    f"(all {len(nodes)} are listed by onnx.load(path).graph.node)")
    return list(dict.fromkeys(keep_fp32))


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    types = {info.name: info.type.tensor_type.elem_type
             for info in [*graph.input, *graph.value_info, *graph.output] if info.type.HasField("tensor_type")}
    types.update({init.name: init.data_type for init in graph.initializer})
    return types


def _float_tensors(model: onnx.ModelProto, elem_type: int = TensorProto.FLOAT) -> list[str]:
    """Node outputs of ``elem_type`` (initializers are measured from the file, not by running)."""
    types = _elem_types(model)
    return [name for node in model.graph.node for name in node.output if name and types.get(name) == elem_type]


def _batches(model: onnx.ModelProto, inputs: np.ndarray) -> Iterator[np.ndarray]:
    dim = model.graph.input[0].type.tensor_type.shape.dim
    fixed = dim[0].dim_value if dim and dim[0].HasField("dim_value") else 0
    size = fixed or MEASURE_BATCH
    if fixed and len(inputs) < fixed:
        raise CalibrationError(f"the model takes batches of {fixed} but only {len(inputs)} images were given",
                               hint=f"pass at least {fixed} calibration images")
    for start in range(0, len(inputs) - (len(inputs) % fixed if fixed else 0), size):
        yield inputs[start:start + size]


def _session(model: onnx.ModelProto, names: list[str]):
    """An ONNX Runtime CPU session of ``model`` returning ``names`` (intermediate tensors included)."""
    import onnxruntime as ort

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    types = _elem_types(exposed)
    present = {output.name for output in exposed.graph.output}
    exposed.graph.output.extend(onnx.helper.make_tensor_value_info(name, types[name], None)
                                for name in names if name not in present)
    options = ort.SessionOptions()
    # No fusions or cast elimination: the session must compute what the file says, fp16 roundings included.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise CalibrationError(f"ONNX Runtime cannot load the graph for fp16 measurement: {str(error)[:300]}",
                               hint="check that the fp32 model runs in ONNX Runtime (mlic-edge parity --precision "
                                    "fp32)") from error


def _range_stats(model: onnx.ModelProto, inputs: np.ndarray) -> dict[str, _TensorStats]:
    input_name = model.graph.input[0].name
    names = [input_name, *_float_tensors(model)]
    stats = {name: _TensorStats() for name in names}
    session = _session(model, names[1:])
    for batch in _batches(model, inputs):
        for name, values in zip(names[1:], session.run(names[1:], {input_name: batch})):
            stats[name].add(values)
        stats[input_name].add(batch)
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            stats[init.name] = _TensorStats()
            stats[init.name].add(numpy_helper.to_array(init))
    return stats


def _range_reason(node: onnx.NodeProto, stats: dict[str, _TensorStats], range_limit: float) -> str | None:
    measured = [(role, name, stats[name]) for role, names in (("input", node.input), ("output", node.output))
                for name in names if name in stats]
    if not measured:
        return None
    role, name, worst = max(measured, key=lambda item: item[2].max_abs)
    if worst.max_abs > range_limit:
        return (f"{role} {name} reaches {worst.max_abs:.1e} (> fp16 max {FP16_MAX:.0f} / headroom "
                f"{RANGE_HEADROOM:g})")
    for role, name, tensor in measured:
        if role == "output" and tensor.underflow_share > UNDERFLOW_SHARE:
            return (f"output {name}: {tensor.underflow_share:.0%} of nonzero values below 2**-24 "
                    f"(fp16 flushes them to 0)")
    return None


def _convert(model: onnx.ModelProto, kept: dict[str, KeptNode]) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    source = onnx.ModelProto()
    source.CopyFrom(model)
    converted = convert_float_to_float16(source, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST),
                                         node_block_list=list(kept))
    _skip_round_trips(converted.graph, {**_elem_types(model), **_elem_types(converted)})
    OnnxModel.graph_topological_sort(converted.graph)  # the converter appends its Casts at the end
    return converted


def _skip_round_trips(graph: onnx.GraphProto, source_types: dict[str, int]) -> None:
    """Join neighbouring fp32 nodes directly: the converter passes every tensor between two kept nodes through
    fp16 (Cast to fp16, then back to fp32), which turns a value above 65504 into inf and defeats keeping them."""
    producers = {output: node for node in graph.node for output in node.output}
    graph_outputs = {output.name for output in graph.output}
    renamed: dict[str, str] = {}
    for node in graph.node:
        to_fp16 = producers.get(node.input[0]) if _is_cast(node, TensorProto.FLOAT) else None
        if not (to_fp16 and _is_cast(to_fp16, TensorProto.FLOAT16)
                and source_types.get(to_fp16.input[0]) == TensorProto.FLOAT):
            continue
        if node.output[0] in graph_outputs:
            node.op_type, node.input[0] = "Identity", to_fp16.input[0]
            del node.attribute[:]
        else:
            renamed[node.output[0]] = to_fp16.input[0]
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    _drop_unused_casts(graph)
    _drop_stale_value_info(graph)


def _is_cast(node: onnx.NodeProto, to: int) -> bool:
    return node.op_type == "Cast" and any(attr.name == "to" and attr.i == to for attr in node.attribute)


def _drop_unused_casts(graph: onnx.GraphProto) -> None:
    while True:
        used = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
        dead = [node for node in graph.node if node.op_type == "Cast" and node.output[0] not in used]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


def _drop_stale_value_info(graph: onnx.GraphProto) -> None:
    produced = {name for node in graph.node for name in node.output}
    stale = [info for info in graph.value_info if info.name not in produced]
    for info in stale:
        graph.value_info.remove(info)


def _fp16_emulation(model: onnx.ModelProto, kept: dict[str, KeptNode]) -> onnx.ModelProto:
    """The fp32 graph with every rounding of the fp16 file made explicit (Cast to fp16 and back on the inputs and
    outputs of each fp16 node, fp16-rounded weights): fp16 storage with fp32 arithmetic, as TensorRT's fp16 kernels.

    Running the converted file itself on a CPU would not do: ONNX Runtime's CPU provider computes most fp16 ops in
    fp32 and drops the roundings between them, hiding both overflow and rounding error.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    emulated = onnx.ModelProto()
    emulated.CopyFrom(model)
    graph = emulated.graph
    types = _elem_types(model)
    initializers = {init.name: init for init in graph.initializer}
    nodes, rounded = [], set()

    def rounding(source: str, target: str) -> list[onnx.NodeProto]:
        half = f"{target}__fp16"
        return [onnx.helper.make_node("Cast", [source], [half], to=TensorProto.FLOAT16),
                onnx.helper.make_node("Cast", [half], [target], to=TensorProto.FLOAT)]

    for node in graph.node:
        if node.name in kept or node.op_type in DEFAULT_OP_BLOCK_LIST:
            nodes.append(node)
            continue
        for index, name in enumerate(node.input):
            if name in initializers and initializers[name].data_type == TensorProto.FLOAT and name not in rounded:
                values = np.clip(numpy_helper.to_array(initializers[name]), -FP16_MAX, FP16_MAX)
                initializers[name].CopyFrom(numpy_helper.from_array(values.astype(np.float16).astype(np.float32), name))
                rounded.add(name)
            elif name not in initializers and types.get(name) == TensorProto.FLOAT:
                if f"{name}__as_fp16" not in rounded:
                    nodes.extend(rounding(name, f"{name}__as_fp16"))
                    rounded.add(f"{name}__as_fp16")
                node.input[index] = f"{name}__as_fp16"
        nodes.append(node)
        for index, name in enumerate(node.output):
            if types.get(name) == TensorProto.FLOAT:
                node.output[index] = f"{name}__fp32"
                nodes.extend(rounding(f"{name}__fp32", name))
    del graph.node[:]
    graph.node.extend(nodes)
    return emulated


def _compare(model: onnx.ModelProto, emulated: onnx.ModelProto,
             inputs: np.ndarray) -> tuple[dict[str, _ErrorStats], float, float]:
    """Relative error of every fp32 node output under fp16 emulation, and the max / mean |diff| of the graph outputs."""
    input_name = model.graph.input[0].name
    outputs = [output.name for output in model.graph.output]
    names = list(dict.fromkeys([*outputs, *_float_tensors(model)]))
    reference, candidate = _session(model, names), _session(emulated, names)
    errors = {name: _ErrorStats() for name in names}
    max_diff, diff_sum, count = 0.0, 0.0, 0
    for batch in _batches(model, inputs):
        expected = reference.run(names, {input_name: batch})
        got = candidate.run(names, {input_name: batch})
        for name, want, have in zip(names, expected, got):
            errors[name].add(want, have)
            if name in outputs:
                diff = np.abs(want.astype(np.float64) - have.astype(np.float64))
                diff[~np.isfinite(diff)] = np.inf
                max_diff = max(max_diff, float(diff.max(initial=0.0)))
                diff_sum += float(diff.sum())
                count += diff.size
    return errors, max_diff, diff_sum / max(count, 1)


def _error_jumps(model: onnx.ModelProto, errors: dict[str, _ErrorStats],
                 kept: dict[str, KeptNode]) -> list[tuple[float, onnx.NodeProto, float, float]]:
    """(jump, node, output error, input error) for every fp16 node, largest jump first."""
    jumps = []
    for node in model.graph.node:
        out_errors = [errors[name].relative for name in node.output if name in errors]
        if node.name in kept or not out_errors:
            continue
        in_error = max((errors[name].relative for name in node.input if name in errors), default=0.0)
        out_error = max(out_errors)
        jump = out_error - in_error if np.isfinite(in_error) else 0.0
        jumps.append((jump, node, out_error, in_error))
    return sorted(jumps, key=lambda item: item[0], reverse=True)


def _largest_error_node(model: onnx.ModelProto, errors: dict[str, _ErrorStats],
                        kept: dict[str, KeptNode]) -> KeptNode | None:
    jumps = _error_jumps(model, errors, kept)
    if not jumps or not jumps[0][0] > 0:
        return None
    _, node, out_error, in_error = jumps[0]
    return KeptNode(node.name, node.op_type,
                    f"largest fp16 error: {out_error:.1e} relative (inputs {in_error:.1e})")


def _worst_nodes(model: onnx.ModelProto, errors: dict[str, _ErrorStats], kept: dict[str, KeptNode],
                 count: int = 3) -> list[str]:
    return [node.name for _, node, _, _ in _error_jumps(model, errors, kept)[:count]] or ["none measurable"]


def _finish_metadata(converted: onnx.ModelProto, model: onnx.ModelProto, fp32_path: Path, kept: list[KeptNode],
                     asked: Sequence[str]) -> None:
    """The fp32 model's metadata, precision=fp16, the source's hash (so a later build can tell it is stale), the
    nodes kept in fp32 and why, and which were asked for (so a rebuild without the images can reuse the file)."""
    derive_metadata(converted, model, precision="fp16", **{ONNX_SHA: sha256_file(fp32_path)},
                    fp32_nodes=json.dumps([asdict(node) for node in kept]), asked_fp32=json.dumps(sorted(asked)))
