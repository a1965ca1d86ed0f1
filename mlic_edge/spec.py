"""The run contract (docs/design.md, "The run contract"): the facts every stage shares, each defined once here, and
``RunSpec``, the typed view of run.json that the ONNX metadata mirrors.

run.json and the ONNX metadata are read and written through ``RunSpec.from_run_json`` / ``to_run_json`` and
``RunSpec.from_onnx_metadata`` / ``onnx_metadata``: the defaults of older runs (no ``resize``, no
``input_format``) live in this module only. numpy-free and torch-free: every stage may import it.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, TypeVar

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_PRECISION = PRECISIONS[0]
DEFAULT_BACKEND = "auto"  # the first backend of the registry's AUTO_ORDER that can run the run here
DEFAULT_DEVICE = "auto"  # a GPU where the backend has one, else the CPU
DEFAULT_THRESHOLD = 0.5
"""The score at which a label is predicted wherever no threshold is given: run, eval, parity's identical label sets,
the int8 accuracy target, the serving configs' classifier threshold."""
# The backends and their name lists (BACKENDS, ENGINE_BACKENDS, BUILD_BACKENDS) are the runtime's backend registry's:
# runtime/inference/backends/registry.py.
RESIZE_MODES = ("warp", "warp-antialias", "center-crop", "letterbox")
DEFAULT_RESIZE = "warp"
# PIL's bilinear squash, antialiased when shrinking: the official ML-GCN, MSRN and Query2Label evaluations', so the
# mode of every imported run (mlic_edge/data/resample.py).
OFFICIAL_RESIZE = "warp-antialias"
FLOAT_INPUT = "float-nchw-rgb"  # (x/255 - mean)/std done by mlic-edge before the model
UINT8_INPUT = "uint8-nhwc-bgr"  # the resized frame as captured; normalisation folded into the graph
INPUT_FORMATS = (FLOAT_INPUT, UINT8_INPUT)
INPUT_LAYOUTS = {  # the human-readable ``input_layout`` of the ONNX metadata
    FLOAT_INPUT: "NCHW RGB float32, resized ({resize}) to img_size, (x/255 - mean)/std",
    UINT8_INPUT: "NHWC BGR uint8, resized ({resize}) to img_size (as captured); cast, (x/255 - mean)/std, BGR->RGB "
                 "and NCHW are the graph's first nodes",
}

# The int8 accuracy target of each graph (INT8_GRAPHS): (|ΔmAP| in points, share of images with fp32's label set).
# `build -p int8` makes each graph meet it on the run's validation images (calibration/plan.py) and states its verdict
# on the eval split; parity holds the graph to the same target there, so the two verdicts are one test.
INT8_TARGETS = {"tensorrt": (0.2, 0.985), "cpu": (0.5, 0.97)}
INT8_TARGET_DELTA_POINTS, INT8_TARGET_AGREEMENT = INT8_TARGETS["tensorrt"]
CPU_INT8_TARGET_DELTA_POINTS, CPU_INT8_TARGET_AGREEMENT = INT8_TARGETS["cpu"]
CPU_INT8_TARGET_LATENCY = 0.5  # the CPU graph's latency target: this share of fp32's, at the batch the build times
# Parity limits per precision (runtime/checks/parity.py applies them; --tolerance, --min-same, --max-diff override);
# int8's are its TensorRT graph's target (``parity_limits``: the CPU graph's own).
DEFAULT_TOLERANCE_POINTS = {"fp32": 0.1, "fp16": 0.5, "int8": INT8_TARGET_DELTA_POINTS}  # |ΔmAP| allowed, in points
DEFAULT_LABELSET_FLOOR = {"fp32": 0.99, "fp16": 0.97, "int8": INT8_TARGET_AGREEMENT}  # share with identical label sets
DEFAULT_CALIB_IMAGES = 512  # int8: calibration images asked of the training split
# int8 activation ranges: the methods (post-training calibration and the fine-tuning's start alike); percentile keeps
# this share of |x| (a histogram of 2048 bins); the default, measured best-or-close on benchmarks/results/precision.md
CALIBRATION_METHODS = ("entropy", "percentile", "minmax")
DEFAULT_CALIBRATION_METHOD = "percentile"
CALIBRATION_PERCENTILE = 99.999
CALIBRATION_BINS = 2048
# the ONNX ops that multiply an activation by a weight: quantized with per-channel weights (calibration), traced back to
# the modules that export them (export's fused nodes, the fine-tuning's float layers and weight steps)
WEIGHTED_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
DEFAULT_HOLDOUT_IMAGES = 256  # int8: held-out training images the accuracy target is measured on
DEFAULT_QAT_EPOCHS = 3  # int8: quantization-aware distillation when post-training misses the target (benchmarks/qat.py)
# max |Δscore|; fp32 only (fp16/int8 move scores by design): 1e-2 leaves room for TF32 on GPUs and fails a reference
# of another model (seen: 0.11).
DEFAULT_MAX_SCORE_DIFF: dict[str, float | None] = {"fp32": 1e-2, "fp16": None, "int8": None}


def per_precision_text(values: Mapping[str, float | None]) -> str:
    """"fp32=0.1 fp16=0.5 int8=1.5": a per-precision default as the options spell it (None: no limit)."""
    return " ".join(f"{precision}={value:g}" for precision, value in values.items() if value is not None)


# What a runtime refusal of NaN or inf scores advises (the graph made them; no limit lets them pass).
BROKEN_GRAPH_HINT = ("the graph or engine that returned them is broken: make it again (fp32: mlic-edge export; "
                     "the others: mlic-edge build --precision PRECISION --requantize)")


def rebuild_command(run_path: str | Path, precision: str, backend: str | None = None) -> str:
    """The command that (re)makes a precision's artefact, named in every refusal that needs one."""
    return f"mlic-edge build --run {run_path} --precision {precision}" + (f" --backend {backend}" if backend else "")


DEFAULT_RUNS_ROOT = Path("runs")  # where --model NAME puts a run: runs/NAME


def train_first_hint(run_path: str | Path) -> str:
    """The hint of every stage that finds no trained model in a run: train one (``--recipe quick`` for a first
    try in minutes) or import a paper's released checkpoint."""
    run_path = Path(run_path)
    model, out = (run_path.name, "") if run_path.parent == DEFAULT_RUNS_ROOT else ("MODEL", f" --out {run_path}")
    return (f"train first: mlic-edge train --model {model} --data DATA{out} (add --recipe quick for a fast start), "
            f"or import a released checkpoint of a paper: mlic-edge import ml-gcn|msrn|q2l FILE --out {run_path}")


def retrain_command(run_path: str | Path) -> str:
    """The command that makes a run's model and run.json anew (a damaged checkpoint or run.json field)."""
    return f"mlic-edge train --data DATA --out {run_path} --overwrite"


# Graphs of one precision that differ by where they run: int8's default graph is TensorRT's symmetric Q/DQ (which
# ONNX Runtime on CUDA runs too); "cpu" is the one ONNX Runtime's CPU kernels fuse (uint8 activations).
ONNX_VARIANTS = {"int8": ("cpu",)}
INT8_GRAPHS = ("tensorrt", "cpu")  # what `graph=` names: model.int8.onnx, model.int8.cpu.onnx


def parity_limits(precision: str, graph: str | None = None) -> tuple[float, float]:
    """(|ΔmAP| in points, share of identical label sets) a graph of ``precision`` is held to by default: int8's CPU
    graph (``graph="cpu"``) its own target, every other graph its precision's limits."""
    if precision == "int8" and graph in INT8_TARGETS:
        return INT8_TARGETS[graph]
    return DEFAULT_TOLERANCE_POINTS[precision], DEFAULT_LABELSET_FLOOR[precision]


def onnx_file_name(precision: str, variant: str | None = None) -> str:
    """model.onnx, model.<precision>.onnx, or a variant's model.<precision>.<variant>.onnx."""
    if variant is not None:
        require_choice(f"{precision} graph", variant, ONNX_VARIANTS.get(precision, ()))
        return f"model.{precision}.{variant}.onnx"
    return "model.onnx" if precision == "fp32" else f"model.{precision}.onnx"


@dataclass(frozen=True)
class Preprocessing:
    """How a frame becomes the model's input: size, normalisation, resize mode and input format, as one value (the
    five travel together through calibration and every scoring of images)."""

    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = DEFAULT_RESIZE
    input_format: str = FLOAT_INPUT

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(self.mean))
        object.__setattr__(self, "std", tuple(self.std))

    def as_dict(self) -> dict[str, Any]:
        """The form the engine manifests and bundles record."""
        return {"img_size": self.img_size, "mean": list(self.mean), "std": list(self.std), "resize": self.resize,
                "input_format": self.input_format}


@dataclass(frozen=True)
class ModelSpec:
    """How to feed the model and name its outputs: what the runtime needs, from run.json or the ONNX metadata."""

    labels: list[str]
    img_size: int
    mean: list[float]
    std: list[float]
    resize: str = DEFAULT_RESIZE
    input_format: str = FLOAT_INPUT

    @classmethod
    def from_run(cls, meta: "Mapping[str, Any] | ModelSpec") -> "ModelSpec":
        spec = meta if isinstance(meta, ModelSpec) else RunSpec.from_run_json(meta)
        return ModelSpec(list(spec.labels), spec.img_size, list(spec.mean), list(spec.std), spec.resize,
                         spec.input_format)

    def random_batch(self, batch: int, seed: int = 0) -> Any:
        """A batch of the model's input type (for timing: values do not matter)."""
        import numpy as np

        rng = np.random.default_rng(seed)
        if self.input_format == UINT8_INPUT:
            return rng.integers(0, 256, (batch, self.img_size, self.img_size, 3), dtype=np.uint8)
        return rng.standard_normal((batch, 3, self.img_size, self.img_size)).astype(np.float32)

    @property
    def preprocessing(self) -> Preprocessing:
        """How to feed the model, as one typed value (``as_dict()`` where an engine manifest or bundle records it)."""
        return Preprocessing(self.img_size, tuple(self.mean), tuple(self.std), self.resize, self.input_format)


GRAPH_HASHES = "onnx_sha256"  # run.json: {file name: sha256} of every ONNX a transaction put in the run folder

_Section = TypeVar("_Section", bound="RunSection")


@dataclass(frozen=True)
class RunSection:
    """One object of run.json beyond the model contract, typed: its keys are the fields (a key absent from the file
    reads as None and a None field is left out when written, but for ``NULLS``, which the writers record as null);
    the keys a section does not name are kept in ``extra`` as written, so older and newer runs load alike."""

    NULLS: ClassVar[tuple[str, ...]] = ()
    NESTED: ClassVar[dict[str, type["RunSection"]]] = {}

    @classmethod
    def from_json(cls: type[_Section], data: Mapping[str, Any]) -> _Section:
        named = {item.name for item in fields(cls)} - {"extra"}
        values = {key: value for key, value in data.items() if key in named}
        for key, section in cls.NESTED.items():
            if isinstance(values.get(key), Mapping):
                values[key] = section.from_json(values[key])
        return cls(**values, extra={key: value for key, value in data.items() if key not in named})

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name != "extra" and (value is not None or item.name in self.NULLS):
                data[item.name] = value.to_json() if isinstance(value, RunSection) else value
        return {**data, **getattr(self, "extra", {})}


@dataclass(frozen=True)
class DatasetSection(RunSection):
    """run.json's ``dataset``: the data the run was trained on (a bundle's: its images, ``original_spec`` in extra)."""

    spec: str | None = None  # the --data spec, e.g. voc:VOCdevkit/VOC2007
    format: str | None = None
    train_split: str | None = None
    eval_split: str | None = None
    difficult: str | None = None
    train_images: int | None = None
    eval_images: int | None = None
    train_class_counts: list[int] | None = None
    # The validation split held out of the training split before training (mlic_edge/data/splits.py): its fraction,
    # seed, image count and the sha256 of its sorted image ids. Absent (None) in older runs, imported checkpoints and
    # runs trained with --val-fraction 0: the best epoch was then chosen on the eval split.
    val_fraction: float | None = None
    val_seed: int | None = None
    val_images: int | None = None
    val_ids_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def has_validation(self) -> bool:
        """Whether the run records a validation split (held out before training)."""
        return bool(self.val_fraction) and self.val_seed is not None and bool(self.val_ids_sha256)

    @property
    def difficult_rule(self) -> str:
        """How the run treats VOC's difficult objects ("ignore" where run.json does not say)."""
        return self.difficult or "ignore"


@dataclass(frozen=True)
class RecipeSection(RunSection):
    """run.json's ``recipe``: the recipe's name and its settings as resolved (models/recipe.py's ``Recipe.as_dict``,
    written beside the name)."""

    name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # the settings

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.extra)


@dataclass(frozen=True)
class TrainSection(RunSection):
    """run.json's ``train``: the training's config and epochs; ``stopped`` where a stop came before the first epoch
    ended (train/trainer.py)."""

    config: dict[str, Any] | None = None  # TrainConfig's fields with the recipe's resolved values
    history: list[dict[str, Any]] | None = None  # one row per epoch
    epochs_done: int | None = None
    best_epoch: int | None = None
    best_val_mAP: float | None = None
    best_weights: str | None = None  # "raw" or "ema": which checkpoint.pt holds
    selected_on: str | None = None  # the split best_val_mAP (the best epoch and weights) was measured on
    eval_mAP: float | None = None  # checkpoint.pt's mAP on the eval split, measured once training ended
    device: str | None = None
    world_size: int | None = None  # under torchrun
    skipped_images: dict[str, int] | None = None  # unreadable images per split, once training ended
    stopped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class LabelGraphSection(RunSection):
    """run.json's ``label_graph``: label_graph.npz and where its word vectors came from."""

    NULLS = ("warning",)  # training records that there was none

    file: str | None = None
    vectors_source: str | None = None
    vectors_dim: int | None = None
    warning: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ImportedSection(RunSection):
    """run.json's ``imported``: the released checkpoint an imported run was made from (mlic-edge import)."""

    NULLS = ("paper_mAP",)

    format: str | None = None
    file: str | None = None
    sha256: str | None = None
    paper_mAP: float | None = None
    notes: list[str] | None = None
    taken_on_trust: Any = None
    ignored_tensors: Any = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ExportCheck(RunSection):
    """The export's check of model.onnx against PyTorch."""

    images: int | None = None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    backend: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ExportSection(RunSection):
    """run.json's ``export``: how model.onnx was made and checked (export/onnx_export.py)."""

    NESTED = {"check": ExportCheck}

    onnx: str | None = None
    opset: int | None = None
    simplified: bool | None = None
    exporter: str | None = None
    input: str | None = None
    output: str | None = None
    source_checkpoint_sha256: str | None = None
    check: ExportCheck | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ReferenceSection(RunSection):
    """run.json's ``reference``: reference.npz, the PyTorch scores parity compares with (export/reference.py)."""

    file: str | None = None
    images: int | None = None
    split: str | None = None
    spec: str | None = None
    mAP: float | None = None
    backend: str | None = None
    device: str | None = None
    torch: str | None = None
    source_checkpoint_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class QatSection(RunSection):
    """run.json's ``qat``: the quantization-aware fine-tuning that made model.int8.onnx (commands/qat.py)."""

    NULLS = ("delta_mAP_vs_fp32", "ptq_delta_mAP_vs_fp32", "accuracy", "ptq_accuracy")

    by: str | None = None  # the command that fine-tuned
    epochs: int | None = None
    lr: float | None = None
    target: str | None = None
    calib_images: int | None = None
    train_images: int | None = None
    calibration: str | None = None
    library: str | None = None
    library_version: str | None = None
    torch: str | None = None
    quantizers: int | None = None
    dequantize_nodes: int | None = None
    onnx: str | None = None
    state: str | None = None
    device: str | None = None
    seconds: float | None = None
    history: list[dict[str, Any]] | None = None
    fake_quant_torch: dict[str, Any] | None = None  # images, mAP_fp32, mAP_calibrated, mAP_qat
    delta_mAP_vs_fp32: float | None = None
    ptq_delta_mAP_vs_fp32: float | None = None
    accuracy: dict[str, Any] | None = None  # the int8 graph's, measured as the build measures
    ptq_accuracy: dict[str, Any] | None = None  # the post-training graph's, when measured
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


# run.json's typed sections: the RunSpec field, and run.json key, of each.
RUN_SECTIONS: dict[str, type[RunSection]] = {
    "dataset": DatasetSection, "recipe": RecipeSection, "train": TrainSection, "label_graph": LabelGraphSection,
    "imported": ImportedSection, "export": ExportSection, "reference": ReferenceSection, "qat": QatSection}


def run_json_sections(**sections: Any) -> dict[str, Any]:
    """run.json's content for ``sections`` (RunChange.update's): a typed section as its JSON; a key of a typed
    section given anything else is refused, so that every writer of those goes through this module."""
    data = {}
    for key, value in sections.items():
        expected = RUN_SECTIONS.get(key)
        if expected is not None and not isinstance(value, expected):
            raise TypeError(f"run.json's {key!r} is written as a {expected.__name__}, not {type(value).__name__}")
        data[key] = value.to_json() if isinstance(value, RunSection) else value
    return data


def merged_run_json(data: dict[str, Any], sections: Mapping[str, Any], graphs: Mapping[str, str],
                    versions: Mapping[str, str]) -> dict[str, Any]:
    """run.json's content ``data`` with ``sections`` written over it, ``graphs`` ({ONNX file name: sha256}) added to
    its graph hashes and ``versions`` to its versions (RunDir.transaction)."""
    merged = {**data, **sections}
    if graphs:
        merged[GRAPH_HASHES] = {**merged.get(GRAPH_HASHES, {}), **graphs}
    merged["versions"] = {**merged.get("versions", {}), **versions}
    return merged


@dataclass(frozen=True, kw_only=True)
class RunSpec(ModelSpec):
    """What a run is and how its model is fed: the typed contract of run.json (and of the ONNX metadata), with its
    sections typed (``RUN_SECTIONS``; None where run.json has none)."""

    model: str = "unknown"
    backbone: str = "unknown"
    model_config: dict[str, Any] | None = None  # the zoo model's config (checkpoint.pt holds it too)
    dataset: DatasetSection | None = None  # spec and splits the run was trained on
    recipe: RecipeSection | None = None
    label_graph: LabelGraphSection | None = None
    imported: ImportedSection | None = None  # the released checkpoint an imported run was made from
    train: TrainSection | None = None
    export: ExportSection | None = None
    reference: ReferenceSection | None = None
    qat: QatSection | None = None
    onnx_sha256: dict[str, str] = field(default_factory=dict)  # GRAPH_HASHES, as written (export/lineage.py checks)
    versions: dict[str, str] = field(default_factory=dict)  # what made the files (rundir.installed_versions)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # the rest of run.json, kept as written

    @classmethod
    def from_run_json(cls, data: Mapping[str, Any], source: str | Path = "run.json") -> "RunSpec":
        """The contract in run.json's ``data`` (read from ``source``); a field missing or of the wrong kind is
        refused in one line naming ``source`` and the field (RunDirError)."""
        known = {item.name for item in fields(cls)} - {"extra"}
        read = functools.partial(_run_json_field, data, source)
        sections = {}
        for key, section in RUN_SECTIONS.items():
            value = read(key, None)
            sections[key] = None if value is None else section.from_json(value)
        return cls(model=read("model", "unknown"), backbone=read("backbone", "unknown"), labels=list(read("labels")),
                   img_size=read("img_size"), mean=[float(value) for value in read("mean")],
                   std=[float(value) for value in read("std")], resize=read("resize", DEFAULT_RESIZE),
                   input_format=read("input_format", FLOAT_INPUT), model_config=read("model_config", None),
                   **sections, onnx_sha256=data.get(GRAPH_HASHES) or {}, versions=read("versions", None) or {},
                   extra={key: value for key, value in data.items() if key not in known})

    def to_run_json(self) -> dict[str, Any]:
        """run.json's content: the contract, then every section present (the absent left out, so that writing a
        spec into an existing run.json merges: RunDir.update), then the rest as read."""
        data = {"model": self.model, "backbone": self.backbone, "labels": list(self.labels),
                "img_size": self.img_size, "mean": list(self.mean), "std": list(self.std), "resize": self.resize,
                "input_format": self.input_format}
        if self.model_config is not None:
            data["model_config"] = self.model_config
        data.update(run_json_sections(**{key: getattr(self, key) for key in RUN_SECTIONS
                                         if getattr(self, key) is not None}))
        for key in (GRAPH_HASHES, "versions"):
            if getattr(self, key):
                data[key] = getattr(self, key)
        return {**data, **self.extra}

    @classmethod
    def from_onnx_metadata(cls, metadata: Mapping[str, str]) -> "RunSpec":
        """The contract an ONNX file carries by itself (a device may have the file and no run.json)."""
        def parsed(key: str) -> Any:
            return json.loads(metadata[key])

        return cls(model=metadata.get("model", "unknown"), backbone=metadata.get("backbone", "unknown"),
                   labels=parsed("labels"), img_size=int(metadata["img_size"]), mean=parsed("mean"),
                   std=parsed("std"), resize=metadata.get("resize") or DEFAULT_RESIZE,
                   input_format=metadata.get("input_format") or FLOAT_INPUT)

    def onnx_metadata(self, precision: str, version: str) -> dict[str, str]:
        return {"mlic_edge_version": version, "model": self.model, "backbone": self.backbone,
                "labels": json.dumps(self.labels), "img_size": str(self.img_size), "mean": json.dumps(self.mean),
                "std": json.dumps(self.std), "resize": self.resize, "input_format": self.input_format,
                "precision": precision, "input_layout": self.input_layout,
                "output": "sigmoid probabilities, one per label"}

    @property
    def dataset_record(self) -> DatasetSection:
        """The dataset section, empty (every field None) where run.json names no dataset (an imported run)."""
        return self.dataset or DatasetSection()

    @property
    def input_layout(self) -> str:
        return INPUT_LAYOUTS[self.input_format].format(resize=self.resize)


_REQUIRED = object()
_DATASET_TEXT = ("spec", "format", "train_split", "eval_split", "difficult")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_numbers(value: Any, positive: bool = False) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(_is_number(x) and (x > 0 or not positive) for x in value)


def _is_dataset(value: Any) -> bool:
    if not isinstance(value, dict) or not all(isinstance(value.get(key), (str, type(None))) for key in _DATASET_TEXT):
        return False
    counts = value.get("train_class_counts")
    return counts is None or isinstance(counts, list) and all(isinstance(n, int) and n >= 0 for n in counts)


# Each field of run.json that RunSpec reads: what it must hold, in words, and the test of it.
_RUN_JSON_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "labels": ("a non-empty list of distinct class names",
               lambda v: isinstance(v, list) and bool(v) and all(isinstance(x, str) and x for x in v)
               and len(set(v)) == len(v)),
    "img_size": ("a positive whole number of pixels", lambda v: isinstance(v, int) and not isinstance(v, bool)
                 and v > 0),
    "mean": ("a list of 3 numbers (R, G, B)", _is_numbers),
    "std": ("a list of 3 positive numbers (R, G, B)", functools.partial(_is_numbers, positive=True)),
    "resize": (f"one of {', '.join(RESIZE_MODES)}", lambda v: isinstance(v, str) and v in RESIZE_MODES),
    "input_format": (f"one of {', '.join(INPUT_FORMATS)}", lambda v: isinstance(v, str) and v in INPUT_FORMATS),
    "model": ("a model name (text)", lambda v: isinstance(v, str)),
    "backbone": ("a backbone name (text)", lambda v: isinstance(v, str)),
    "dataset": (f"an object whose {', '.join(_DATASET_TEXT)} are text and train_class_counts a list of counts",
                _is_dataset),
    **{key: ("an object", lambda v: isinstance(v, dict)) for key in RUN_SECTIONS if key != "dataset"},
    "model_config": ("an object", lambda v: isinstance(v, dict)),
    "versions": ("an object", lambda v: isinstance(v, dict)),
}


def _run_json_field(data: Mapping[str, Any], source: str | Path, name: str, default: Any = _REQUIRED) -> Any:
    """run.json's field ``name`` if it holds what RunSpec needs; ``default`` where it is absent (null or "" too, as
    older runs wrote); else the one-line refusal naming the file, the field and a fix that works: export and every
    later stage only read run.json, so the fix is to correct the field or to make the run again."""
    expected, valid = _RUN_JSON_FIELDS[name]
    value = data.get(name)
    if value in (None, "") and default is not _REQUIRED:
        return default
    if valid(value):
        return value
    from mlic_edge.errors import RunDirError

    run = Path(source).parent if Path(source).parent != Path(".") else "RUN"
    problem = (f"has no field '{name}' ({expected})" if name not in data
               else f"field '{name}' is {_shown(value)}, not {expected}")
    raise RunDirError(f"{source} {problem}",
                      hint=f"correct '{name}' in {source}, or make the run again: {retrain_command(run)}, or for an "
                           f"imported run mlic-edge import FORMAT CHECKPOINT --out {run} --overwrite")


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def require_choice(kind: str, value: str, choices: tuple[str, ...], error: type[Exception] | None = None) -> str:
    """``value`` if it is one of ``choices``; else the one-line refusal every stage gives ("unknown precision …")."""
    if value in choices:
        return value
    from mlic_edge.errors import MlicError

    raise (error or MlicError)(f"unknown {kind} {value!r}", hint=f"choose one of {', '.join(choices)}")


def split_items(option: str, text: str, item_type: type = str) -> list[Any]:
    """'4,8' -> [4, 8]: the comma-separated items of ``text`` as ``item_type`` (blanks dropped); else the one-line
    refusal naming ``option``. How a list given as one string is read: the CLI's list options and the Python API's
    string for a list field (mlic_edge/api.py)."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    try:
        return [item_type(item) for item in items]
    except ValueError:
        from mlic_edge.errors import MlicError

        example = {int: "4,8", float: "0.5,0.9"}.get(item_type, "a,b")
        raise MlicError(f"{option} {text!r} is not a comma-separated list of {item_type.__name__} values",
                        hint=f"for example {option} {example}") from None


def refuse_unknown(given: Iterable[str], known: Iterable[str], what: str) -> None:
    """Refuse names outside ``known`` (keyword arguments, stream options) in one line that lists the valid ones."""
    from mlic_edge.errors import MlicError

    unknown = sorted(set(given) - set(known))
    if unknown:
        raise MlicError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for {what}",
                        hint=f"choose among {', '.join(sorted(known))}")


def parse_key_values(pairs: list[str], option: str) -> dict[str, Any]:
    """KEY=VALUE options (``--loss-kwargs``, ``--model-kwargs``): ['gamma_neg=4', 'batchformer=false'] ->
    {'gamma_neg': 4, 'batchformer': False}; values are Python literals, true/false, else text."""
    import ast

    from mlic_edge.errors import MlicError

    parsed = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise MlicError(f"{option} {pair!r} is not KEY=VALUE", hint=f"for example {option} gamma_neg=4")
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            value = lowered == "true"
        else:
            try:
                value = ast.literal_eval(text.strip())
            except (ValueError, SyntaxError):
                value = text.strip()
        parsed[key.strip().replace("-", "_")] = value
    return parsed


def parse_per_precision(pairs: list[str], option: str, example: str, unit: str = "VALUE",
                   upper: float | None = None) -> dict[str, float]:
    """PRECISION=VALUE options (parity's limits): ['int8=2', 'fp16=0.8'] -> {'int8': 2.0, 'fp16': 0.8}; each value
    finite and >= 0 (and <= ``upper``)."""
    from mlic_edge.errors import MlicError

    parsed = {}
    for pair in pairs:
        precision, sep, text = pair.partition("=")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not sep or precision not in PRECISIONS or not math.isfinite(value) or value < 0 or (
                upper is not None and value > upper):
            limit = f" between 0 and {upper:g}" if upper is not None else " (finite, >= 0)"
            raise MlicError(f"{option} {pair!r} is not PRECISION={unit}{limit}",
                            hint=f"for example {option} {example} (precisions: {', '.join(PRECISIONS)})")
        parsed[precision] = value
    return parsed


def require_finite(what: str, values: Any, *, error: type[Exception] | None = None,
                   hint: str = "every score and limit must be a number: find what produced this one",
                   at: Callable[[tuple[int, ...]], str] | None = None) -> Any:
    """``values`` (a number, or an array of them) if every one is finite; else the one-line refusal naming ``what``
    (``error``, by default NonFiniteError) and, for an array, how many are NaN or inf and where the first is (``at``
    names a position: "image 12, label 'cat'"). The one rule for numbers read from files, options and backends:
    ``nan > limit`` is false, so a NaN would pass any check written as a comparison."""
    import numpy as np

    from mlic_edge.errors import NonFiniteError

    array = np.asarray(values)
    finite = np.isfinite(array)
    if finite.all():
        return values
    if array.ndim == 0:
        problem = f"{what} is {values}, not a finite number"
    else:
        counts = " and ".join(f"{count} {name}" for name, count in (("NaN", int(np.isnan(array).sum())),
                                                                     ("inf", int(np.isinf(array).sum()))) if count)
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        problem = (f"{what} hold {counts} among {array.size} values "
                   f"(first at {at(first) if at else list(first)})")
    raise (error or NonFiniteError)(problem, hint=hint)


def require_fraction(option: str, value: float, *, upper_open: bool = False, hint: str = "scores are probabilities"
                     ) -> float:
    """``value`` if it is a number in [0, 1] (``upper_open``: [0, 1)); else the one-line refusal naming ``option``."""
    if isinstance(value, (int, float)) and 0.0 <= require_finite(option, value, hint=hint) and (
            value < 1.0 if upper_open else value <= 1.0):
        return value
    from mlic_edge.errors import MlicError

    raise MlicError(f"{option} {value} is outside [0, {'1)' if upper_open else '1]'}", hint=hint)


def require_seconds(option: str, value: float, hint: str = "for example 10") -> float:
    """``value`` if it is a finite positive number of seconds; else the one-line refusal naming ``option``."""
    if isinstance(value, (int, float)) and require_finite(option, value, hint=hint) > 0:
        return value
    from mlic_edge.errors import MlicError

    raise MlicError(f"{option} {value} is not a positive number of seconds", hint=hint)


def require_at_least(option: str, value: float | None, minimum: float, *, above: bool = False,
                     hint: str | None = None) -> float | None:
    """``value`` (None: not given) if it is a finite number >= ``minimum`` (``above``: > ``minimum``); else the
    one-line refusal naming ``option``, made before any work."""
    if value is None:
        return None
    hint = hint or f"pass a number {'above' if above else 'of at least'} {minimum:g}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        require_finite(option, value, hint=hint)
        if value > minimum if above else value >= minimum:
            return value
    from mlic_edge.errors import MlicError

    raise MlicError(f"{option} {value} is {'not above' if above else 'below'} {minimum:g}", hint=hint)
