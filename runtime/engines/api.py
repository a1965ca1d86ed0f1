"""The TensorRT in hand: which module, which version, and what its API can do (detected from the API present)."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from mlic_edge.errors import BackendError

# TensorRT for RTX: the meta package `tensorrt-rtx-cu13` gives `tensorrt_rtx`; the bindings wheel alone gives the other.
_MODULE_NAMES = {"tensorrt": ("tensorrt",), "tensorrt-rtx": ("tensorrt_rtx", "tensorrt_rtx_bindings")}
# The TensorRTs this layer loads: the backend registry's engine backends (runtime/inference/backends/registry.py, a
# layer up; tests/test_backend_registry.py checks they are the same).
TENSORRT_BACKENDS = tuple(_MODULE_NAMES)
_INSTALL_HINTS = {
    "tensorrt": "on Jetson use JetPack's python3-libnvinfer and a venv made with --system-site-packages; "
                "on x86 pip install tensorrt, whose wheels come from NVIDIA's index pypi.nvidia.com",
    "tensorrt-rtx": "pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings",
}


# ``--hardware-compatibility`` levels by the HardwareCompatibilityLevel member each needs, with the TensorRT that
# introduced it (for messages on versions that lack it).
HARDWARE_COMPATIBILITY_LEVELS = {"ampere+": ("AMPERE_PLUS", "8.6"),
                                 "same-compute-capability": ("SAME_COMPUTE_CAPABILITY", "10.9")}


@dataclass(frozen=True)
class Capabilities:
    """What the builder and the runtime may ask of this TensorRT; every field comes from an attribute that exists or
    not in the module (``tests/api_surfaces/`` records the real surface of each supported version)."""

    strongly_typed: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED (10.0+, RTX)
    precision_flags: bool  # BuilderFlag.FP16 / INT8 (8.x, 10.x; gone in 11.x and RTX)
    explicit_batch_flag: bool  # NetworkDefinitionCreationFlag.EXPLICIT_BATCH (needed by 8.x, ignored by 10.x)
    memory_pool_limit: bool  # IBuilderConfig.set_memory_pool_limit (8.4+)
    timing_cache: bool  # IBuilderConfig.create_timing_cache / set_timing_cache
    progress_monitor: bool  # IProgressMonitor + IBuilderConfig.progress_monitor (10.0+)
    version_compatible: bool  # BuilderFlag.VERSION_COMPATIBLE, usable (8.6+; not RTX: it has no lean runtime)
    hardware_compatibility_levels: tuple[str, ...]  # --hardware-compatibility levels whose enum member exists (not RTX)
    dla: bool  # IBuilderConfig.DLA_core + DeviceType.DLA + BuilderFlag.GPU_FALLBACK (not RTX)
    dla_layer_query: bool  # IBuilderConfig.can_run_on_DLA: which layers DLA takes, asked before building
    named_tensors: bool  # ICudaEngine.num_io_tensors / get_tensor_name + execute_async_v3 (8.5+)
    compute_capability_targets: bool  # IBuilderConfig.set_compute_capability: TensorRT for RTX ahead-of-time targets
    engine_host_code: bool  # Runtime.engine_host_code_allowed: needed to load version-compatible plans (8.6+)
    runtime_dla_core: bool  # Runtime.DLA_core: the core a DLA engine is deserialized onto
    user_allocation_flag: bool  # BuilderFlag.REQUIRE_USER_ALLOCATION: TensorRT for RTX needs it for graph capture
    stream_capturable_query: bool  # IExecutionContext.is_stream_capturable (RTX, 10.x+)

    @property
    def hardware_compatibility(self) -> bool:
        return bool(self.hardware_compatibility_levels)


def capabilities(trt_module: Any) -> Capabilities:
    """Detect what ``trt_module`` (a TensorRT module, or any object shaped like one) supports. Pure."""
    builder_flag = getattr(trt_module, "BuilderFlag", None)
    network_flag = getattr(trt_module, "NetworkDefinitionCreationFlag", None)
    config = getattr(trt_module, "IBuilderConfig", None)
    engine = getattr(trt_module, "ICudaEngine", None)
    context = getattr(trt_module, "IExecutionContext", None)
    runtime = getattr(trt_module, "Runtime", None)
    device_type = getattr(trt_module, "DeviceType", None)
    levels = getattr(trt_module, "HardwareCompatibilityLevel", None)
    rtx = _has(config, "set_compute_capability") and _has(trt_module, "ComputeCapability")
    # TensorRT for RTX keeps the DLA, hardware-compatibility and version-compatibility names of the API it forked
    # from, but rejects them at build time (checked with 1.7.1); only the compute-capability API tells it apart.
    hardware_levels = () if rtx or not _has(config, "hardware_compatibility_level") else tuple(
        level for level, (member, _) in HARDWARE_COMPATIBILITY_LEVELS.items() if _has(levels, member))
    dla = _has(config, "DLA_core") and _has(device_type, "DLA") and _has(builder_flag, "GPU_FALLBACK") and not rtx
    return Capabilities(
        strongly_typed=_has(network_flag, "STRONGLY_TYPED"),
        precision_flags=_has(builder_flag, "FP16") and _has(builder_flag, "INT8"),
        explicit_batch_flag=_has(network_flag, "EXPLICIT_BATCH"),
        memory_pool_limit=_has(config, "set_memory_pool_limit") and _has(trt_module, "MemoryPoolType"),
        timing_cache=_has(config, "create_timing_cache") and _has(config, "set_timing_cache"),
        progress_monitor=_has(trt_module, "IProgressMonitor") and _has(config, "progress_monitor"),
        version_compatible=_has(builder_flag, "VERSION_COMPATIBLE") and not rtx,
        hardware_compatibility_levels=hardware_levels,
        dla=dla,
        dla_layer_query=dla and _has(config, "can_run_on_DLA"),
        named_tensors=(_has(engine, "num_io_tensors") and _has(engine, "get_tensor_name")
                       and _has(context, "execute_async_v3")),
        compute_capability_targets=rtx,
        engine_host_code=_has(runtime, "engine_host_code_allowed"),
        runtime_dla_core=_has(runtime, "DLA_core"),
        user_allocation_flag=_has(builder_flag, "REQUIRE_USER_ALLOCATION"),
        stream_capturable_query=_has(context, "is_stream_capturable"),
    )


@dataclass(frozen=True)
class TensorRT:
    """An imported TensorRT module with its backend name, version and capabilities."""

    module: Any
    backend: str  # "tensorrt" | "tensorrt-rtx"
    version: str
    caps: Capabilities

    @classmethod
    def from_module(cls, module: Any, backend: str) -> "TensorRT":
        return cls(module=module, backend=backend, version=str(getattr(module, "__version__", "unknown")),
                   caps=capabilities(module))


def load_tensorrt(backend: str) -> TensorRT:
    """Import the TensorRT of ``backend``; a missing one is a BackendError saying how to get it (no fallback)."""
    if backend not in _MODULE_NAMES:
        raise BackendError(f"unknown TensorRT backend {backend!r}",
                           hint=f"choose one of {', '.join(TENSORRT_BACKENDS)}")
    names = _MODULE_NAMES[backend]
    for name in names:
        if importlib.util.find_spec(name) is None:
            continue
        try:
            module: ModuleType = importlib.import_module(name)
        except ImportError as error:  # installed, but its shared libraries do not load
            raise BackendError(f"the {name} Python package is installed but does not load: {error}",
                               hint=f"{_INSTALL_HINTS[backend]}; {_auto_alternative()}") from error
        return TensorRT.from_module(module, backend)
    raise BackendError(f"backend {backend!r} needs the {' or '.join(names)} Python package, which is not installed",
                       hint=f"{_INSTALL_HINTS[backend]}; {_auto_alternative()}")


def available_tensorrt_backends() -> list[str]:
    """TensorRT backends whose Python package is installed (found without importing it)."""
    return [backend for backend, names in _MODULE_NAMES.items()
            if any(importlib.util.find_spec(name) is not None for name in names)]


def _auto_alternative() -> str:
    """What to run instead, named so the user chooses it knowingly (``auto`` says what it picks when it runs)."""
    return "or run the ONNX with --backend onnxruntime (--backend auto picks what can run here and says which)"


def _has(owner: Any, name: str) -> bool:
    return owner is not None and hasattr(owner, name)
