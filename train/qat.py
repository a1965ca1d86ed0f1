"""Quantization-aware fine-tuning, for a model whose post-training int8 misses its accuracy target (``build -p int8``
runs it by itself then; ``mlic-edge train --qat`` by hand): fake-quantize the trained model, fine-tune it a few
epochs so the weights adapt to int8, and export the Q/DQ graph as ``model.int8.onnx`` (the export and the run's
files: ``mlic_edge/commands/qat.py``).

By default the fine-tuning distils (``QAT_TARGETS``): the fp32 checkpoint, frozen, is the teacher, and the student is
the graph that will be deployed, fake-quantized: its ``forward`` in eval mode (``_student_mode``), so BatchNorm keeps
the trained running statistics (only its affine part trains), dropout is off and no train-only part runs
(BatchFormerV2's second stream, MSRN's group loss, semdep's per-head stage losses). The only signal is then how far
int8 moves the scores: a student that matches the teacher gets no gradient. Measured on ML-GCN (zoo set, 3 epochs,
300 eval images): 96.0 % identical label sets with the statistics fixed, 90.0 % with them updating, 86.3 % training on
labels; post-training int8 93.3 %. On q2l (zoo set, 3 epochs, TensorRT's scheme, eval split), running the student in
training mode (its dropout and BatchFormerV2's stream distilled towards the teacher's scores) left the graph at an RMS
logit error of 0.074 and 90.0 % identical label sets; as deployed, 0.0033 and 98.3 %. With fixed statistics the rate
must stay small (the default 1 %): at 100× it drifts further than training on labels.

The library is NVIDIA ModelOpt (``nvidia-modelopt``, ``modelopt.torch.quantization``). NVIDIA deprecated its
pytorch-quantization toolkit in ModelOpt's favour; PyTorch's own ``torch.ao.quantization`` is deprecated and moved to
torchao, whose QAT targets LLM int4 / dynamic int8 and exports no ONNX Q/DQ graph TensorRT parses. ModelOpt's fake
quantizers export as ONNX ``QuantizeLinear``/``DequantizeLinear`` pairs (opset >= 13), the explicit quantization
TensorRT 8.6-11 and TensorRT for RTX build from; it trains on CPUs and GPUs alike.

Two schemes (``QatScheme``): TensorRT's Q/DQ graph (below), or ONNX Runtime's CPU graph, for which an input that
calibration saw non-negative is quantized unsigned (0..255, as its uint8 activations quantize a ReLU's output) and
weights have 7 bits on a CPU without VNNI (its reduce_range); the CPU graph is then quantized by ONNX Runtime from
the fine-tuned weights (calibration/plan.py), since ModelOpt exports only symmetric 8-bit Q/DQ, each weight rounded
with the step the fine-tuning rounded it with (``weight_steps``), the activations on ONNX Runtime's min/max ranges.

Placement: as close to the post-training graph (calibration/int8.py) as ModelOpt's modules allow. Q/DQ on the
inputs and weights of Conv / ConvTranspose / Linear (-> Gemm, MatMul) modules only: per-output-channel symmetric
int8 weights (axis 0; 1 for transposed convolutions), per-tensor symmetric int8 activations; weights calibrated by
max, activations by the post-training calibration's method (percentile by default, ``_input_ranges``); no
quantizer on outputs, biases float. ModelOpt's default config also quantizes pooling, normalisation and other layers'
inputs: every quantizer is disabled first and only those of the weighted modules are enabled. Where it differs:
- the post-training graph's Q/DQ on the shortcut of a residual ``Add`` (so TensorRT fuses Conv + Add + Relu into one
  int8 kernel) cannot be expressed without rewriting each model's forward: the QAT graph leaves every Add float
  (TensorRT then runs the Add in float after the int8 Conv: correct, a little slower);
- a ``torch.matmul`` / ``F.linear`` outside an ``nn.Linear`` (an attention's products) stays float;
- a module the exported graph does not hold (a label branch folded into constants, a train-only part) has no
  quantizer: the graph holds its float result (``folded_modules``);
- BatchNorm is not folded into the convolution before fake quantization (ModelOpt's QAT keeps it as trained):
  the ONNX holds Conv -> BatchNormalization, which TensorRT folds into the per-channel weight scales exactly.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.metadata
import math
import sys
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import numpy as np
import torch

from mlic_edge import metrics
from mlic_edge.console import info, progress_bar
from mlic_edge.data import open_dataset
from mlic_edge.data.dataset import MultiLabelDataset
from mlic_edge.data.splits import recorded_validation
from mlic_edge.data.torch_data import ImageDataset, StopSafeLoader, cut_mix, make_loader
from mlic_edge.errors import MlicError
from mlic_edge.models.checkpoint import load_model
from mlic_edge.models.recipe import Recipe
from mlic_edge.rundir import RunDir
from mlic_edge.spec import (CALIBRATION_PERCENTILE, DEFAULT_CALIBRATION_METHOD, DEFAULT_DEVICE, WEIGHTED_OP_TYPES,
                            RunSpec)
from mlic_edge.train.config import QAT_CALIB_IMAGES, QAT_LIBRARY, QAT_TARGETS, modelopt_missing
from mlic_edge.train.evaluate import predict_scores
from mlic_edge.train.losses import create_loss
from mlic_edge.train.schedule import create_optimizer, create_scheduler
from mlic_edge.train.trainer import freeze_backbone, seed_everything, select_device

# NVIDIA's QAT guidance (ModelOpt's and pytorch-quantization's docs): fine-tune for ~10 % of the original schedule at
# ~1 % of the initial learning rate, annealed (cosine) to zero; a rate near the original one undoes the training.
LR_SCALE = 0.01
# how the fine-tuning calibrates its activation ranges, as post-training does (mlic_edge/spec.py CALIBRATION_METHODS):
# ModelOpt's entropy calibration is not ONNX Runtime's and took minutes per quantizer on a range with an outlier
QAT_CALIBRATION_METHODS = ("percentile", "minmax")
SENSITIVITY_IMAGES = 64  # calibration images that rank the modules where a float budget is spent (_spend_float_budget)
WEIGHTED_MODULES = {"nn.Conv1d": 0, "nn.Conv2d": 0, "nn.Conv3d": 0, "nn.Linear": 0,  # weight axis of output channels
                    "nn.ConvTranspose1d": 1, "nn.ConvTranspose2d": 1, "nn.ConvTranspose3d": 1}


def require_modelopt():
    """``modelopt.torch.quantization``, or the one-line error that says how to install it."""
    try:
        with warnings.catch_warnings():  # its import warns about optional integrations (transformers, ...)
            warnings.simplefilter("ignore")
            import modelopt.torch.quantization as mtq
    except ImportError as error:
        raise modelopt_missing(str(error.name or error)) from None
    return mtq


def library_version() -> str:
    try:
        return importlib.metadata.version(QAT_LIBRARY)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class QatScheme:
    """The int8 arithmetic the fine-tuning simulates (``QAT_SCHEMES``): the weights' bits (per output channel,
    symmetric) and whether an input that calibration saw non-negative is quantized unsigned (0..255, as ONNX
    Runtime's uint8 activations quantize a ReLU's output) rather than symmetric int8 (TensorRT's)."""

    graph: str = "tensorrt"
    weight_bits: int = 8
    unsigned_inputs: bool = False

    def describe(self) -> str:
        return (f"{self.graph} graph: int{self.weight_bits} per-channel weights, "
                + ("uint8 activations where non-negative" if self.unsigned_inputs else "int8 symmetric activations"))


TENSORRT_QAT = QatScheme()


def cpu_qat_scheme(reduce_range: bool) -> QatScheme:
    """ONNX Runtime's CPU graph (calibration/int8.py ``cpu_int8_scheme``): uint8 activations, per-channel int8
    weights, 7-bit where ``reduce_range`` (a CPU without VNNI, whose u8s8 kernels would saturate)."""
    return QatScheme(graph="cpu", weight_bits=7 if reduce_range else 8, unsigned_inputs=True)


def quant_config(scheme: QatScheme = TENSORRT_QAT) -> dict[str, Any]:
    """ModelOpt's INT8 config with the post-training graph's placement (the module docstring): everything off, then
    the input and weight quantizers of the weighted modules on, weights of ``scheme.weight_bits``; max
    calibration."""
    entries: list[dict[str, Any]] = [{"quantizer_name": "*", "enable": False}]
    for module, axis in WEIGHTED_MODULES.items():
        entries.append({"quantizer_name": "*weight_quantizer", "parent_class": module,
                        "cfg": {"num_bits": scheme.weight_bits, "axis": axis}})
        entries.append({"quantizer_name": "*input_quantizer", "parent_class": module,
                        "cfg": {"num_bits": 8, "axis": None}})
    return {"quant_cfg": entries, "algorithm": "max"}


def _weighted_types() -> tuple[type, ...]:
    return tuple(getattr(torch.nn, name.removeprefix("nn.")) for name in WEIGHTED_MODULES)


def _scope_segments(qualified_name: str) -> list[str]:
    """The scope segments the torchscript ONNX exporter names a module's nodes under: one per enclosing module, each
    its name from the last non-numeric atom on ("model.features.layer2.0" -> model, features, layer2, layer2.0)."""
    atoms = qualified_name.split(".")
    segments = []
    for end in range(1, len(atoms) + 1):
        start = max((index for index in range(end) if not atoms[index].isnumeric()), default=0)
        segments.append(".".join(atoms[start:end]))
    return segments


def _skips_to(scope: list[str], segments: list[str]) -> int | None:
    """How many of a module's ``segments`` a node's ``scope`` leaves out (a module whose method is called rather than
    the module itself, as ``backbone.forward_features(x)``, adds no scope), or None where the scope is not the
    module's: same first and last segment, the others in order."""
    if not scope or scope[0] != segments[0] or scope[-1] != segments[-1]:
        return None
    position = 0
    for segment in scope:
        while position < len(segments) and segments[position] != segment:
            position += 1
        if position == len(segments):
            return None
        position += 1
    return len(segments) - len(scope)


def float_modules(model: torch.nn.Module, onnx_nodes: Collection[str]) -> dict[str, str]:
    """{ONNX node name: the name in ``model`` of the Conv/Linear module it was exported from}, for the nodes of
    ``onnx_nodes`` (model.onnx's names, as ``--keep-fp`` and the int8 search give them) that one exports, matched by
    the exporter's scopes (the module leaving out the fewest; a tie is not matched); the others (an Add, a matmul
    outside a Linear) have no quantizer here to keep off."""
    in_model, weighted = {id(module): name for name, module in model.named_modules()}, _weighted_types()
    modules = [(_scope_segments(name), in_model[id(module)]) for name, module in model.for_export().named_modules()
               if isinstance(module, weighted) and id(module) in in_model]
    found = {}
    for node in onnx_nodes:
        scope = node.split("/")[1:-1]
        matches = sorted((skipped, name) for segments, name in modules
                         if (skipped := _skips_to(scope, segments)) is not None)
        if matches and (len(matches) == 1 or matches[0][0] < matches[1][0]):
            found[node] = matches[0][1]
    return found


def enabled_quantizers(model: torch.nn.Module) -> list[str]:
    from modelopt.torch.quantization.nn import TensorQuantizer

    return [name for name, module in model.named_modules()
            if isinstance(module, TensorQuantizer) and module.is_enabled]


@dataclass
class QatResult:
    model: torch.nn.Module
    """The fine-tuned model with ModelOpt's fake quantizers (eval mode, on the CPU)."""
    epochs: int
    lr: float
    target: str  # one of QAT_TARGETS
    calib_images: int
    quantizers: int
    mAP_fp32: float  # PyTorch on the eval split
    mAP_calibrated: float  # fake quant after calibration, before fine-tuning
    mAP_qat: float  # fake quant after fine-tuning
    eval_images: int
    train_images: int = 0  # fine-tuned on (the training split less ``exclude``)
    history: list[dict[str, Any]] = field(default_factory=list)
    device: str = "cpu"
    seconds: float = 0.0
    scheme: QatScheme = TENSORRT_QAT
    kept_fp: list[str] = field(default_factory=list)  # model.onnx's nodes fine-tuned without quantizers
    chosen_fp: list[str] = field(default_factory=list)  # those of kept_fp the fine-tuning chose (_spend_float_budget)
    calib_method: str = "minmax"  # how the activation ranges were calibrated (CALIBRATION_METHODS)

    def as_dict(self) -> dict[str, Any]:
        return {item.name: (dataclasses.asdict(getattr(self, item.name)) if item.name == "scheme"
                            else getattr(self, item.name)) for item in fields(self) if item.name != "model"}


def run_recipe(spec: RunSpec) -> Recipe:
    """The recipe the run was trained with (run.json's resolved ``recipe``), else its model's paper recipe."""
    known = {item.name for item in fields(Recipe)}
    recorded = {key: value for key, value in (spec.recipe.settings if spec.recipe else {}).items() if key in known}
    if not recorded:
        from mlic_edge.models import get_model_entry

        return get_model_entry(spec.model).recipes["paper"]
    recorded["augment"] = tuple(recorded.get("augment") or ())
    recorded.setdefault("source", "run.json")
    return Recipe(**recorded)


@dataclass
class _QatData:
    """What the fine-tuning reads: the run's training split (less the excluded images) and eval split."""

    train_set: MultiLabelDataset
    eval_set: MultiLabelDataset


def quantization_aware_finetune(run: RunDir, epochs: int, lr: float | None = None,
                                calib_images: int = QAT_CALIB_IMAGES, *, batch_size: int | None = None,
                                workers: int = 0, device: str = DEFAULT_DEVICE, seed: int = 0, target: str = QAT_TARGETS[0],
                                exclude: Collection[str] = (), say: Callable[[str], None] = info,
                                scheme: QatScheme = TENSORRT_QAT, keep_fp: Collection[str] = (),
                                method: str = DEFAULT_CALIBRATION_METHOD) -> QatResult:
    """Load the run's checkpoint, calibrate ModelOpt's int8 quantizers on ``calib_images`` training images (no
    augmentation; the activation ranges by ``method`` as post-training's, ``QAT_CALIBRATION_METHODS``),
    fine-tune ``epochs`` epochs with the run's recipe (optimizer, augmentation) towards ``target``
    (``QAT_TARGETS``) at ``lr`` (default: the recipe's × ``LR_SCALE``) under a cosine schedule without warm-up, and
    measure the fake-quantized model on the eval split. ``exclude``: training image ids (``image_ids()``) neither
    calibrated nor fine-tuned on (the build's held-out images, which judge the result); ``scheme``: the int8 graph
    simulated (TensorRT's, or ONNX Runtime's CPU graph); ``keep_fp``: model.onnx's node names (the int8 search's
    float layers, ``--keep-fp``) whose modules fine-tune without quantizers, so the graph keeps them float as the
    post-training one did (``float_modules``); for each asked node no Conv/Linear module exports (an Add, an
    attention's product: the fine-tuned graph quantizes none) one more module fine-tunes float, the most sensitive
    (``_spend_float_budget``). Modules the exported graph does not hold fine-tune float too (``folded_modules``).
    Writes nothing: the caller exports and records the result."""
    mtq = require_modelopt()
    _check_options(epochs, lr, calib_images, target, method)
    spec = run.spec()
    run.require_checkpoint()
    recipe = run_recipe(spec)
    lr = lr if lr is not None else recipe.lr * LR_SCALE
    batch_size = batch_size or recipe.batch_size
    data = _qat_data(run, spec, exclude)

    started = time.monotonic()
    seed_everything(seed)
    torch_device = select_device(device)
    model = load_model(run.checkpoint).to(torch_device)
    kept = float_modules(model, keep_fp)
    folded = folded_modules(model)
    budget = len(set(keep_fp)) - len(kept)  # float layers asked that no module exports (an Add, an attention product)
    exported = _exported_nodes(model, run.onnx("fp32")) if budget > 0 else {}

    def evaluate(network: torch.nn.Module) -> float:
        result = predict_scores(network, data.eval_set, spec.img_size, spec.mean, spec.std, batch_size, workers,
                                torch_device, resize=spec.resize)
        return float(metrics.mean_average_precision(result.scores, result.targets(data.eval_set)).map)

    map_fp32 = evaluate(model)
    teacher = _frozen(copy.deepcopy(model)) if target == "distill" else None  # before quantize changes the model
    loader, picked = _calibration_loader(spec, data.train_set, calib_images, batch_size, workers, seed)
    model, quantizers = _calibrate(mtq, model, loader, torch_device, say, scheme, {*kept.values(), *folded}, method)
    chosen = [exported.get(name, name) for name in _spend_float_budget(model, loader, torch_device, budget)]
    if chosen:
        say(f"qat: {len(chosen)} more layer(s) fine-tune float in place of the {budget} asked that no module exports, "
            f"the most sensitive here: {', '.join(chosen)}")
        quantizers = enabled_quantizers(model)
    map_calibrated = evaluate(model)
    history = _fine_tune(model, teacher, recipe, spec, data.train_set, epochs, lr, batch_size, workers, seed,
                         torch_device, evaluate)
    model = model.to("cpu").eval()
    result = QatResult(model=model, epochs=epochs, lr=lr, target=target, calib_images=picked, calib_method=method,
                       quantizers=len(quantizers),
                       mAP_fp32=map_fp32, mAP_calibrated=map_calibrated, mAP_qat=history[-1]["val_mAP_fake_quant"],
                       eval_images=len(data.eval_set), train_images=len(data.train_set), history=history,
                       device=str(torch_device), seconds=round(time.monotonic() - started, 1), scheme=scheme,
                       kept_fp=[*kept, *chosen], chosen_fp=chosen)
    if not math.isfinite(result.mAP_qat):
        raise MlicError("qat: the fine-tuned model's mAP is not a number", hint="lower --lr")
    return result


def _check_options(epochs: int, lr: float | None, calib_images: int, target: str, method: str) -> None:
    """The fine-tuning's options, refused in one line before any work."""
    if epochs < 1:
        raise MlicError("--epochs must be at least 1 for --qat")
    if calib_images < 1:
        raise MlicError("--calib-images must be at least 1")
    if lr is not None and not lr > 0:
        raise MlicError("--lr must be positive")
    if target not in QAT_TARGETS:
        raise MlicError(f"unknown QAT target {target!r}", hint=f"use one of {', '.join(QAT_TARGETS)}")
    if method not in QAT_CALIBRATION_METHODS:
        raise MlicError(f"unknown calibration method {method!r} for the fine-tuning's activation ranges",
                        hint=f"use one of {', '.join(QAT_CALIBRATION_METHODS)}")


def _qat_data(run: RunDir, spec: RunSpec, exclude: Collection[str]) -> _QatData:
    """The run's training split less ``exclude`` and less its validation split (run.json's record), and its eval
    split; refused where run.json names no dataset or the data has other classes than the model."""
    recorded = spec.dataset_record
    if not recorded.spec:
        raise MlicError(f"{run.run_json} names no dataset to fine-tune on",
                        hint="--qat fine-tunes on the run's training split: train the run with mlic-edge train")
    train_set = open_dataset(recorded.spec, role="train", split=recorded.train_split,
                             difficult=recorded.difficult_rule, labels=spec.labels)
    eval_set = open_dataset(recorded.spec, role="eval", split=recorded.eval_split,
                            difficult=recorded.difficult_rule, labels=spec.labels)
    if train_set.names != spec.labels or eval_set.names != spec.labels:
        raise MlicError(f"{train_set.spec} has other classes than the model", hint="fine-tune on the run's dataset")
    validation, _ = recorded_validation(train_set, recorded.val_fraction, recorded.val_seed, recorded.val_ids_sha256)
    left_out = set(exclude) | set(validation.image_ids if validation is not None else ())
    if left_out:  # the validation split judges the int8 graph after: the fine-tuning never sees it
        train_set = train_set.subset([index for index, image_id in enumerate(train_set.image_ids())
                                      if image_id not in left_out])
    return _QatData(train_set, eval_set)


def _calibration_loader(spec: RunSpec, train_set: MultiLabelDataset, calib_images: int, batch_size: int, workers: int,
                        seed: int) -> tuple[StopSafeLoader, int]:
    """A loader of ``calib_images`` training images picked with ``seed``, no augmentation, and how many it holds."""
    picked = np.sort(np.random.default_rng(seed).permutation(len(train_set))[:calib_images])
    loader = make_loader(ImageDataset(train_set.subset(picked), spec.img_size, spec.mean, spec.std,
                                      resize=spec.resize), batch_size, shuffle=False, workers=workers)
    return loader, len(picked)


def _calibrate(mtq, model: torch.nn.Module, calib_loader: StopSafeLoader, torch_device: torch.device,
               say: Callable[[str], None],
               scheme: QatScheme = TENSORRT_QAT, float_names: Collection[str] = (),
               method: str = DEFAULT_CALIBRATION_METHOD) -> tuple[torch.nn.Module, list[str]]:
    """``model`` with ModelOpt's int8 quantizers of ``scheme``, calibrated on the images of ``calib_loader`` (weights
    max, activations by ``method``: max, or ``_input_ranges``; inputs seen non-negative made unsigned where the scheme
    says so), those of the modules named in ``float_names`` off; returns it and the enabled quantizers' names."""

    def forward_loop(network: torch.nn.Module) -> None:
        network.eval()
        with torch.no_grad(), calib_loader:
            for batch in calib_loader:
                if len(batch.indices):
                    network(batch.images.to(torch_device))

    say(f"qat: calibrating ModelOpt int8 quantizers (max) on {len(calib_loader.dataset)} training images")
    with contextlib.redirect_stdout(sys.stderr), _input_minima(model) as minima:  # stdout is for results (--json)
        model = mtq.quantize(model, quant_config(scheme), forward_loop)
    if float_names:
        mtq.disable_quantizer(model, lambda name: name.rpartition(".")[0] in float_names)
    if method == "percentile":
        say("qat: the activation ranges by percentile, as post-training int8 calibrates them")
        _input_ranges(model, forward_loop)
    if scheme.unsigned_inputs:
        for name, module in model.named_modules():
            quantizer = getattr(module, "input_quantizer", None)
            if quantizer is not None and quantizer.is_enabled and minima.get(name, -1.0) >= 0:
                quantizer.unsigned = True
    return model, enabled_quantizers(model)


def folded_modules(model: torch.nn.Module) -> list[str]:
    """The Conv/Linear modules of ``model`` its exported graph does not hold: a label branch ``fold_static`` computes
    into constants, a train-only part. They fine-tune without quantizers: the graph holds their float result, so
    rounding them in training would simulate an error the deployed graph never makes."""
    exported = {id(module) for module in model.for_export().modules()}
    return [name for name, module in model.named_modules()
            if isinstance(module, _weighted_types()) and id(module) not in exported]


def _exported_nodes(model: torch.nn.Module, onnx_path: Path) -> dict[str, str]:
    """{module name: the node of ``onnx_path`` (the run's model.onnx) it exports}, for the weighted nodes a module
    exports; empty where the file is absent."""
    if not onnx_path.is_file():
        return {}
    import onnx

    nodes = [node.name for node in onnx.load(str(onnx_path), load_external_data=False).graph.node
             if node.op_type in WEIGHTED_OP_TYPES]
    return {module: node for node, module in float_modules(model, nodes).items()}


def _spend_float_budget(model: torch.nn.Module, calib_loader: StopSafeLoader, torch_device: torch.device,
                        budget: int) -> list[str]:
    """Turn off the quantizers of the ``budget`` modules whose quantizers alone move the logits the most (RMS over the
    first ``SENSITIVITY_IMAGES`` calibration images, against ``model`` with every quantizer off); returns their
    names, most sensitive first.

    Why: the post-training search keeps float the layers its graph needs, and some are nodes no module exports (a
    residual Add, an attention's product). The fine-tuned graph quantizes none of those anyway, so the float they
    bought is spent here on the modules this graph is most sensitive to instead. Measured on the zoo's ML-GAT
    (TensorRT's scheme, 3 epochs, eval split, benchmarks/results/int8_zoo.md): fine-tuned with only the 3 of the
    search's 7 float layers a module exports, 97.3 % identical label sets; with 7, 99.0 %. Its error sits on the
    stem, the shortcut and the head convolutions, which the search's own ranking (of the post-training graph, whose
    residual Adds are quantized) names only in part."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    if budget <= 0:
        return []
    by_module: dict[str, list] = {}
    for name, module in model.named_modules():
        if isinstance(module, TensorQuantizer) and module.is_enabled:
            by_module.setdefault(name.rpartition(".")[0], []).append(module)
    batches, seen = [], 0
    with calib_loader:
        for batch in calib_loader:
            if seen >= SENSITIVITY_IMAGES:
                break
            batches.append(batch.images[:SENSITIVITY_IMAGES - seen].to(torch_device))
            seen += len(batches[-1])
    if not batches or not by_module:
        return []
    images = torch.cat(batches)
    quantizers = [quantizer for group in by_module.values() for quantizer in group]
    model.eval()
    errors = {}
    try:
        for quantizer in quantizers:
            quantizer.disable()
        with torch.no_grad():
            reference = model(images)
            for name, group in by_module.items():
                for quantizer in group:
                    quantizer.enable()
                errors[name] = float((model(images) - reference).pow(2).mean().sqrt())
                for quantizer in group:
                    quantizer.disable()
    finally:
        for quantizer in quantizers:
            quantizer.enable()
    chosen = sorted(errors, key=lambda name: errors[name], reverse=True)[:budget]
    for name in chosen:
        for quantizer in by_module[name]:
            quantizer.disable()
    return chosen


def _input_ranges(model: torch.nn.Module, forward_loop: Callable[[torch.nn.Module], None]) -> None:
    """The enabled input quantizers' ranges (amax) calibrated again by percentile over one more pass of
    ``forward_loop`` in float, as the post-training calibration reads the fp32 graph: ModelOpt's histogram
    calibrator on |x| (2048 bins, as ONNX Runtime's), keeping ``CALIBRATION_PERCENTILE`` % of the values.

    Why: ModelOpt's max ranges stretch each activation's int8 grid to its largest value, which fine-tuning does not
    move (amax is calibrated, not trained). Measured on the zoo (TensorRT's scheme, 3 epochs, the layers the
    post-training search kept float left float, eval split, benchmarks/results/int8_zoo.md): ML-GAT's fine-tuned
    graph 94.7 % identical label sets from max ranges, 97.3 % from these; MSRN 98.0 % from either.
    """
    from modelopt.torch.quantization.nn import TensorQuantizer

    enabled = {name: module for name, module in model.named_modules()
               if isinstance(module, TensorQuantizer) and module.is_enabled}
    # a module the forward never calls (BatchFormerV2's, at eval) has no range to calibrate again
    inputs = [module for name, module in enabled.items()
              if name.endswith("input_quantizer") and module.amax is not None]
    for quantizer in enabled.values():
        quantizer.disable_quant()
    for quantizer in inputs:
        quantizer.set_from_attribute_config({"calibrator": "histogram"})
        quantizer.enable_calib()
    try:
        forward_loop(model)
        for quantizer in inputs:
            quantizer.load_calib_amax("percentile", percentile=CALIBRATION_PERCENTILE)
    finally:
        for quantizer in inputs:
            quantizer.disable_calib()
            quantizer.set_from_attribute_config({"calibrator": "max"})
        for quantizer in enabled.values():
            quantizer.enable_quant()


@contextlib.contextmanager
def _input_minima(model: torch.nn.Module):
    """{module name: the smallest input value seen} of the weighted modules while the block runs (ModelOpt converts
    modules in place, so the hooks see the calibration passes)."""
    minima: dict[str, float] = {}
    weighted = _weighted_types()

    def record(name: str):
        def hook(module, inputs):
            minima[name] = min(minima.get(name, math.inf), float(inputs[0].detach().min()))
        return hook

    handles = [module.register_forward_pre_hook(record(name)) for name, module in model.named_modules()
               if isinstance(module, weighted)]
    try:
        yield minima
    finally:
        for handle in handles:
            handle.remove()


def _fine_tune(model: torch.nn.Module, teacher: torch.nn.Module | None, recipe: Recipe, spec: RunSpec,
               train_set: MultiLabelDataset, epochs: int, lr: float, batch_size: int, workers: int, seed: int,
               torch_device: torch.device, evaluate: Callable[[torch.nn.Module], float]) -> list[dict[str, Any]]:
    """Fine-tune the fake-quantized ``model`` ``epochs`` epochs (towards ``teacher``'s scores where given, else the
    labels with the recipe's loss) under a cosine schedule from ``lr``; returns one history row per epoch, with the
    eval split's mAP (``evaluate``)."""
    loss_fn = torch.nn.BCEWithLogitsLoss() if teacher is not None else create_loss(
        recipe.loss, class_counts=train_set.class_counts(), num_images=len(train_set), **dict(recipe.loss_options))
    train_loader = make_loader(ImageDataset(train_set, spec.img_size, spec.mean, spec.std, augment=True,
                                            crop_scale=(recipe.crop_scale, 1.0), resize=spec.resize,
                                            extra=recipe.augment),
                               batch_size, shuffle=True, workers=workers, seed=seed,
                               drop_last=len(train_set) > batch_size)
    frozen_norms = freeze_backbone(model, frozen_bn=recipe.frozen_bn, frozen_stem=recipe.frozen_stem)  # as trained
    optimizer = create_optimizer(model, recipe.optimizer, lr, recipe.weight_decay,
                                 backbone_lr_scale=recipe.backbone_lr_scale)
    scheduler = create_scheduler(optimizer, epochs * max(1, len(train_loader)), 0, "cosine")
    history = []
    with progress_bar() as progress, train_loader:
        for epoch in range(epochs):
            _student_mode(model, distilling=teacher is not None, frozen_norms=frozen_norms)
            task = progress.add_task(f"qat epoch {epoch + 1}/{epochs}", total=len(train_loader), status="")
            running, seen = 0.0, 0
            for batch in train_loader:
                if len(batch.indices) == 0:
                    progress.advance(task)
                    continue
                loss = _qat_step(model, teacher, recipe, batch, loss_fn, optimizer, scheduler, torch_device, epoch)
                running += loss * len(batch.indices)
                seen += len(batch.indices)
                progress.update(task, advance=1, status=f"loss {running / max(seen, 1):.4f}")
            val_map = evaluate(model)
            history.append({"epoch": epoch + 1, "train_loss": running / max(seen, 1), "val_mAP_fake_quant": val_map,
                            "lr": scheduler.get_last_lr()[0]})
            progress.update(task, status=f"loss {running / max(seen, 1):.4f} val mAP (fake quant) "
                                         f"{val_map * 100:.2f}%")
    return history


def _student_mode(model: torch.nn.Module, *, distilling: bool, frozen_norms: Sequence[torch.nn.Module]) -> None:
    """Put the student in the mode it fine-tunes in: distilling, the deployed graph's (eval: BatchNorm on the trained
    statistics, no dropout, no train-only stream; the module docstring); on labels, training mode as the recipe
    trained it (``frozen_norms`` on their statistics)."""
    if distilling:
        model.eval()
        return
    model.train()
    for norm in frozen_norms:
        norm.eval()


def _qat_step(model: torch.nn.Module, teacher: torch.nn.Module | None, recipe: Recipe, batch, loss_fn, optimizer,
              scheduler, torch_device: torch.device, epoch: int) -> float:
    """One optimizer step on ``batch`` (distilling: the student's ``forward`` towards the teacher's scores; on
    labels: the model's own ``training_loss``); returns its loss."""
    images, targets = batch.images.to(torch_device), batch.targets.to(torch_device)
    if "cutmix" in recipe.augment:
        images, targets = cut_mix(images, targets)
    if teacher is not None:
        with torch.no_grad():
            targets = torch.sigmoid(teacher(images))
        loss = loss_fn(model(images), targets)
    else:
        loss = model.training_loss(images, targets, loss_fn)
    if not torch.isfinite(loss):
        raise MlicError(f"qat: loss became {loss.item()} at epoch {epoch + 1}", hint="lower --lr")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if recipe.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
    optimizer.step()
    scheduler.step()
    return loss.item()


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    """The fp32 teacher: eval mode (BatchNorm on its running statistics, no dropout), no gradients."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def without_quantizers(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the fine-tuned ``model`` with every quantizer off: its fine-tuned weights, computing in float."""
    plain = copy.deepcopy(model)
    require_modelopt().disable_quantizer(plain, "*")
    return plain


def weight_steps(model: torch.nn.Module, onnx_path: Path) -> dict[str, dict[str, Any]]:
    """The steps the fine-tuned ``model``'s enabled weight quantizers rounded with, by the initializer names of
    ``onnx_path`` (its float export, ``without_quantizers(model)``), for ONNX Runtime's CPU graph to round the weights
    to the grid the fine-tuning learned around instead of its own (calibration/int8.py ``fine_tuned_overrides``):
    {initializer: {"axis": its channel axis, "steps": one step per channel}}, each step the quantizer's amax over its
    largest integer (``maxbound``) times what the export folded into that channel (a BatchNorm's scale). A weight the
    export changed otherwise (not a per-channel multiple) is left out: ONNX Runtime steps it by itself.

    Why: ONNX Runtime's 7-bit weights step max|w| / 64 where ModelOpt's 7 bits step amax / 63, so a CPU graph
    quantized from the fine-tuned weights by ONNX Runtime alone rounds them anew. Measured on the zoo's ML-GAT (eval
    split, 7-bit weights, QDQ with the weighted ops and their Relu, nothing float but the score head): 93.3 %
    identical label sets, 96.0 % with these steps, the fake-quantized model itself 96.3 %. The inputs' ranges were
    tried too (ModelOpt's amax in place of ONNX Runtime's min/max): 95.7 %, so they are left to its calibration."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    nodes = {node.name: node for node in graph.node if node.op_type in WEIGHTED_OP_TYPES}
    steps: dict[str, dict[str, Any]] = {}
    for node_name, module_name in float_modules(model, list(nodes)).items():
        node, module = nodes[node_name], model.get_submodule(module_name)
        if not module.weight_quantizer.is_enabled or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        exported = _exported_steps(numpy_helper.to_array(initializers[node.input[1]]),
                                   module.weight.detach().double().cpu().numpy(), module.weight_quantizer,
                                   _weight_axis(module), transposed=_reads_weight_transposed(node))
        if exported is not None:
            steps[node.input[1]] = exported
    return steps


def _weight_axis(module: torch.nn.Module) -> int:
    """The axis of a weighted module's output channels (``WEIGHTED_MODULES``)."""
    return next(axis for kind, axis in zip(_weighted_types(), WEIGHTED_MODULES.values()) if isinstance(module, kind))


def _reads_weight_transposed(node) -> bool:
    """Whether ``node`` holds a Linear's (out, in) weight as (in, out): a MatMul, or a Gemm without ``transB``
    (onnxsim's fusion of a MatMul and its bias Add)."""
    if node.op_type == "MatMul":
        return True
    transposes_b = any(attribute.name == "transB" and attribute.i for attribute in node.attribute)
    return node.op_type == "Gemm" and not transposes_b


def _exported_steps(exported: np.ndarray, trained: np.ndarray, quantizer, axis: int, transposed: bool
                    ) -> dict[str, Any] | None:
    """{"axis", "steps"} of ``exported`` (the ONNX initializer, the transpose of a 2-D ``trained`` where
    ``transposed``) from ``trained`` (the module's weight, channels on ``axis``) and its ``quantizer``; None where
    ``exported`` is not ``trained`` with each channel scaled. The node says which: a square weight fits both."""
    onnx_axis = axis
    if transposed and trained.ndim == 2:
        onnx_axis, exported = 1 - axis, exported.T
    if exported.shape != trained.shape:
        return None
    channels = trained.shape[axis]
    trained_rows = np.moveaxis(trained, axis, 0).reshape(channels, -1)
    exported_rows = np.moveaxis(exported.astype(np.float64), axis, 0).reshape(channels, -1)
    largest = np.abs(trained_rows).argmax(axis=1)
    pivot = trained_rows[np.arange(channels), largest]
    folded = np.divide(exported_rows[np.arange(channels), largest], pivot, out=np.ones(channels), where=pivot != 0)
    if not np.allclose(exported_rows, trained_rows * folded[:, None], rtol=1e-4, atol=1e-7):
        return None
    amax = np.broadcast_to(quantizer.amax.detach().double().cpu().numpy().reshape(-1), (channels,))
    return {"axis": onnx_axis, "steps": (amax / quantizer.maxbound * np.abs(folded)).tolist()}


def save_qat_state(model: torch.nn.Module, path: Path) -> None:
    """``qat.pt``: ModelOpt's quantizer state and the fine-tuned weights (``modelopt.torch.opt.restore`` onto the
    checkpoint's model rebuilds the fake-quantized model)."""
    with warnings.catch_warnings():  # as in require_modelopt
        warnings.simplefilter("ignore")
        import modelopt.torch.opt as mto

        mto.save(model, str(path))
