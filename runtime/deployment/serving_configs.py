"""Fleet serving configs for one run: a Triton Inference Server model repository and a DeepStream nvinfer config.

Neither server runs mlic-edge's preprocessing, so both configs carry it: Triton as model parameters a client can
read back, DeepStream as nvinfer's own normalisation (one scale for all channels: see ``nvinfer_normalisation``).

Both batch across streams as ``mlic-edge run`` does with several sources (``streams``, ``batch_timeout_ms``):
Triton's dynamic batcher (``max_batch_size``, ``preferred_batch_size``, ``max_queue_delay_microseconds``) and
DeepStream's nvstreammux with nvinfer's ``batch-size`` (written as deepstream-app groups beside the nvinfer config).
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
from mlic_edge.spec import (DEFAULT_PRECISION, DEFAULT_THRESHOLD, FLOAT_INPUT, OFFICIAL_RESIZE, PRECISIONS, RunSpec,
                            rebuild_command, require_at_least, require_choice)
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
TRITON_MAX_BATCH = 8  # max_batch_size unless the streams need more
TRITON_PREFERRED = (4, 8)  # preferred batch sizes for one stream (many independent clients)
# nvstreammux's batched-push-timeout for --batch-timeout 0, in microseconds: 0 there pushes a batch as soon as its
# first frame is in (rarely more than one stream's), and its default -1 waits for every stream (one stalled camera
# stalls all). 40000 is what DeepStream's sample apps set: a frame interval at 25 fps.
MUXER_PUSH_TIMEOUT_US = 40_000
MUXER_SIZE = (1920, 1080)  # the muxer's output for a secondary classifier: the detector's frames, DeepStream samples'


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


def write_triton_repository(run: RunDir, out: Path, *, precision: str = DEFAULT_PRECISION, platform: str = "onnx",
                            model_name: str | None = None, max_batch_size: int | None = None,
                            preferred_batch_sizes: Sequence[int] | None = None, streams: int = 1,
                            batch_timeout_ms: float = 0.0, instances: int = 1, device: str = "gpu",
                            engine: Path | None = None) -> Path:
    """Write ``out/<name>/`` (config.pbtxt, 1/model.onnx or 1/model.plan, labels.txt) and return that folder.

    ``platform="tensorrt"`` serves the engine of this precision from ``<run>/engines`` (``engine`` picks one when
    several targets have it) and takes max_batch_size from its optimization profile. ``streams`` clients sending a
    frame each make the preferred batch (default ``preferred_batch_sizes``) and the least max_batch_size (default
    ``TRITON_MAX_BATCH`` or ``streams``); ``batch_timeout_ms`` is how long a request waits for others (0: the
    batcher takes what queued while the model was busy). The folder is built beside its final name and renamed
    into place; a model folder of the same name is replaced.
    """
    require_choice("precision", precision, PRECISIONS, BuildError)
    require_choice("platform", platform, TRITON_PLATFORMS, BuildError)
    require_choice("instance kind", device, TRITON_DEVICES, BuildError)
    if device == "cpu" and platform == "tensorrt":
        raise BuildError("a TensorRT plan runs on a GPU only",
                         hint="use --instance-kind gpu, or --platform onnx for CPU")
    if engine is not None and platform != "tensorrt":
        raise BuildError("an engine is served with platform tensorrt only", hint="add --platform tensorrt")
    if (max_batch_size is not None and max_batch_size < 1) or instances < 1:
        raise BuildError(f"max_batch_size {max_batch_size} and instances {instances} must be at least 1",
                         hint="pass positive numbers")
    _check_stream_batching(streams, batch_timeout_ms)
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
        max_batch_size = _require_batch_in_profile(engine_path, manifest, streams, "--streams", run.path)[1]
        model_files = [engine_path]
    else:
        inputs, outputs = _onnx_tensors(onnx_path)
        max_batch_size = _onnx_max_batch(max_batch_size, streams)
        model_files = [onnx_path, *_external_data_files(onnx_path)]
    _check_outputs(outputs, labels, onnx_path)
    out = Path(out)
    refuse_output_onto_inputs({"OUT": out / name}, [run.path, *model_files])  # out/name is replaced whole
    require_writable(out, error=BuildError, hint="fix the folder's permissions or pick another output folder")
    if preferred_batch_sizes is None:
        preferred_batch_sizes = (streams,) if streams > 1 else TRITON_PREFERRED
    config = _triton_config(name=name, platform=platform, max_batch_size=max_batch_size,
                            preferred_batch_sizes=sorted({size for size in preferred_batch_sizes
                                                          if 1 <= size <= max_batch_size}),
                            max_queue_delay_us=round(batch_timeout_ms * 1000), instances=instances, device=device,
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


def write_deepstream_config(run: RunDir, out: Path, *, precision: str = DEFAULT_PRECISION, mode: str = "secondary",
                            engine: Path | None = None, gie_unique_id: int = 2, operate_on_gie_id: int = 1,
                            batch_size: int | None = None, streams: int = 1, batch_timeout_ms: float = 0.0,
                            classifier_threshold: float = DEFAULT_THRESHOLD) -> Path:
    """Write ``out/config_infer_<mode>.txt`` for Gst-nvinfer, with ``labels.txt`` and the model files beside it,
    and ``out/deepstream_app_<mode>.txt``: the deepstream-app groups (nvstreammux, the GIE) that run it on
    ``streams`` sources. Returns the nvinfer config.

    nvinfer's batch-size is ``streams`` (a primary classifier's always is: one frame from each stream; a secondary
    one's counts objects, ``batch_size`` where given). The ONNX of ``precision`` is always copied (nvinfer builds an
    engine from it where none fits); ``engine``, a TensorRT plan built for the device's TensorRT, is copied and named
    as model-engine-file, and refused where its profile cannot take the batch. Paths in the configs are relative to
    them, as nvinfer and deepstream-app resolve them. The configs are written last, so they never name a missing
    file.
    """
    require_choice("precision", precision, PRECISIONS, BuildError)
    require_choice("mode", mode, DEEPSTREAM_MODES, BuildError)
    if run.spec().input_format != FLOAT_INPUT:
        raise BuildError("this run's model takes uint8 frames (exported with --uint8-input); nvinfer feeds float "
                         "NCHW tensors it normalises itself", hint="export without --uint8-input for DeepStream")
    if (batch_size is not None and batch_size < 1) or gie_unique_id < 1 or (
            mode == "secondary" and operate_on_gie_id < 1):
        raise BuildError("batch_size, gie_unique_id and operate_on_gie_id must be at least 1",
                         hint="pass positive numbers")
    _check_stream_batching(streams, batch_timeout_ms)
    batch_size = _nvinfer_batch_size(mode, batch_size, streams)
    if not 0.0 <= classifier_threshold <= 1.0:
        raise BuildError(f"classifier threshold {classifier_threshold} is not a probability",
                         hint="pass a value between 0 and 1")
    spec = run.spec()
    labels = _checked_labels(spec.labels)
    onnx_path = _require_onnx(run, precision)
    inputs, outputs = _onnx_tensors(onnx_path)
    _check_outputs(outputs, labels, onnx_path)
    if engine is not None:
        engine = _checked_deepstream_engine(Path(engine), precision, batch_size, run.path)
    norm = nvinfer_normalisation(spec.mean, spec.std)
    if norm.max_relative_error > 0:
        warn(f"nvinfer has one scale for all channels: its inputs differ from mlic-edge's per-channel std "
             f"normalisation by up to {norm.max_relative_error:.2%} (see the note in the config)")
    out = Path(out)
    config_path = out / f"config_infer_{mode}.txt"
    app_path = out / deepstream_app_name(mode)
    refuse_output_onto_inputs({"OUT": config_path}, [run.path])
    require_writable(out, error=BuildError, hint="fix the folder's permissions or pick another output folder")
    onnx_name = f"model.{precision}.onnx"
    engine_name = f"model.{precision}.engine" if engine is not None else None
    text = _nvinfer_config(spec=spec, precision=precision, mode=mode, onnx_name=onnx_name, engine_name=engine_name,
                           input_dims=inputs[0].dims, output_name=outputs[0].name, gie_unique_id=gie_unique_id,
                           operate_on_gie_id=operate_on_gie_id, batch_size=batch_size,
                           classifier_threshold=classifier_threshold)
    app_text = _deepstream_app_groups(
        mode=mode, config_name=config_path.name, streams=streams, batch_size=batch_size,
        batch_timeout_ms=batch_timeout_ms, gie_unique_id=gie_unique_id,
        operate_on_gie_id=operate_on_gie_id, muxer_size=_muxer_size(mode, inputs[0].dims),
        letterbox=spec.resize == "letterbox")
    with _writing(out, f"{config_path.name} and {app_path.name} were not written"):
        _copy_atomic(onnx_path, out / onnx_name)
        for extra in _external_data_files(onnx_path):
            _copy_atomic(extra, out / extra.name)
        if engine is not None:
            _copy_atomic(engine, out / engine_name)
        with atomic_path(out / LABELS_FILE) as tmp:
            tmp.write_text(";".join(labels) + "\n")  # nvinfer: one line per output layer, classes split by ';'
        with atomic_path(config_path) as tmp:
            tmp.write_text(text)
        with atomic_path(app_path) as tmp:
            tmp.write_text(app_text)
    return config_path


def deepstream_app_name(mode: str) -> str:
    """The file of deepstream-app groups written beside ``config_infer_<mode>.txt``."""
    return f"deepstream_app_{mode}.txt"


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


def _checked_deepstream_engine(engine: Path, precision: str, batch_size: int, run_path: Path) -> Path:
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
    _require_batch_in_profile(engine, manifest, batch_size, "batch size (--streams, --batch-size)", run_path)
    _warn_foreign_tensorrt(engine, manifest, "DeepStream's nvinfer")
    return engine


def _require_batch_in_profile(engine: Path, manifest: dict[str, Any], batch: int, what: str,
                              run_path: Path) -> tuple[int, int]:
    """The engine's batch range (its optimization profile, from the manifest), refused where ``batch`` is outside."""
    record = manifest.get("batch", {})
    smallest, largest = int(record.get("min", 1)), int(record.get("max", batch))
    if not smallest <= batch <= largest:
        build = rebuild_command(run_path, manifest.get("precision", "fp32"), manifest.get("backend", "tensorrt"))
        raise BuildError(f"{what} {batch} is outside {engine.name}'s batch range {smallest}..{largest} (its "
                         "optimization profile)",
                         hint=f"build an engine that takes it: {build} --batch-range 1,{batch},{max(batch, largest)}"
                              f"; or serve batches of {smallest} to {largest}")
    return smallest, largest


def _onnx_max_batch(max_batch_size: int | None, streams: int) -> int:
    """Triton's max_batch_size for an ONNX (any batch): as given, else room for a frame from every stream."""
    if max_batch_size is None:
        return max(TRITON_MAX_BATCH, streams)
    if max_batch_size < streams:
        raise BuildError(f"--max-batch {max_batch_size} is below --streams {streams}: a frame from each stream would "
                         "not fit one batch", hint=f"pass --max-batch {streams} or more, or leave --max-batch out")
    return max_batch_size


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


def _check_stream_batching(streams: int, batch_timeout_ms: float) -> None:
    require_at_least("--streams", streams, 1, hint="the number of sources served, for example --streams 4")
    require_at_least("--batch-timeout", batch_timeout_ms, 0, hint="milliseconds, for example --batch-timeout 5")


def _nvinfer_batch_size(mode: str, batch_size: int | None, streams: int) -> int:
    """nvinfer's batch-size: ``streams`` frames for a primary classifier (what the muxer batches), for a secondary
    one the objects per batch (``batch_size``, default ``streams``)."""
    if mode == "primary" and batch_size not in (None, streams):
        raise BuildError(f"--batch-size {batch_size} differs from --streams {streams}: a primary classifier's batch is "
                         "the muxer's, one frame from each stream",
                         hint=f"leave --batch-size out, or pass --streams {batch_size}")
    return streams if batch_size is None else batch_size


def _muxer_size(mode: str, input_dims: tuple[int, ...]) -> tuple[int, int]:
    """nvstreammux's output width and height: a primary classifier's input (frames are scaled once, in the muxer,
    as mlic-edge scales them); for a secondary one, the detector's frames (DeepStream samples' size)."""
    return (input_dims[2], input_dims[1]) if mode == "primary" else MUXER_SIZE


def _deepstream_app_groups(*, mode: str, config_name: str, streams: int, batch_size: int, batch_timeout_ms: float,
                           gie_unique_id: int, operate_on_gie_id: int, muxer_size: tuple[int, int],
                           letterbox: bool) -> str:
    """deepstream-app's [streammux] and [primary-gie] / [secondary-gie0] groups for ``config_name``, with how to
    run them (deepstream-app, or the same properties on gst-launch-1.0)."""
    width, height = muxer_size
    push_timeout_us = round(batch_timeout_ms * 1000) or MUXER_PUSH_TIMEOUT_US
    muxer: list[tuple[str, Any]] = [("gpu-id", 0), ("batch-size", streams), ("batched-push-timeout", push_timeout_us),
                                    ("width", width), ("height", height), ("enable-padding", int(letterbox))]
    gie_group = "primary-gie" if mode == "primary" else "secondary-gie0"
    gie: list[tuple[str, Any]] = [("enable", 1), ("gpu-id", 0), ("batch-size", batch_size),
                                  ("gie-unique-id", gie_unique_id),
                                  *([("operate-on-gie-id", operate_on_gie_id)] if mode == "secondary" else []),
                                  ("config-file", config_name)]
    size_note = ("the model's input: frames are scaled once, in the muxer (use your cameras' size instead where "
                 "other elements need whole frames)" if mode == "primary" else
                 "the frames the detector sees (DeepStream samples' 1920x1080): set your detector's")
    detector = "" if mode == "primary" else "nvinfer config-file-path=DETECTOR.txt ! "
    sources = " ".join(f"uridecodebin uri=URI{index} ! m.sink_{index}" for index in range(min(streams, 2)))
    notes = [f"# Written by mlic-edge: the deepstream-app groups that run {config_name} on {streams} stream(s).",
             f"# Add one [sourceN] group per stream ({streams}), a [sink0]"
             + (", the detector's [primary-gie]" if mode == "secondary" else "") + ", then: deepstream-app -c FILE.",
             f"# streammux: batch-size = the streams; width/height = {size_note}.",
             f"# batched-push-timeout ({push_timeout_us} us): how long the muxer waits after a batch's first frame "
             "for the other streams"
             + ("" if batch_timeout_ms else " (--batch-timeout 0, run's no wait, has no muxer equivalent: 0 pushes a "
                "batch at its first frame and -1 waits for every stream, so DeepStream samples' 40 ms)") + ".",
             "# The same with gst-launch-1.0: nvstreammux name=m " + " ".join(f"{key}={value}" for key, value in muxer)
             + f" ! {detector}nvinfer config-file-path={config_name} batch-size={batch_size} ! fakesink "
             + sources + (" ..." if streams > 2 else "")]
    groups = {"streammux": muxer, gie_group: gie}
    body = "\n".join(f"[{group}]\n" + "".join(f"{key}={value}\n" for key, value in items)
                     for group, items in groups.items())
    return "\n".join(notes) + "\n" + body


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
