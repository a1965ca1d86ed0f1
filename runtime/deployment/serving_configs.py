"""Fleet serving configs for one run: a Triton Inference Server model repository and a DeepStream nvinfer config.

Neither server runs mlic-edge's preprocessing, so both configs carry it: Triton as model parameters a client can
read back, DeepStream as nvinfer's own normalisation (one scale for all channels: see ``nvinfer_normalisation``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from mlic_edge.console import warn
from mlic_edge.errors import BuildError, DataError, RunDirError
from mlic_edge.io import atomic_path, refuse_output_onto_inputs, require_writable, sha256_file
from mlic_edge.rundir import RunDir
from mlic_edge.spec import (FLOAT_INPUT, OFFICIAL_RESIZE, PRECISIONS, RunSpec, rebuild_command, require_at_least,
                            require_choice)
from mlic_edge.runtime.engines.manifest import find_engines, read_manifest

TRITON_PLATFORMS = {"onnx": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
TRITON_MODEL_FILES = {"onnx": "model.onnx", "tensorrt": "model.plan"}
TRITON_DEVICES = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
DEEPSTREAM_MODES = {"primary": 1, "secondary": 2}  # nvinfer process-mode
NVINFER_NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}
LABELS_FILE = "labels.txt"
MODEL_VERSION = "1"
_TRITON_TYPES = {"float": "TYPE_FP32", "float32": "TYPE_FP32", "half": "TYPE_FP16", "float16": "TYPE_FP16",
                 "uint8": "TYPE_UINT8"}
_ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 2: "TYPE_UINT8"}  # onnx.TensorProto.FLOAT, FLOAT16, UINT8
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # Triton DataType name, e.g. TYPE_FP32
    dims: tuple[int, ...]  # without the batch dimension


@dataclass(frozen=True)
class NvinferNormalisation:
    """nvinfer computes y = net_scale_factor * (x - offsets[c]) on 0..255 pixels: one scale for every channel."""

    net_scale_factor: float
    offsets: tuple[float, ...]
    max_relative_error: float  # |y_nvinfer / y_exact - 1|, worst channel
    max_abs_error: float  # |y_nvinfer - y_exact| over x in 0..255, worst channel, in normalised units


def nvinfer_normalisation(mean: Sequence[float], std: Sequence[float]) -> NvinferNormalisation:
    """Offsets 255*mean are exact; the scale 1/(255*mean(std)) approximates the per-channel 1/(255*std[c])."""
    std_mean = sum(std) / len(std)
    ratios = [value / std_mean for value in std]  # y_nvinfer = y_exact * std[c] / mean(std)
    worst_abs = max(max(m, 1.0 - m) / s * abs(r - 1.0) for m, s, r in zip(mean, std, ratios))
    return NvinferNormalisation(net_scale_factor=1.0 / (255.0 * std_mean),
                                offsets=tuple(255.0 * value for value in mean),
                                max_relative_error=max(abs(r - 1.0) for r in ratios), max_abs_error=worst_abs)


def write_triton_repository(run: RunDir, out: Path, *, precision: str = "fp32", platform: str = "onnx",
                            model_name: str | None = None, max_batch_size: int = 8,
                            preferred_batch_sizes: Sequence[int] = (4, 8), max_queue_delay_us: int = 100,
                            instances: int = 1, device: str = "gpu", engine: Path | None = None) -> Path:
    """Write ``out/<name>/`` (config.pbtxt, 1/model.onnx or 1/model.plan, labels.txt) and return that folder.

    ``platform="tensorrt"`` serves the engine of this precision from ``<run>/engines`` (``engine`` picks one when
    several targets have it) and takes max_batch_size from its optimization profile. The folder is built beside
    its final name and renamed into place; a model folder of the same name is replaced.
    """
    require_choice("precision", precision, PRECISIONS, BuildError)
    require_choice("platform", platform, TRITON_PLATFORMS, BuildError)
    require_choice("instance kind", device, TRITON_DEVICES, BuildError)
    if device == "cpu" and platform == "tensorrt":
        raise BuildError("a TensorRT plan runs on a GPU only",
                         hint="use --instance-kind gpu, or --platform onnx for CPU")
    if engine is not None and platform != "tensorrt":
        raise BuildError("an engine is served with platform tensorrt only", hint="add --platform tensorrt")
    if max_batch_size < 1 or instances < 1:
        raise BuildError(f"max_batch_size {max_batch_size} and instances {instances} must be at least 1",
                         hint="pass positive numbers")
    require_at_least("--queue-delay-us", max_queue_delay_us, 0, hint="microseconds, for example 100")
    spec = run.spec()
    labels = _checked_labels(spec.labels)
    name = model_name or f"{run.path.name}_{precision}_{platform}"
    if not _MODEL_NAME.match(name):
        raise BuildError(f"Triton model name {name!r} has characters other than letters, digits, '_', '.', '-'",
                         hint="pass --name with a plain name")
    onnx_path = _require_onnx(run, precision)
    if platform == "tensorrt":
        engine_path, manifest = _select_engine(run, precision, engine, onnx_path)
        inputs, outputs = _manifest_tensors(manifest)
        max_batch_size = int(manifest["batch"]["max"])
        model_files = [engine_path]
    else:
        inputs, outputs = _onnx_tensors(onnx_path)
        model_files = [onnx_path, *_external_data_files(onnx_path)]
    _check_outputs(outputs, labels, onnx_path)
    out = Path(out)
    refuse_output_onto_inputs({"OUT": out / name}, [run.path, *model_files])  # out/name is replaced whole
    require_writable(out, error=BuildError, hint="fix the folder's permissions or pick another output folder")
    config = _triton_config(name=name, platform=platform, max_batch_size=max_batch_size,
                            preferred_batch_sizes=sorted({size for size in preferred_batch_sizes
                                                          if 1 <= size <= max_batch_size}),
                            max_queue_delay_us=max_queue_delay_us, instances=instances, device=device,
                            inputs=inputs, outputs=outputs, preprocessing=_preprocessing(spec, precision))
    with _writing(out / name, "nothing in it was changed"), _staged_folder(out / name) as staging:
        version = staging / MODEL_VERSION
        version.mkdir()
        shutil.copyfile(model_files[0], version / TRITON_MODEL_FILES[platform])
        for extra in model_files[1:]:
            shutil.copyfile(extra, version / extra.name)
        (staging / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels))
        (staging / "config.pbtxt").write_text(config)
    return out / name


def write_deepstream_config(run: RunDir, out: Path, *, precision: str = "fp32", mode: str = "secondary",
                            engine: Path | None = None, gie_unique_id: int = 2, operate_on_gie_id: int = 1,
                            batch_size: int = 1, classifier_threshold: float = 0.5) -> Path:
    """Write ``out/config_infer_<mode>.txt`` for Gst-nvinfer, with ``labels.txt`` and the model files beside it.

    The ONNX of ``precision`` is always copied (nvinfer builds an engine from it where none fits); ``engine``, a
    TensorRT plan built for the device's TensorRT, is copied and named as model-engine-file. Paths in the config
    are relative to it, as nvinfer resolves them. The config is written last, so it never names a missing file.
    """
    require_choice("precision", precision, PRECISIONS, BuildError)
    require_choice("mode", mode, DEEPSTREAM_MODES, BuildError)
    if run.spec().input_format != FLOAT_INPUT:
        raise BuildError("this run's model takes uint8 frames (exported with --uint8-input); nvinfer feeds float "
                         "NCHW tensors it normalises itself", hint="export without --uint8-input for DeepStream")
    if batch_size < 1 or gie_unique_id < 1 or (mode == "secondary" and operate_on_gie_id < 1):
        raise BuildError("batch_size, gie_unique_id and operate_on_gie_id must be at least 1",
                         hint="pass positive numbers")
    if not 0.0 <= classifier_threshold <= 1.0:
        raise BuildError(f"classifier threshold {classifier_threshold} is not a probability",
                         hint="pass a value between 0 and 1")
    spec = run.spec()
    labels = _checked_labels(spec.labels)
    onnx_path = _require_onnx(run, precision)
    inputs, outputs = _onnx_tensors(onnx_path)
    _check_outputs(outputs, labels, onnx_path)
    if engine is not None:
        engine = _checked_deepstream_engine(Path(engine), precision, batch_size)
    norm = nvinfer_normalisation(spec.mean, spec.std)
    if norm.max_relative_error > 0:
        warn(f"nvinfer has one scale for all channels: its inputs differ from mlic-edge's per-channel std "
             f"normalisation by up to {norm.max_relative_error:.2%} (see the note in the config)")
    out = Path(out)
    config_path = out / f"config_infer_{mode}.txt"
    refuse_output_onto_inputs({"OUT": config_path}, [run.path])
    require_writable(out, error=BuildError, hint="fix the folder's permissions or pick another output folder")
    onnx_name = f"model.{precision}.onnx"
    engine_name = f"model.{precision}.engine" if engine is not None else None
    text = _nvinfer_config(spec=spec, precision=precision, mode=mode, onnx_name=onnx_name, engine_name=engine_name,
                           input_dims=inputs[0].dims, output_name=outputs[0].name, gie_unique_id=gie_unique_id,
                           operate_on_gie_id=operate_on_gie_id, batch_size=batch_size,
                           classifier_threshold=classifier_threshold)
    with _writing(out, f"{config_path.name} was not written"):
        _copy_atomic(onnx_path, out / onnx_name)
        for extra in _external_data_files(onnx_path):
            _copy_atomic(extra, out / extra.name)
        if engine is not None:
            _copy_atomic(engine, out / engine_name)
        with atomic_path(out / LABELS_FILE) as tmp:
            tmp.write_text(";".join(labels) + "\n")  # nvinfer: one line per output layer, classes split by ';'
        with atomic_path(config_path) as tmp:
            tmp.write_text(text)
    return config_path


# --- what the run holds -----------------------------------------------------------------------------------------
def _require_onnx(run: RunDir, precision: str) -> Path:
    path = run.onnx(precision)
    if not path.is_file():
        maker = (f"mlic-edge export --run {run.path}" if precision == "fp32" else
                 rebuild_command(run.path, precision, "onnxruntime"))
        raise RunDirError(f"{path} is missing", hint=f"make it first: {maker}")
    return path


def _select_engine(run: RunDir, precision: str, engine: Path | None, onnx_path: Path) -> tuple[Path, dict[str, Any]]:
    """The engine of this precision under ``<run>/engines`` (or the one named), with its manifest."""
    build = rebuild_command(run.path, precision, "tensorrt")
    if engine is not None:
        engine = Path(engine)
        if not engine.is_file():
            raise BuildError(f"engine {engine} is missing", hint=f"build it: {build}")
        manifest = read_manifest(engine.with_suffix(".json"))
    else:
        found = [path for path in find_engines(run.path) if read_manifest(path).get("precision") == precision]
        if not found:
            raise BuildError(f"no {precision} TensorRT engine in {run.path / 'engines'}", hint=f"build one: {build}")
        if len(found) > 1:
            targets = ", ".join(path.parent.name for path in found)
            raise BuildError(f"{len(found)} {precision} engines in {run.path / 'engines'} ({targets})",
                             hint="pick one with --engine PATH")
        manifest = read_manifest(found[0])
        engine = found[0].parent / manifest["engine"]
        if not engine.is_file():
            raise BuildError(f"engine {engine} named by its manifest is missing", hint=f"build it again: {build}")
    if manifest.get("precision") != precision:
        raise BuildError(f"{engine.name} is a {manifest.get('precision')} engine, not {precision}",
                         hint=f"pass --precision {manifest.get('precision')}, or build the {precision} engine: "
                              f"{build}")
    if manifest.get("onnx", {}).get("sha256") != sha256_file(onnx_path):
        raise BuildError(f"{engine.name} was built from another version of {onnx_path.name}",
                         hint=f"build it again: {build}")
    _warn_foreign_tensorrt(engine, manifest, "Triton's TensorRT backend")
    return engine, manifest


def _checked_deepstream_engine(engine: Path, precision: str, batch_size: int) -> Path:
    """A plan with an mlic-edge manifest is checked against it; a bare plan (trtexec) is taken as it is."""
    if not engine.is_file():
        raise BuildError(f"engine {engine} is missing",
                         hint="build it on the device (mlic-edge build --backend tensorrt), or leave the engine out "
                              "and let nvinfer build one from the ONNX")
    manifest_path = engine.with_suffix(".json")
    if not manifest_path.is_file():
        return engine
    manifest = read_manifest(manifest_path)
    if manifest.get("precision") != precision:
        raise BuildError(f"{engine.name} is a {manifest.get('precision')} engine, not {precision}",
                         hint=f"pass --precision {manifest.get('precision')} or the {precision} engine")
    batch_max = int(manifest.get("batch", {}).get("max", batch_size))
    if batch_size > batch_max:
        raise BuildError(f"batch size {batch_size} is above {engine.name}'s largest batch {batch_max}",
                         hint=f"pass a batch size up to {batch_max}, or build with --batch 1,{batch_size},"
                              f"{batch_size}")
    _warn_foreign_tensorrt(engine, manifest, "DeepStream's nvinfer")
    return engine


def _warn_foreign_tensorrt(engine: Path, manifest: dict[str, Any], loader: str) -> None:
    if manifest.get("backend") == "tensorrt-rtx":
        warn(f"{engine.name} was built with TensorRT for RTX {manifest.get('tensorrt_version')}; {loader} loads "
             "plans of its own TensorRT version: rebuild the engine on the serving machine if it refuses it")


def _onnx_tensors(onnx_path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {tensor.name for tensor in graph.initializer}

    def specs(values: Any) -> list[TensorSpec]:
        result = []
        for value in values:
            if value.name in initializers:
                continue
            tensor_type = value.type.tensor_type
            dims = tensor_type.shape.dim
            if not dims or dims[0].HasField("dim_value"):
                raise BuildError(f"{onnx_path.name} has a fixed batch size on {value.name!r}",
                                 hint="export it again with mlic-edge export (dynamic batch)")
            if any(not dim.HasField("dim_value") for dim in dims[1:]):
                raise BuildError(f"{onnx_path.name}'s {value.name!r} has a dynamic size besides the batch",
                                 hint="export the model with a fixed image size")
            data_type = _ONNX_TYPES.get(tensor_type.elem_type)
            if data_type is None:
                raise BuildError(f"{onnx_path.name}'s {value.name!r} is not float32 or float16",
                                 hint="export it again with mlic-edge export")
            result.append(TensorSpec(value.name, data_type, tuple(dim.dim_value for dim in dims[1:])))
        return result

    return specs(graph.input), specs(graph.output)


def _manifest_tensors(manifest: dict[str, Any]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    def specs(records: list[dict[str, Any]]) -> list[TensorSpec]:
        return [TensorSpec(record["name"], _TRITON_TYPES.get(record["dtype"], "TYPE_FP32"),
                           tuple(int(size) for size in record["shape"][1:])) for record in records]

    return specs(manifest["inputs"]), specs(manifest["outputs"])


def _external_data_files(onnx_path: Path) -> list[Path]:
    """Files holding weights outside the .onnx (models over 2 GB): they travel with it."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    names = {entry.value for tensor in model.graph.initializer for entry in tensor.external_data
             if entry.key == "location"}
    return [onnx_path.parent / name for name in sorted(names)]


def _checked_labels(labels: Sequence[str]) -> list[str]:
    bad = [label for label in labels if not label or any(char in label for char in ";\n\r")]
    if bad:
        raise DataError(f"label {bad[0]!r} is empty or holds ';' or a line break, which labels files cannot carry",
                        hint="rename the label in the dataset and train again")
    return list(labels)


def _check_outputs(outputs: list[TensorSpec], labels: list[str], onnx_path: Path) -> None:
    if len(outputs) != 1 or outputs[0].dims != (len(labels),):
        found = ", ".join(f"{spec.name} {list(spec.dims)}" for spec in outputs)
        raise BuildError(f"{onnx_path.name} should have one output of {len(labels)} scores; it has {found}",
                         hint="export the model again with mlic-edge export")


def _preprocessing(spec: RunSpec, precision: str) -> dict[str, str]:
    return {"mlic_edge.labels": json.dumps(spec.labels), "mlic_edge.img_size": str(spec.img_size),
            "mlic_edge.mean": json.dumps(spec.mean), "mlic_edge.std": json.dumps(spec.std),
            "mlic_edge.resize": spec.resize, "mlic_edge.precision": precision,
            "mlic_edge.input": "NCHW RGB float32, resized to img_size, (x/255 - mean)/std",
            "mlic_edge.output": "sigmoid probabilities, one per label (multi-label: threshold each)"}


# --- writing --------------------------------------------------------------------------------------------------
def _triton_config(*, name: str, platform: str, max_batch_size: int, preferred_batch_sizes: list[int],
                   max_queue_delay_us: int, instances: int, device: str, inputs: list[TensorSpec],
                   outputs: list[TensorSpec], preprocessing: dict[str, str]) -> str:
    """config.pbtxt in protobuf text format (inference.ModelConfig)."""
    lines = ["# Written by mlic-edge. Triton does not preprocess: clients send images resized, RGB, NCHW float32,",
             "# normalised (x/255 - mean)/std with the parameters below. Scores are independent sigmoid",
             "# probabilities (multi-label): threshold each one; classification top-k ranks them.",
             f"name: {_quote(name)}", f"platform: {_quote(TRITON_PLATFORMS[platform])}",
             f"max_batch_size: {max_batch_size}"]
    for spec in inputs:
        layout = "FORMAT_NHWC" if spec.data_type == "TYPE_UINT8" else "FORMAT_NCHW"  # uint8: frames as captured
        image_format = f"\n  format: {layout}" if len(spec.dims) == 3 else ""
        lines.append(f"input {{\n  name: {_quote(spec.name)}\n  data_type: {spec.data_type}{image_format}\n"
                     f"  dims: [ {', '.join(map(str, spec.dims))} ]\n}}")
    for spec in outputs:
        lines.append(f"output {{\n  name: {_quote(spec.name)}\n  data_type: {spec.data_type}\n"
                     f"  dims: [ {', '.join(map(str, spec.dims))} ]\n  label_filename: {_quote(LABELS_FILE)}\n}}")
    preferred = "".join(f"\n  preferred_batch_size: {size}" for size in preferred_batch_sizes)
    lines.append(f"dynamic_batching {{{preferred}\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}")
    lines.append(f"instance_group {{\n  count: {instances}\n  kind: {TRITON_DEVICES[device]}\n}}")
    for key, value in preprocessing.items():
        lines.append(f"parameters {{\n  key: {_quote(key)}\n  value {{ string_value: {_quote(value)} }}\n}}")
    return "\n".join(lines) + "\n"


def _nvinfer_config(*, spec: RunSpec, precision: str, mode: str, onnx_name: str, engine_name: str | None,
                    input_dims: tuple[int, ...], output_name: str, gie_unique_id: int, operate_on_gie_id: int,
                    batch_size: int, classifier_threshold: float) -> str:
    """A GLib key file with one [property] group (Gst-nvinfer's config file format)."""
    norm = nvinfer_normalisation(spec.mean, spec.std)
    resize = spec.resize
    notes = ["# Written by mlic-edge for Gst-nvinfer. Paths are relative to this file.",
             "# Output: independent sigmoid scores, one per label (multi-label). nvinfer's default classifier",
             "# parser keeps only the highest score above classifier-threshold per output layer, i.e. ONE label.",
             "# output-tensor-meta=1 attaches every score (NvDsInferTensorMeta) so the application can threshold",
             "# each label; or set parse-classifier-func-name + custom-lib-path to a multi-label parser that",
             "# emits one attribute per label over the threshold."]
    if norm.max_relative_error > 0:
        notes += [f"# WARNING: mlic-edge normalises (x/255 - mean[c])/std[c] with std={spec.std}; nvinfer has",
                  "# one net-scale-factor for all channels, so it is 1/(255*mean(std)). Inputs differ from the",
                  f"# exact ones by up to {norm.max_relative_error:.2%} (at most {norm.max_abs_error:.3f} in "
                  "normalised units);",
                  "# run `mlic-edge parity` on the device with the DeepStream output to see what it costs."]
    if resize == "center-crop":
        notes.append("# WARNING: the model was evaluated with a centre crop, which nvinfer cannot do: it stretches.")
    elif resize == "letterbox":
        notes.append("# Note: nvinfer pads the letterbox with black; mlic-edge pads with grey (114).")
    elif resize == OFFICIAL_RESIZE:
        notes.append("# Note: the model expects PIL's antialiased squash (warp-antialias); nvinfer scales with its own "
                     "filter,")
        notes.append("# so scores on frames larger than the input differ slightly from mlic-edge's.")
    properties: list[tuple[str, Any]] = [
        ("gpu-id", 0),
        ("onnx-file", onnx_name),
        *([("model-engine-file", engine_name)] if engine_name else []),
        ("labelfile-path", LABELS_FILE),
        ("batch-size", batch_size),
        ("network-mode", NVINFER_NETWORK_MODES[precision]),
        ("network-type", 1),  # classifier
        ("process-mode", DEEPSTREAM_MODES[mode]),
        ("gie-unique-id", gie_unique_id),
        *([("operate-on-gie-id", operate_on_gie_id)] if mode == "secondary" else []),
        ("model-color-format", 0),  # RGB
        ("infer-dims", ";".join(map(str, input_dims))),
        ("net-scale-factor", _number(norm.net_scale_factor)),
        ("offsets", ";".join(_number(value) for value in norm.offsets)),
        ("maintain-aspect-ratio", 1 if resize == "letterbox" else 0),
        *([("symmetric-padding", 1)] if resize == "letterbox" else []),
        ("output-blob-names", output_name),
        ("classifier-threshold", _number(classifier_threshold)),
        ("classifier-type", spec.model),
        ("output-tensor-meta", 1),
    ]
    body = "\n".join(f"{key}={value}" for key, value in properties)
    return "\n".join(notes) + "\n[property]\n" + body + "\n"


@contextlib.contextmanager
def _staged_folder(final: Path) -> Iterator[Path]:
    """Yield an empty folder beside ``final``; on success it replaces ``final`` (the old one is removed after)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    old = final.parent / f"{staging.name}.old"
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp makes 0700; the server's user must read the repository
        if final.exists():
            os.replace(final, old)
        try:
            os.replace(staging, final)
        except OSError:
            if old.exists():
                os.replace(old, final)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _writing(target: Path, left: str) -> Iterator[None]:
    """A write that fails (a full disk, a read-only folder) as one line naming ``target`` and what was ``left``."""
    try:
        yield
    except OSError as error:
        raise BuildError(f"cannot write {target}: {error.strerror or error}; {left}",
                         hint="free space there or choose another output folder") from None


def _copy_atomic(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid protobuf text-format string here


def _number(value: float) -> str:
    return f"{value:.9g}"
