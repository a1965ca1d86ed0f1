"""Build a TensorRT plan from one precision's ONNX: flags chosen by the API in hand, a manifest beside the engine."""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import mlic_edge
from mlic_edge.console import warn
from mlic_edge.errors import BuildError
from mlic_edge.io import atomic_files, atomic_path, json_text, require_writable, sha256_file
from mlic_edge.runtime.engines.gpu import GpuInfo
from mlic_edge.spec import DEFAULT_PRECISION, PRECISIONS, require_choice
from mlic_edge.runtime.engines.api import HARDWARE_COMPATIBILITY_LEVELS, Capabilities, TensorRT
from mlic_edge.runtime.engines.manifest import (MANIFEST_FORMAT, engine_paths, engine_target_name,
                                                 timing_cache_path)

# Cameras run batch 1, so that is the shape TensorRT tunes for; folder runs batch up to 8.
DEFAULT_BATCH = (1, 1, 8)
# DLA runs one batch size per engine (a profile with min = opt = max); without one, every layer falls back to the GPU.
DEFAULT_DLA_BATCH = (1, 1, 1)
DLA_GPU_LAYERS_LISTED = 20  # names of GPU-fallback layers kept in the manifest
ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class BuildOptions:
    precision: str = DEFAULT_PRECISION
    batch: tuple[int, int, int] | None = None  # (min, opt, max) of the profile; None: DEFAULT_BATCH (DLA: 1,1,1)
    workspace_mb: int | None = None  # None: TensorRT's default (all device memory)
    dla_core: int | None = None  # Jetson DLA core, with GPU fallback for layers DLA cannot run
    version_compatible: bool = False
    hardware_compatibility: str | None = None  # "ampere+" | "same-compute-capability"
    compute_capabilities: tuple[str, ...] = ()  # TensorRT for RTX ahead-of-time targets, e.g. ("8.6", "8.9")
    timing_cache: Path | None = None  # None: engines/<target>/timing.cache
    use_timing_cache: bool = True

    @property
    def batch_range(self) -> tuple[int, int, int]:
        if self.batch is not None:
            return self.batch
        return DEFAULT_DLA_BATCH if self.dla_core is not None else DEFAULT_BATCH

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "batch": list(self.batch_range), "compute_capabilities": list(self.compute_capabilities),
                "timing_cache": str(self.timing_cache) if self.timing_cache else None}


@dataclass(frozen=True)
class BuildPlan:
    """What the builder will set, by name, before anything is built."""

    strongly_typed: bool
    network_flags: list[str]
    builder_flags: list[str]
    device: str  # "gpu" | "dla:<core>"
    hardware_compatibility: str | None  # HardwareCompatibilityLevel member name
    compute_capabilities: list[str]  # ComputeCapability member names ("SM86"); empty: the builder's default
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EngineResult:
    engine_path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    seconds: float
    size_bytes: int
    timing_cache_reused: bool


def plan_build(caps: Capabilities, options: BuildOptions) -> BuildPlan:
    """Flags for this TensorRT and these options (8.6, 10.x, 11.x, RTX); BuildError for asks it cannot honour. Pure."""
    _check_options(options)
    _check_supported(caps, options)
    notes: list[str] = []
    dla = options.dla_core is not None
    # TensorRT 8.6/10.x document DLA with the precision flags; keep those versions weakly typed on DLA.
    strongly_typed = (caps.strongly_typed or not caps.precision_flags) and not (dla and caps.precision_flags)
    network_flags = ["STRONGLY_TYPED"] if strongly_typed and caps.strongly_typed else []
    if caps.explicit_batch_flag and not caps.strongly_typed:  # 8.x needs it; 10.x deprecated and ignores it
        network_flags.append("EXPLICIT_BATCH")
    builder_flags: list[str] = []
    if strongly_typed:
        notes.append("strongly typed: each layer runs in the precision of the ONNX's tensor types")
    else:
        builder_flags += _precision_flags(options.precision, dla)
        notes.append("weakly typed (this TensorRT or DLA needs the precision flags): TensorRT may run layers in "
                     f"{'/'.join(flag.lower() for flag in builder_flags) or 'fp32'} where the ONNX has wider types")
    if dla:
        builder_flags.append("GPU_FALLBACK")
        notes.append(f"DLA core {options.dla_core}, batch {options.batch_range[0]} (DLA runs one batch size); "
                     "layers DLA cannot run fall back to the GPU")
    if options.version_compatible:
        builder_flags.append("VERSION_COMPATIBLE")
    if caps.compute_capability_targets and caps.user_allocation_flag:
        # TensorRT for RTX captures an engine's work in a CUDA graph only when no allocation happens at run time;
        # harmless for mlic-edge's models (no data-dependent shapes), so every RTX engine supports --cuda-graph.
        builder_flags.append("REQUIRE_USER_ALLOCATION")
        notes.append("REQUIRE_USER_ALLOCATION: no TensorRT allocations at run time, so CUDA graph capture works")
    compute_capabilities = [f"SM{cc.replace('.', '')}" for cc in options.compute_capabilities]
    if caps.compute_capability_targets and options.use_timing_cache:
        notes.append("TensorRT for RTX treats the timing cache as a no-op; it is still saved and loaded")
    return BuildPlan(strongly_typed=strongly_typed, network_flags=network_flags, builder_flags=builder_flags,
                     device=f"dla:{options.dla_core}" if dla else "gpu",
                     hardware_compatibility=HARDWARE_COMPATIBILITY_LEVELS.get(
                         options.hardware_compatibility or "", (None, ""))[0],
                     compute_capabilities=compute_capabilities, notes=notes)


def build_engine(trt: TensorRT, onnx_path: Path, run_path: Path, options: BuildOptions, *,
                 labels: Sequence[str] | None = None, preprocessing: dict[str, Any] | None = None,
                 gpu: GpuInfo | None = None, on_progress: ProgressCallback | None = None) -> EngineResult:
    """Parse ``onnx_path``, build ``<run>/engines/<target>/model.<precision>.engine`` and its manifest.

    The plan file is exactly what TensorRT serialized (trtexec and DeepStream load it). The folder is checked
    for writing before any work, and nothing is left under the final names if anything fails.
    """
    plan = plan_build(trt.caps, options)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        maker = "mlic-edge export" if options.precision == "fp32" else (
            f"mlic-edge build --precision {options.precision} --backend onnxruntime")
        raise BuildError(f"{onnx_path} is missing", hint=f"make it first: {maker}")
    onnx_sha256 = sha256_file(onnx_path)
    from mlic_edge.export.metadata import read_metadata  # onnx loads only when building

    metadata = read_metadata(onnx_path)
    _check_onnx_precision(onnx_path, metadata, options.precision)
    target = engine_target_name(trt, gpu, options.compute_capabilities)
    engine_path, manifest_path = engine_paths(Path(run_path), target, options.precision)
    require_writable(engine_path.parent, error=BuildError, what=f"cannot write engines to {engine_path.parent}",
                     hint="fix the folder's permissions or build into another run directory")
    cache_path = options.timing_cache or timing_cache_path(engine_path.parent)
    use_cache = options.use_timing_cache and trt.caps.timing_cache

    started = time.perf_counter()
    with _BuildSession(trt, plan.network_flags) as session:
        _emit(on_progress, "Parsing ONNX", 0, 1)
        session.parse(onnx_path)
        _emit(on_progress, "Parsing ONNX", 1, 1)
        inputs, outputs = session.io_tensors()
        batch = _add_profile(session, inputs, options.batch_range)
        _configure(session, plan, options, gpu)
        dla_layers = session.dla_layers() if options.dla_core is not None else None
        cache, reused = session.attach_timing_cache(cache_path) if use_cache else (None, False)
        session.attach_progress(on_progress)
        serialized = session.build(onnx_path.name)
        cache_bytes = session.serialize_timing_cache(cache) if cache is not None else None
        tensorrt_warnings = list(session.logger.warnings)
    seconds = time.perf_counter() - started

    manifest = {
        "format": MANIFEST_FORMAT,
        "engine": engine_path.name,
        "backend": trt.backend,
        "tensorrt_version": trt.version,
        "target": target,
        "gpu": _gpu_record(gpu, options),
        "compute_capabilities": _target_capabilities(trt, gpu, options),
        "hardware_compatibility": options.hardware_compatibility,
        "version_compatible": options.version_compatible,
        "device": plan.device,
        "dla_layers": dla_layers,
        "precision": options.precision,
        "batch": {"min": batch[0], "opt": batch[1], "max": batch[2]},
        "inputs": inputs,
        "outputs": outputs,
        "onnx": {"file": onnx_path.name, "sha256": onnx_sha256},
        "labels": list(labels) if labels is not None else _json_field(metadata, "labels"),
        "preprocessing": {**preprocessing_from_metadata(metadata), **(preprocessing or {})},
        "strongly_typed": plan.strongly_typed,
        "network_flags": plan.network_flags,
        "builder_flags": plan.builder_flags,
        "notes": plan.notes,
        "tensorrt_warnings": tensorrt_warnings,
        "options": options.as_dict(),
        "build_seconds": round(seconds, 3),
        "mlic_edge_version": mlic_edge.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    # Engine renamed first, manifest last, a stop signal held until both are in place: a manifest never names an
    # engine that is not there, and an engine never sits under another engine's manifest.
    with atomic_files() as staged:
        engine_tmp = staged.path(engine_path)
        engine_tmp.write_bytes(serialized)
        manifest.update(engine_sha256=sha256_file(engine_tmp), engine_bytes=engine_tmp.stat().st_size)
        staged.path(manifest_path).write_text(json_text(manifest))
    if cache_bytes is not None:
        _save_timing_cache(cache_path, cache_bytes)
    return EngineResult(engine_path=engine_path, manifest_path=manifest_path, manifest=manifest, seconds=seconds,
                        size_bytes=manifest["engine_bytes"], timing_cache_reused=reused)


def preprocessing_from_metadata(metadata: dict[str, str]) -> dict[str, Any]:
    img_size = metadata.get("img_size")
    return {"img_size": int(img_size) if img_size and img_size.isdigit() else None,
            "mean": _json_field(metadata, "mean"), "std": _json_field(metadata, "std"),
            "layout": metadata.get("input_layout", "NCHW RGB float32")}


class _BuildSession:
    """Owns one build's logger, builder, network, parser, config, timing cache and progress monitor.

    They are created here and released here, in reverse order, whatever happens.
    """

    def __init__(self, trt: TensorRT, network_flags: Sequence[str]) -> None:
        self.trt = trt
        module = trt.module
        self.logger = recording_logger(module)
        try:
            self.builder = module.Builder(self.logger)
        except (TypeError, RuntimeError) as error:  # pybind raises TypeError when the factory returns nullptr
            raise BuildError(f"{trt.backend} {trt.version} could not create a builder: "
                             f"{self.logger.last_error() or error}",
                             hint="TensorRT needs a CUDA driver and GPU here; TensorRT for RTX builds without one "
                                  "(--backend tensorrt-rtx)") from error
        flags = 0
        for name in network_flags:
            flags |= 1 << int(getattr(module.NetworkDefinitionCreationFlag, name))
        self.network = self.builder.create_network(flags)
        self.parser = module.OnnxParser(self.network, self.logger)
        self.config = self.builder.create_builder_config()
        self.progress: Any = None
        self.timing_cache: Any = None

    def __enter__(self) -> "_BuildSession":
        return self

    def __exit__(self, *exc_info: object) -> None:
        for name in ("progress", "timing_cache", "config", "parser", "network", "builder"):
            setattr(self, name, None)

    def parse(self, onnx_path: Path) -> None:
        if self.parser.parse_from_file(str(onnx_path)):
            return
        errors = [self.parser.get_error(index) for index in range(self.parser.num_errors)]
        if not errors:
            reason = self.logger.last_error() or "no reason given"
            raise BuildError(f"TensorRT could not parse {onnx_path.name}: {reason}",
                             hint="check the file with --backend onnxruntime; re-export it if it is damaged")
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BuildError(f"TensorRT could not parse {onnx_path.name}: {_node_label(errors[0], onnx_path)}"
                         f"{_one_line(errors[0].desc())}{more}",
                         hint=f"{self.trt.backend} {self.trt.version} does not support this node as exported; "
                              "change or re-export the model; the ONNX still runs with --backend onnxruntime")

    def io_tensors(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        network = self.network
        inputs = [_tensor_record(network.get_input(index)) for index in range(network.num_inputs)]
        outputs = [_tensor_record(network.get_output(index)) for index in range(network.num_outputs)]
        return inputs, outputs

    def dla_layers(self) -> dict[str, Any] | None:
        """How many of the network's layers the configured DLA core takes and which fall back to the GPU (asked of
        the builder config before building, as trtexec reports it); None where this TensorRT cannot tell."""
        if not self.trt.caps.dla_layer_query:
            return None
        layers = [self.network.get_layer(index) for index in range(self.network.num_layers)]
        on_gpu = [layer.name for layer in layers if not self.config.can_run_on_DLA(layer)]
        return {"dla": len(layers) - len(on_gpu), "gpu": len(on_gpu), "gpu_layers": on_gpu[:DLA_GPU_LAYERS_LISTED]}

    def attach_timing_cache(self, cache_path: Path) -> tuple[Any, bool]:
        """Load the target folder's timing cache (or start one); returns (cache, whether an old one was loaded)."""
        stored = cache_path.read_bytes() if cache_path.is_file() else b""
        with warnings.catch_warnings():  # TensorRT for RTX deprecates the (no-op) timing cache API
            warnings.simplefilter("ignore", DeprecationWarning)
            cache = self.config.create_timing_cache(stored) if stored else None
            reused = cache is not None
            if cache is None:
                cache = self.config.create_timing_cache(b"")
            if not self.config.set_timing_cache(cache, False):
                cache = self.config.create_timing_cache(b"")  # from another GPU or TensorRT: start afresh
                self.config.set_timing_cache(cache, False)
                reused = False
        self.timing_cache = cache
        return cache, reused

    def serialize_timing_cache(self, cache: Any) -> bytes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return bytes(memoryview(cache.serialize()))

    def attach_progress(self, on_progress: ProgressCallback | None) -> None:
        if on_progress is not None and self.trt.caps.progress_monitor:
            self.progress = _progress_monitor(self.trt.module, on_progress)
            self.config.progress_monitor = self.progress

    def build(self, onnx_name: str) -> bytes:
        serialized = self.builder.build_serialized_network(self.network, self.config)
        if self.progress is not None and self.progress.error is not None:
            raise self.progress.error
        if serialized is None:
            raise BuildError(f"TensorRT could not build {onnx_name}: {self.logger.last_error() or 'no reason given'}",
                             hint="fix the model or the build options named in the error, then build again")
        return bytes(memoryview(serialized))


def _check_options(options: BuildOptions) -> None:
    require_choice("precision", options.precision, PRECISIONS, BuildError)
    low, opt, high = options.batch_range
    if not 1 <= low <= opt <= high:
        raise BuildError(f"batch range {low}/{opt}/{high} is not min <= opt <= max with min >= 1",
                         hint="pass --batch-range MIN,OPT,MAX, e.g. 1,1,8")
    if options.dla_core is not None and low != high:
        raise BuildError(f"DLA runs one batch size per engine, not the range {low}/{opt}/{high}",
                         hint=f"pass --batch-range {opt},{opt},{opt} with --dla-core (a range would put every layer on "
                              "the GPU)")
    if options.workspace_mb is not None and options.workspace_mb <= 0:
        raise BuildError(f"workspace {options.workspace_mb} MB is not positive", hint="pass --workspace 1024, say")
    if options.dla_core is not None and options.dla_core < 0:
        raise BuildError(f"DLA core {options.dla_core} does not exist",
                         hint="Jetson AGX Orin and Xavier have DLA cores 0 and 1")
    if options.hardware_compatibility and options.hardware_compatibility not in HARDWARE_COMPATIBILITY_LEVELS:
        raise BuildError(f"unknown hardware compatibility {options.hardware_compatibility!r}",
                         hint=f"choose one of {', '.join(HARDWARE_COMPATIBILITY_LEVELS)}")
    for capability in options.compute_capabilities:
        major, _, minor = capability.partition(".")
        if not (major.isdigit() and minor.isdigit()):
            raise BuildError(f"compute capability {capability!r} is not MAJOR.MINOR",
                             hint="for example --compute-capability 8.6")


def _check_supported(caps: Capabilities, options: BuildOptions) -> None:
    if options.dla_core is not None:
        if not caps.dla:
            raise BuildError("this TensorRT cannot build for DLA",
                             hint="DLA is on Jetson AGX/NX Orin and Xavier with JetPack's TensorRT; drop --dla-core")
        if options.precision == "fp32":
            raise BuildError("DLA runs fp16 or int8 only, not fp32",
                             hint="use --precision fp16 or int8 with --dla-core")
        if options.version_compatible or options.hardware_compatibility:
            raise BuildError("DLA engines cannot be version- or hardware-compatible",
                             hint="drop --version-compatible / --hardware-compatibility, or --dla-core")
    if options.workspace_mb is not None and not caps.memory_pool_limit:
        raise BuildError("this TensorRT has no memory pool limits (TensorRT 8.4 and later have them)",
                         hint="drop --workspace")
    if options.version_compatible and not caps.version_compatible:
        raise BuildError("this TensorRT cannot build version-compatible engines",
                         hint="drop --version-compatible (TensorRT 8.6 and later have it; TensorRT for RTX does not)")
    level = options.hardware_compatibility
    if level and not caps.hardware_compatibility:
        hint = ("TensorRT for RTX targets compute capabilities instead: --compute-capability 8.6"
                if caps.compute_capability_targets
                else "drop --hardware-compatibility (TensorRT 8.6 and later have it)")
        raise BuildError("this TensorRT cannot build hardware-compatible engines", hint=hint)
    if level and level not in caps.hardware_compatibility_levels:
        usable = ", ".join(caps.hardware_compatibility_levels)
        raise BuildError(f"--hardware-compatibility {level} needs TensorRT {HARDWARE_COMPATIBILITY_LEVELS[level][1]} "
                         "or later; this TensorRT does not have it", hint=f"usable here: {usable}")
    if options.compute_capabilities and not caps.compute_capability_targets:
        raise BuildError("only TensorRT for RTX builds for named compute capabilities",
                         hint="build on the GPU that will run the engine, or use --hardware-compatibility ampere+")


def _precision_flags(precision: str, dla: bool) -> list[str]:
    if precision == "fp16":
        return ["FP16"]
    if precision == "int8":
        # Q/DQ layers run int8; on DLA the unquantized rest must be fp16 (DLA has no fp32), on a GPU it stays fp32.
        return ["INT8", "FP16"] if dla else ["INT8"]
    return []


def _configure(session: _BuildSession, plan: BuildPlan, options: BuildOptions, gpu: GpuInfo | None) -> None:
    module, config, caps = session.trt.module, session.config, session.trt.caps
    for name in plan.builder_flags:
        config.set_flag(getattr(module.BuilderFlag, name))
    if options.dla_core is not None:
        available = session.builder.num_DLA_cores
        if options.dla_core >= available:
            raise BuildError(f"DLA core {options.dla_core} asked for, this device has {available}",
                             hint="pick a core below that, or drop --dla-core")
        config.default_device_type = module.DeviceType.DLA
        config.DLA_core = options.dla_core
    if options.workspace_mb is not None:
        config.set_memory_pool_limit(module.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if plan.hardware_compatibility:
        config.hardware_compatibility_level = getattr(module.HardwareCompatibilityLevel, plan.hardware_compatibility)
    if caps.compute_capability_targets:
        _set_compute_capabilities(module, config, plan.compute_capabilities or (["CURRENT"] if gpu else []))


def _set_compute_capabilities(module: Any, config: Any, names: list[str]) -> None:
    known = [name for name in dir(module.ComputeCapability) if name.startswith("SM")]
    unknown = [name for name in names if name != "CURRENT" and name not in known]
    if unknown:
        raise BuildError(f"this TensorRT for RTX cannot target {', '.join(unknown).lower()}",
                         hint=f"choose among {', '.join(name.lower() for name in known)}")
    if names:
        config.num_compute_capabilities = len(names)
        for index, name in enumerate(names):
            config.set_compute_capability(getattr(module.ComputeCapability, name), index)


def _add_profile(session: _BuildSession, inputs: list[dict[str, Any]],
                 batch: tuple[int, int, int]) -> tuple[int, int, int]:
    """One optimization profile over the batch range; a fixed-batch ONNX keeps its batch."""
    profile = session.builder.create_optimization_profile()
    used = batch
    dynamic = False
    for tensor in inputs:
        shape = tensor["shape"]
        if any(size < 0 for size in shape[1:]):
            raise BuildError(f"input {tensor['name']!r} has a dynamic dimension besides the batch: {shape}",
                             hint="export the model with a fixed image size")
        if shape and shape[0] < 0:
            dynamic = True
            profile.set_shape(tensor["name"], *[(size, *shape[1:]) for size in batch])
        elif shape:
            used = (shape[0],) * 3
    if dynamic:
        session.config.add_optimization_profile(profile)
    return used


def _check_onnx_precision(onnx_path: Path, metadata: dict[str, str], precision: str) -> None:
    declared = metadata.get("precision")
    if declared and declared != precision:
        raise BuildError(f"{onnx_path.name} is the {declared} model, not {precision}",
                         hint=f"build with --precision {declared}, or make the {precision} ONNX first")


def _save_timing_cache(cache_path: Path, cache_bytes: bytes) -> None:
    """The engine is built and written already: a cache that cannot be saved only costs the next build time."""
    try:
        with atomic_path(cache_path) as cache_tmp:
            cache_tmp.write_bytes(cache_bytes)
    except OSError as error:
        warn(f"could not save the timing cache {cache_path}: {error.strerror or error}")


def recording_logger(module: Any) -> Any:
    """A TensorRT logger that keeps the last warnings and errors, so a failure can say what TensorRT said."""
    severity = module.ILogger.Severity

    class RecordingLogger(module.ILogger):
        def __init__(self) -> None:
            module.ILogger.__init__(self)
            self.errors: deque[str] = deque(maxlen=20)
            self.warnings: deque[str] = deque(maxlen=20)

        def log(self, level: Any, message: str) -> None:
            if int(level) <= int(severity.ERROR):
                self.errors.append(_one_line(message))
            elif int(level) <= int(severity.WARNING):
                self.warnings.append(_one_line(message))

        def last_error(self) -> str | None:
            return self.errors[-1] if self.errors else None

    return RecordingLogger()


def _progress_monitor(module: Any, on_progress: ProgressCallback) -> Any:
    """An IProgressMonitor forwarding (phase, steps done, steps in phase); a failing callback cancels the build."""

    class ProgressMonitor(module.IProgressMonitor):
        def __init__(self) -> None:
            module.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}
            self.error: BaseException | None = None
            self.lock = threading.Lock()  # TensorRT may report from several builder threads

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.steps[phase_name] = num_steps
            self._forward(phase_name, 0, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            self._forward(phase_name, step + 1, self.steps.get(phase_name, step + 1))
            return self.error is None

        def phase_finish(self, phase_name: str) -> None:
            total = self.steps.pop(phase_name, 0)
            self._forward(phase_name, total, total)

        def _forward(self, phase: str, done: int, total: int) -> None:
            with self.lock:
                if self.error is not None:
                    return
                try:
                    on_progress(phase, done, total)
                except Exception as error:  # TensorRT calls this from C++: keep the error, cancel, re-raise after
                    self.error = error

    return ProgressMonitor()


def _node_label(error: Any, onnx_path: Path) -> str:
    """"node 'Conv_12' (Conv): " from the parser error (10.x names it; 8.6 gives an index into the graph)."""
    name = operator = ""
    if hasattr(error, "node_name"):
        name, operator = error.node_name() or "", error.node_operator() or ""
    if not name and hasattr(error, "node") and error.node() >= 0:
        import onnx

        nodes = onnx.load(str(onnx_path), load_external_data=False).graph.node
        if error.node() < len(nodes):
            node = nodes[error.node()]
            name, operator = node.name or f"#{error.node()}", node.op_type
    if not name:
        return ""
    return f"node {name!r} ({operator}): " if operator else f"node {name!r}: "


def _tensor_record(tensor: Any) -> dict[str, Any]:
    return {"name": tensor.name, "shape": [int(size) for size in tensor.shape],
            "dtype": str(tensor.dtype).rsplit(".", 1)[-1].lower()}


def _gpu_record(gpu: GpuInfo | None, options: BuildOptions) -> dict[str, Any] | None:
    if gpu is None or options.compute_capabilities:
        return None
    return {"name": gpu.name, "compute_capability": gpu.compute_capability, "memory_mb": gpu.memory_mb,
            "source": gpu.source}


def _target_capabilities(trt: TensorRT, gpu: GpuInfo | None, options: BuildOptions) -> list[str] | None:
    """Compute capabilities a TensorRT for RTX engine was built for; None: every one its builder supports."""
    if not trt.caps.compute_capability_targets:
        return None
    if options.compute_capabilities:
        return list(options.compute_capabilities)
    return [gpu.compute_capability] if gpu else None


def _json_field(metadata: dict[str, str], key: str) -> Any:
    try:
        return json.loads(metadata[key]) if key in metadata else None
    except json.JSONDecodeError:
        return None


def _emit(on_progress: ProgressCallback | None, phase: str, done: int, total: int) -> None:
    if on_progress is not None:
        on_progress(phase, done, total)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())
