"""FP32 ONNX -> INT8 ONNX with explicit Q/DQ, by ONNX Runtime's static quantizer, and the calibration record.

What is quantized (NVIDIA's explicit-quantization placement, TensorRT developer guide "Q/DQ Layer-Placement
Recommendations"): Q/DQ go on the *inputs* of the weighted operators (Conv, ConvTranspose, Gemm, MatMul), where
TensorRT fuses DQ -> op into an INT8 kernel; their outputs are not quantized, so Conv -> Relu stays one fused
kernel. A residual ``Add`` fed by a Conv gets one Q/DQ, on its *other* input (the shortcut; the second input when
both come from Convs): TensorRT then fuses the Conv, the Add and a following Relu into one INT8 kernel with an
element-wise epilogue. The Conv's output into that Add stays float, and so does every other Add (a bias, a folded
label embedding, a transformer's residual). Everything is symmetric INT8 (zero point 0), weights per output
channel, and biases stay float (TensorRT's parser rejects INT32 biases).

ONNX Runtime's static quantizer places the weighted operators' Q/DQ from the calibrated ranges; the residual Adds'
Q/DQ are placed here from the same ranges (its quantizer can only quantize every input of an Add, or none).

Record layout under ``<run>/calibration/<key>/``: ``record.json`` (method, settings, fp32 ONNX hash, images and
their hashes, class coverage, ORT version) and ``ranges.json`` (ONNX Runtime's per-tensor ranges). The key
hashes the fp32 model, the images and the method, so a rebuild reuses the ranges without the images and any
change of data or model calibrates again. ``keep_fp`` is not part of the key: ranges do not depend on it.

``quant_pre_process`` is not used: the export is already simplified with full shapes, and ORT's pre-processing
optimizer can fold nodes into ORT-only operators TensorRT's parser does not know.

The graph for ONNX Runtime on a CPU (``CPU_GRAPH``, ``model.int8.cpu.onnx``) is another scheme: ONNX Runtime's
own placement (every op type it quantizes), uint8 activations with zero points, int8 per-channel weights, in QDQ or
QOperator form. Its x86 and ARM kernels run u8 x s8; the symmetric int8 activations TensorRT wants leave most of the
graph in float there (measured about fp32 speed). Its calibration record is its own: asymmetric ranges of every
tensor, keyed by ``CPU_SETTINGS`` (both forms and every op set share it). Its op set (``CPU_OP_SETS``) is every op
type ONNX Runtime quantizes (a gate's Sigmoid and Mul, Softmax, pooling as well), or only the weighted ops and Adds
as TensorRT's graph places them, or those and the Relu after them. Which one keeps the scores depends on the model
(the zoo, eval split, 7-bit weights, QDQ, nothing float: semdep ΔmAP −0.54 / −0.40 / −0.49 points, ML-GAT 96.3 / 95.0
/ 96.7 % identical label sets), so the build judges each. A graph quantized from weights fine-tuned for it quantizes
what the fine-tuning simulated (``FINE_TUNED_CPU_OP_SETS``): the weighted ops alone, or those and their Relu.
``reduce_range`` (7-bit weights) is for x86 CPUs without VNNI, where u8 x s8 products can saturate (ONNX Runtime's
quantization guide). Measured on an AVX2 CPU without VNNI
(the zoo's ML-GCN, 225 held-out images, every layer int8, percentile): QDQ with 8-bit weights ΔmAP −1.63 points and
92.0 % identical label sets, with 7-bit weights −0.01 and 97.8 % (QOperator: −1.57 / 91.1 % and −0.14 / 98.2 %).

Needs ``quantize_static(calibration_cache_path=...)`` (onnxruntime with PR #28221; 1.32 checked).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx

from mlic_edge.calibration.images import CalibrationSet
from mlic_edge.errors import CalibrationError
from mlic_edge.spec import (CALIBRATION_BINS, CALIBRATION_METHODS, CALIBRATION_PERCENTILE, DEFAULT_CALIBRATION_METHOD,
                            WEIGHTED_OP_TYPES, Preprocessing)
from mlic_edge.export.metadata import derive_metadata, read_metadata, write_metadata
from mlic_edge.export.lineage import ONNX_SHA
from mlic_edge.io import atomic_path, read_json, sha256_file, write_json

METHODS = CALIBRATION_METHODS
QUANTIZED_OP_TYPES = (*WEIGHTED_OP_TYPES, "Add")
CONV_OP_TYPES = ("Conv", "ConvTranspose")
RECORD_FILE, RANGES_FILE = "record.json", "ranges.json"
SETTINGS = {
    "format": "QDQ",
    "activations": "int8 symmetric per-tensor",
    "weights": "int8 symmetric per-channel",
    "quantize_bias": False,
    "op_types": list(QUANTIZED_OP_TYPES),
    "weighted_outputs_quantized": False,
    "add_inputs_quantized": "the shortcut of an Add fed by a Conv",
    "add_outputs_quantized": False,
    "calibrators": {  # ORT's quantize_static leaves entropy at 128 bins = 128 target bins, i.e. plain min/max
        "entropy": {"num_bins": CALIBRATION_BINS, "num_quantized_bins": 256},  # 128 levels a side, as TensorRT on |x|
        "percentile": {"num_bins": CALIBRATION_BINS, "percentile": CALIBRATION_PERCENTILE},
        "minmax": {},
    },
}

CPU_SETTINGS = {
    "activations": "uint8 asymmetric per-tensor",
    "output_head": "float (the scores and the classifier feeding them; output_head)",
    "weights": "int8 symmetric per-channel",
    "op_types": "every op type ONNX Runtime quantizes",
    "calibrators": SETTINGS["calibrators"],
}
TENSORRT_GRAPH, CPU_GRAPH = "tensorrt", "cpu"
CPU_FORMATS = ("QDQ", "QOperator")
EVERY_OP_TYPE = "every"
# the op types ONNX Runtime's CPU graph quantizes (None: every one it can), by name. A Relu or Clip in the set lets
# ONNX Runtime fold it into the quantized range of the op before it ([0, max] instead of the pre-activation's
# [min, max]); left out, the Conv's output is quantized before it.
CPU_OP_SETS: dict[str, tuple[str, ...] | None] = {EVERY_OP_TYPE: None, "weighted": QUANTIZED_OP_TYPES,
                                                  "weighted+relu": (*QUANTIZED_OP_TYPES, "Relu", "Clip"),
                                                  "weighted-only": WEIGHTED_OP_TYPES,
                                                  "weighted-only+relu": (*WEIGHTED_OP_TYPES, "Relu", "Clip")}
CPU_OP_SET_WORDS = {EVERY_OP_TYPE: "every op type", "weighted": "weighted ops",
                    "weighted+relu": "weighted ops and their Relu", "weighted-only": "weighted ops alone",
                    "weighted-only+relu": "weighted ops alone and their Relu"}
# the op sets a post-training CPU graph is chosen from, and those of a graph quantized from weights fine-tuned for the
# CPU graph: the fine-tuning simulates the weighted ops' quantizers and nothing else (train/qat.py), so quantizing an
# Add or pooling adds error it never saw. On the zoo's q2l (eval split, 8-bit weights) the fine-tuned model read
# an RMS logit error of 0.0027; ONNX Runtime's graphs of its weights 0.024-0.034 (91-96 % identical label sets) with the
# post-training op sets, 0.0016-0.0044 (98.3-100 %) with the weighted ops alone and its attention's float, as the
# fine-tuning left them (``unsimulated_nodes``).
POST_TRAINING_CPU_OP_SETS = (EVERY_OP_TYPE, "weighted", "weighted+relu")
FINE_TUNED_CPU_OP_SETS = ("weighted-only", "weighted-only+relu")

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Int8Scheme:
    """How one int8 graph is made: for whom (``graph``), the settings its calibration record is keyed by, and the
    quantizer's options."""

    graph: str
    settings: dict
    quant_format: str  # "QDQ" | "QOperator"
    symmetric_activations: bool
    op_types: tuple[str, ...] | None  # None: every op type ONNX Runtime quantizes
    extra_options: dict
    residual_adds: bool  # Q/DQ on residual Adds' shortcuts, placed here (TensorRT's fusion)
    reduce_range: bool = False
    float_head: bool = False  # the score head (``output_head``) stays float: ONNX Runtime would quantize it

    def describe(self) -> dict:
        described = {"graph": self.graph, "format": self.quant_format, "reduce_range": self.reduce_range,
                     **{k: v for k, v in self.settings.items() if k != "calibrators"}}
        if self.graph == CPU_GRAPH and self.op_types is not None:  # the calibration settings cover every op type
            described["op_types"] = list(self.op_types)
        return described

    @property
    def op_set(self) -> str:
        """The CPU graph's op set by name (``CPU_OP_SETS``)."""
        return next((name for name, op_types in CPU_OP_SETS.items() if op_types == self.op_types),
                    "+".join(self.op_types or ()))

    @property
    def candidate(self) -> str:
        """The CPU graph's name among those a build judges: its form, and its op set where not every op type
        (``cpu_candidate_name``)."""
        return cpu_candidate_name(self.quant_format, self.op_set)


TENSORRT_INT8 = Int8Scheme(
    graph=TENSORRT_GRAPH, settings=SETTINGS, quant_format="QDQ", symmetric_activations=True,
    op_types=WEIGHTED_OP_TYPES, residual_adds=True,
    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                   "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES)})


def cpu_int8_scheme(quant_format: str, reduce_range: bool = False, op_set: str = EVERY_OP_TYPE) -> Int8Scheme:
    """The ONNX Runtime CPU graph in ``quant_format`` (QDQ or QOperator), quantizing ``op_set``'s op types
    (``CPU_OP_SETS``)."""
    if quant_format not in CPU_FORMATS:
        raise CalibrationError(f"unknown ONNX Runtime quantization format {quant_format!r}",
                               hint=f"use one of {', '.join(CPU_FORMATS)}")
    if op_set not in CPU_OP_SETS:
        raise CalibrationError(f"unknown CPU graph op set {op_set!r}", hint=f"use one of {', '.join(CPU_OP_SETS)}")
    return Int8Scheme(graph=CPU_GRAPH, settings=CPU_SETTINGS, quant_format=quant_format, symmetric_activations=False,
                      op_types=CPU_OP_SETS[op_set], residual_adds=False, reduce_range=reduce_range, float_head=True,
                      extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def cpu_candidate_name(quant_format: str, op_set: str = EVERY_OP_TYPE) -> str:
    """How build.json and build.md name a CPU graph: ``QDQ`` or ``QOperator``, followed by the op set's words
    (``CPU_OP_SET_WORDS``) where it is not every op type: ``QDQ, weighted ops and their Relu``."""
    return quant_format if op_set == EVERY_OP_TYPE else f"{quant_format}, {CPU_OP_SET_WORDS.get(op_set, op_set)}"


@dataclass
class Int8Report:
    path: Path
    key: str
    method: str
    images: int
    reused: bool
    quantized_nodes: int
    kept_fp: list[str]
    record_dir: Path
    seconds: float
    graph: str = TENSORRT_GRAPH
    quant_format: str = "QDQ"
    notes: list[str] = field(default_factory=list)
    float_head: list[str] = field(default_factory=list)  # the score head's nodes, kept float by the scheme
    fine_tuned_steps: int = 0  # weights rounded with a fine-tuning's own steps (``weight_steps``), not ONNX Runtime's

    def as_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def calibration_key(fp32_onnx_sha256: str, fingerprint: str, method: str, settings: dict) -> str:
    """Short hex key of everything the ranges depend on: the model, the images, the method and the settings."""
    payload = json.dumps({"model": fp32_onnx_sha256, "images": fingerprint, "method": method, "settings": settings},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def constant_names(model: onnx.ModelProto) -> set[str]:
    """Initializers and Constant outputs: the tensors that are not activations."""
    constants = {init.name for init in model.graph.initializer}
    constants.update(out for node in model.graph.node if node.op_type == "Constant" for out in node.output)
    return constants


def output_head(model: onnx.ModelProto) -> list[str]:
    """The nodes from the scores back to the classifier: the output's producer, then each one's producer while it has
    a single activation input, up to and including the first weighted operator (the label branch's product with the
    image features, or a plain classifier) or a node joining several activations. Quantized, its uint8 output would
    put the scores on 256 levels and the logits on a coarse grid just where a label flips; ONNX Runtime's CPU graph
    keeps it float (on the zoo's ML-GCN at 7-bit weights: -1.26 -> -0.17 mAP points, 95.3 -> 96.7 % identical label
    sets; TensorRT's graph never quantizes it)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    constants = constant_names(model)
    head, name = [], model.graph.output[0].name
    while name in producers:
        node = producers[name]
        head.append(node.name)
        activations = [tensor for tensor in node.input if tensor and tensor not in constants]
        if node.op_type in WEIGHTED_OP_TYPES or len(activations) != 1:
            break
        name = activations[0]
    return head


def unsimulated_nodes(model: onnx.ModelProto, weight_steps: Mapping[str, Mapping]) -> list[str]:
    """The weighted nodes of ``model`` (weights fine-tuned for the CPU graph) that the fine-tuning did not quantize:
    those whose weight has no step in ``weight_steps`` (train/qat.py ``weight_steps``: the weights its enabled
    quantizers rounded): an attention's products of two activations (no Conv/Linear module exports them), a layer
    fine-tuned float. A graph quantized from those weights keeps them float too."""
    return [node.name for node in model.graph.node
            if node.op_type in WEIGHTED_OP_TYPES and (len(node.input) < 2 or node.input[1] not in weight_steps)]


def quantizable_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that get Q/DQ (the names ``keep_fp`` accepts): the weighted operators and the residual
    Adds fed by a Conv."""
    residual = residual_add_inputs(model)
    return [node.name for node in model.graph.node
            if node.op_type in WEIGHTED_OP_TYPES or (node.op_type == "Add" and node.name in residual)]


def residual_add_inputs(model: onnx.ModelProto) -> dict[str, int]:
    """The Adds TensorRT fuses into a Conv, each with the index of the input to quantize: both inputs are
    activations and one comes from a Conv; the quantized one is the other (input 1 when both come from Convs)."""
    constants = constant_names(model)
    producers = {out: node for node in model.graph.node for out in node.output}

    def from_conv(name: str) -> bool:
        producer = producers.get(name)
        return producer is not None and producer.op_type in CONV_OP_TYPES

    chosen = {}
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2 or any(name in constants for name in node.input):
            continue
        convs = [from_conv(name) for name in node.input]
        if any(convs):
            chosen[node.name] = 1 if all(convs) else convs.index(False)
    return chosen


def quantize_int8(fp32_path: Path, out_path: Path, record_root: Path, *,
                  method: str = DEFAULT_CALIBRATION_METHOD,
                  calibration: CalibrationSet | None, preprocessing: Preprocessing | None = None,
                  keep_fp: Sequence[str] = (), progress: ProgressCallback | None = None,
                  scheme: Int8Scheme = TENSORRT_INT8, weight_steps: Mapping[str, Mapping] | None = None,
                  **loose: Any) -> Int8Report:
    """Write ``out_path`` (INT8, by default TensorRT's Q/DQ graph; ``scheme`` for another) from ``fp32_path``;
    calibrate on ``calibration``, preprocessed as ``preprocessing`` says, or reuse a stored record of the scheme's
    settings. ``weight_steps``: the per-channel steps a quantization-aware fine-tuning rounded ``fp32_path``'s
    weights with (train/qat.py ``weight_steps``), used for those weights in place of ONNX Runtime's own
    (``fine_tuned_overrides``). (``loose``: scripts written before ``Preprocessing`` pass its fields as
    keywords, img_size=... .)

    With ``calibration=None`` the newest record for this fp32 model and method is reused (a device without the
    images); with images, an existing record of the same key is reused and no image is read.
    """
    started = time.monotonic()
    if preprocessing is None:
        preprocessing = Preprocessing(**loose)
    fp32_path, out_path, record_root = Path(fp32_path), Path(out_path), Path(record_root)
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r}", hint=f"use one of {', '.join(METHODS)}")
    if not fp32_path.is_file():
        raise CalibrationError(f"{fp32_path} is missing", hint="run `mlic-edge export` first")
    _require_calibration_cache_support()
    model = onnx.load(str(fp32_path))
    excluded = _check_keep_fp(model, keep_fp)
    float_head = [name for name in output_head(model) if name not in excluded] if scheme.float_head else []
    excluded += float_head
    fp32_sha = sha256_file(fp32_path)

    if calibration is None:
        record_dir = _newest_record(record_root, fp32_sha, method, scheme.settings)
        key, reused = record_dir.name, True
    else:
        if len(calibration) == 0:
            raise CalibrationError("the calibration set holds no image", hint="pass --calib-data with images")
        key = calibration_key(fp32_sha, calibration.fingerprint(), method, scheme.settings)
        record_dir = record_root / key
        reused = _record_complete(record_dir)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".int8.", dir=out_path.parent) as work, atomic_path(out_path) as tmp:
        # ONNX Runtime writes a shape-inferred copy beside the model it is given (model-inferred.onnx), removed
        # only when it returns: given a copy in this folder, a stop leaves nothing of it in the run.
        source = Path(shutil.copyfile(fp32_path, Path(work) / fp32_path.name))
        ranges = Path(work) / RANGES_FILE
        reader = None
        if reused:
            images = _checked_record(record_dir)
            shutil.copyfile(record_dir / RANGES_FILE, ranges)
        else:
            # ORT's histogram calibrators stack the per-batch outputs, so every batch must have one shape.
            batches = calibration.batches(preprocessing, batch_size=1)
            reader = _BatchReader(model.graph.input[0].name, batches, len(calibration), progress)
        overrides = fine_tuned_overrides(weight_steps, scheme.reduce_range) if weight_steps else {}
        _run_quantizer(source, tmp, ranges, reader, method, excluded, scheme, overrides)
        quantized = _finish_model(tmp, model, fp32_sha, key, scheme)
        if reader is not None:
            images = reader.images
            if images == 0:
                raise _no_readable_image()
            _write_record(record_dir, ranges, calibration, fp32_sha, method, images, key, scheme.settings)

    notes = [] if calibration is None else list(calibration.notes)
    return Int8Report(path=out_path, key=key, method=method, images=images, reused=reused,
                      quantized_nodes=quantized, kept_fp=list(keep_fp), record_dir=record_dir,
                      seconds=time.monotonic() - started, graph=scheme.graph, quant_format=scheme.quant_format,
                      notes=notes, float_head=float_head, fine_tuned_steps=len(overrides))


def fine_tuned_overrides(weight_steps: Mapping[str, Mapping], reduce_range: bool) -> dict[str, list[dict]]:
    """ONNX Runtime's ``TensorQuantOverrides`` that round each weight channel with a fine-tuning's own step
    (``quantize_int8``'s ``weight_steps``): a symmetric range of the step times ONNX Runtime's largest integer (64 with
    ``reduce_range``, else 127), from which it derives that step again; the integers stay within its range."""
    from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

    low, high = get_qmin_qmax_for_qType(onnx.TensorProto.INT8, reduce_range=reduce_range, symmetric=True)
    half = (int(high) - int(low)) / 2
    return {name: [{"axis": int(weight["axis"]), "rmin": np.array(-step * half, dtype=np.float32),
                    "rmax": np.array(step * half, dtype=np.float32)} for step in weight["steps"]]
            for name, weight in weight_steps.items()}


class _BatchReader:
    """ONNX Runtime's CalibrationDataReader protocol over our batches, counting images and reporting progress."""

    def __init__(self, input_name: str, batches: Iterator[np.ndarray], total: int,
                 progress: ProgressCallback | None) -> None:
        self._input_name, self._batches, self._total, self._progress = input_name, batches, total, progress
        self.images = 0
        if progress is not None:  # before ONNX Runtime prepares its calibration graph, which takes a while
            progress(0, total)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        self.images += len(batch)
        if self._progress is not None:
            self._progress(self.images, self._total)
        return {self._input_name: batch}


def _run_quantizer(fp32_path: Path, out_path: Path, ranges: Path, reader: _BatchReader | None, method: str,
                   excluded: list[str], scheme: Int8Scheme, overrides: Mapping[str, list] | None = None) -> None:
    """Calibrate into ``ranges`` (unless it holds stored ranges already), then quantize with those ranges and
    ``overrides`` (ONNX Runtime's ``TensorQuantOverrides``)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    # ORT prints calibration chatter on stdout (reserved for JSON output) and nags about pre-processing.
    with contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger():
        try:
            if reader is not None:
                _calibrate(fp32_path, ranges, reader, method, scheme)
            quantize_static(str(fp32_path), str(out_path), None, quant_format=QuantFormat[scheme.quant_format],
                            per_channel=True, reduce_range=scheme.reduce_range,
                            activation_type=QuantType.QInt8 if scheme.symmetric_activations else QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            op_types_to_quantize=list(scheme.op_types) if scheme.op_types else None,
                            nodes_to_exclude=excluded, calibrate_method=_calibration_methods()[method],
                            calibration_cache_path=str(ranges),
                            extra_options={**scheme.extra_options,
                                           **({"TensorQuantOverrides": dict(overrides)} if overrides else {})})
            if scheme.residual_adds:
                _quantize_residual_adds(out_path, ranges, excluded)
        except (ValueError, RuntimeError) as error:
            if reader is not None and reader.images == 0:
                raise _no_readable_image() from error
            hint = ("a quantized layer's input is the same for every calibration image (a branch that does not "
                    "depend on the image, left in the graph), which a histogram cannot bin: fold it into a constant "
                    "in the model, or pass --calib-method minmax" if "finite-sized bins" in str(error) else
                    "check the fp32 model runs under ONNX Runtime; try another --calib-method")
            raise CalibrationError(f"ONNX Runtime could not quantize {fp32_path.name}: {error}", hint=hint) from error


def _quantize_residual_adds(path: Path, ranges: Path, excluded: Sequence[str]) -> None:
    """Q/DQ on the shortcut input of each residual Add (``residual_add_inputs``) not kept in float, from its
    calibrated range. A tensor ONNX Runtime quantized for a Conv reaches every consumer through that Q/DQ (its
    quantizer rewires them all): the Add shares it (one scale per tensor), or reads the float tensor when kept."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    model = onnx.load(str(path))
    residual = residual_add_inputs(model)
    if not residual:
        return
    calibrated = load_tensors_data(ranges)
    producers = {out: node for node in model.graph.node for out in node.output}
    float_of = {dq.output[0]: producers[dq.input[0]].input[0] for dq in model.graph.node
                if dq.op_type == "DequantizeLinear" and dq.input[0] in producers
                and producers[dq.input[0]].op_type == "QuantizeLinear"}
    dequantized = {tensor: name for name, tensor in float_of.items()}
    added = []
    for node in model.graph.node:
        if node.name not in residual:
            continue
        index = residual[node.name]
        tensor = float_of.get(node.input[index], node.input[index])
        if node.name in set(excluded):
            node.input[index] = tensor  # kept in float, also where ONNX Runtime rewired it to a Conv's Q/DQ
            continue
        if tensor not in dequantized:
            if tensor not in calibrated:
                raise CalibrationError(f"no calibrated range for {tensor!r}, the shortcut input of {node.name}",
                                       hint=f"keep it in float: --keep-fp {node.name}")
            low, high = calibrated[tensor].range_value
            scale = max(abs(float(np.min(low))), abs(float(np.max(high))), 1e-12) / 127.0
            dequantized[tensor] = _add_qdq(model, tensor, scale, added)
        node.input[index] = dequantized[tensor]
    _insert_in_order(model, added)
    onnx.save(model, str(path))


def _add_qdq(model: onnx.ModelProto, tensor: str, scale: float, added: list[onnx.NodeProto]) -> str:
    """A symmetric int8 QuantizeLinear -> DequantizeLinear pair on ``tensor``; returns the dequantized name."""
    from onnx import TensorProto, helper

    stem = f"{tensor}_residual"
    model.graph.initializer.extend([
        helper.make_tensor(f"{stem}_scale", TensorProto.FLOAT, [], [scale]),
        helper.make_tensor(f"{stem}_zero_point", TensorProto.INT8, [], [0]),
    ])
    added.append(helper.make_node("QuantizeLinear", [tensor, f"{stem}_scale", f"{stem}_zero_point"],
                                  [f"{stem}_quantized"], name=f"{stem}_QuantizeLinear"))
    added.append(helper.make_node("DequantizeLinear", [f"{stem}_quantized", f"{stem}_scale", f"{stem}_zero_point"],
                                  [f"{stem}_dequantized"], name=f"{stem}_DequantizeLinear"))
    return f"{stem}_dequantized"


def _insert_in_order(model: onnx.ModelProto, added: list[onnx.NodeProto]) -> None:
    """Put each new Q/DQ pair right after the node producing its tensor (ONNX wants nodes topologically sorted)."""
    after: dict[str, list[onnx.NodeProto]] = {}
    inputs = {value.name for value in model.graph.input}
    for index in range(0, len(added), 2):
        after.setdefault(added[index].input[0], []).extend(added[index:index + 2])
    nodes = [node for name in inputs & after.keys() for node in after[name]]
    for node in model.graph.node:
        nodes.append(node)
        for output in node.output:
            nodes.extend(after.get(output, []))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _calibration_methods() -> dict:
    from onnxruntime.quantization import CalibrationMethod

    return {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
            "minmax": CalibrationMethod.MinMax}


def _calibrate(fp32_path: Path, ranges: Path, reader: _BatchReader, method: str, scheme: Int8Scheme) -> None:
    """ORT's calibrator with the scheme's settings (quantize_static cannot pass the histogram sizes)."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    with tempfile.TemporaryDirectory(prefix=".calibrate.", dir=ranges.parent) as work:
        # the CPU graph's record holds every op type's ranges: both of its op sets (CPU_OP_SETS) read it
        calibrated = None if scheme.graph == CPU_GRAPH else list(QUANTIZED_OP_TYPES)
        calibrator = create_calibrator(fp32_path, calibrated,
                                       augmented_model_path=str(Path(work) / "augmented.onnx"),
                                       calibrate_method=_calibration_methods()[method],
                                       extra_options={"symmetric": scheme.symmetric_activations,
                                                      **scheme.settings["calibrators"][method]})
        calibrator.collect_data(reader)
        save_tensors_data(calibrator.compute_data(), ranges)
        del calibrator


def _no_readable_image() -> CalibrationError:
    return CalibrationError("none of the calibration images could be read",
                            hint="check the files under --calib-data (missing or corrupt images)")


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _check_keep_fp(model: onnx.ModelProto, keep_fp: Sequence[str]) -> list[str]:
    """``keep_fp``, once every name is known to be a quantizable node."""
    quantizable = quantizable_nodes(model)
    unknown = [name for name in keep_fp if name not in set(quantizable)]
    if unknown:
        raise CalibrationError(f"--keep-fp names no quantizable node: {', '.join(unknown)}",
                               hint=f"use node names such as {', '.join(quantizable[:3])} "
                                    f"(the sensitivity report lists the worst ones)")
    return list(keep_fp)


def _checked_record(record_dir: Path) -> int:
    """The images a stored record was calibrated on, once both of its files are known to be readable JSON."""
    try:
        read_json(record_dir / RANGES_FILE)
        return int(read_json(record_dir / RECORD_FILE)["images_used"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CalibrationError(f"the calibration record {record_dir} is damaged ({type(error).__name__}: {error})",
                               hint=f"delete {record_dir} and build again (it calibrates anew: the calibration images "
                                    "must be here, or pass --calib-data)") from None


def _record_complete(record_dir: Path) -> bool:
    return (record_dir / RECORD_FILE).is_file() and (record_dir / RANGES_FILE).is_file()


def has_record(record_root: Path, fp32_path: Path, method: str, scheme: Int8Scheme = TENSORRT_INT8) -> bool:
    """Whether ``quantize_int8`` can run without images: a complete record of this model, method and scheme."""
    try:
        _newest_record(Path(record_root), sha256_file(fp32_path), method, scheme.settings)
    except CalibrationError:
        return False
    return True


def _newest_record(record_root: Path, fp32_sha: str, method: str, settings: dict) -> Path:
    matches = []
    for record_file in record_root.glob(f"*/{RECORD_FILE}"):
        try:
            record = read_json(record_file)
        except (OSError, ValueError):
            continue
        if (record.get("fp32_onnx_sha256") == fp32_sha and record.get("method") == method
                and record.get("settings") == settings and _record_complete(record_file.parent)):
            matches.append((record.get("created", ""), record_file.parent))
    if not matches:
        raise CalibrationError(f"no {method} calibration record for this model under {record_root}",
                               hint="pass --calib-data DATA to calibrate on images (once; later builds reuse it)")
    return max(matches)[1]


def _write_record(record_dir: Path, ranges: Path, calibration: CalibrationSet, fp32_sha: str, method: str,
                  images_used: int, key: str, settings: dict) -> None:
    import onnxruntime

    with atomic_path(record_dir / RANGES_FILE) as tmp:
        shutil.copyfile(ranges, tmp)
    # record.json last: its presence marks a complete record.
    write_json(record_dir / RECORD_FILE, {
        "key": key,
        "method": method,
        "settings": settings,
        "fp32_onnx_sha256": fp32_sha,
        "images_requested": calibration.requested,
        "images_used": images_used,
        "images": [{"id": image_id, "sha256": digest} for image_id, digest in calibration.image_hashes().items()],
        "images_fingerprint": calibration.fingerprint(),
        "class_counts": calibration.class_counts,
        "missing_classes": calibration.missing_classes(),
        "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "onnxruntime": onnxruntime.__version__,
    })


def _finish_model(path: Path, fp32: onnx.ModelProto, fp32_sha: str, key: str, scheme: Int8Scheme) -> int:
    """Carry the fp32 metadata over, mark the precision and the graph; return how many nodes run quantized."""
    model = onnx.load(str(path))
    op_set = {"int8_op_set": scheme.op_set} if scheme.graph == CPU_GRAPH else {}
    derive_metadata(model, fp32, precision="int8", calibration_key=key, int8_graph=scheme.graph,
                    int8_format=scheme.quant_format, **op_set, **{ONNX_SHA: fp32_sha})
    onnx.save(model, str(path))
    return len(quantized_node_names(model))


def stamp_source(path: Path, fp32_path: Path, **stamps: str) -> None:
    """Stamp the int8 graph at ``path`` as made from ``fp32_path`` (its metadata, its sha256 as the source every stage
    checks), with ``stamps`` on top: a graph quantized from fine-tuned weights belongs to the model.onnx they were
    fine-tuned from."""
    model = onnx.load(str(path))
    write_metadata(model, {**read_metadata(onnx.load(str(fp32_path), load_external_data=False)),
                           **read_metadata(model), ONNX_SHA: sha256_file(fp32_path), **stamps})
    onnx.save(model, str(path))


def quantized_node_names(model: onnx.ModelProto) -> list[str]:
    """The layers that run in INT8: in Q/DQ form, a weighted op whose second input (its weights, or a MatMul's other
    operand) comes through a DequantizeLinear and an Add with an input that does; ONNX Runtime's integer operators
    in QOperator form (QLinearConv, QGemm, MatMulInteger, ...). A layer kept float whose input alone was dequantized
    (the classifier after a quantized pooling) is not one."""
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}

    def runs_int8(node: onnx.NodeProto) -> bool:
        if node.op_type in WEIGHTED_OP_TYPES:
            return len(node.input) > 1 and node.input[1] in dequantized
        if node.op_type == "Add":
            return any(name in dequantized for name in node.input)
        return node.op_type.startswith(("QLinear", "QGemm")) or node.op_type.endswith("Integer")

    return [node.name for node in model.graph.node if runs_int8(node)]


def _require_calibration_cache_support() -> None:
    import onnxruntime
    from onnxruntime.quantization import quantize_static

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise CalibrationError(f"onnxruntime {onnxruntime.__version__} cannot store calibration ranges for reuse",
                               hint="INT8 quantization needs onnxruntime>=1.27: pip install -U onnxruntime "
                                    "(an existing model.int8.onnx still runs and builds with this one)")
