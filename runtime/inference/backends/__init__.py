"""Backends by name; ``auto`` picks the first that can run here and says which (never a silent fallback)."""

from __future__ import annotations

from pathlib import Path

from mlic_edge.errors import BackendError, MlicError
from mlic_edge.rundir import RunDir
from mlic_edge.runtime.inference.backends.base import Backend, BackendInfo
from mlic_edge.spec import BACKENDS, ENGINE_BACKENDS, PRECISIONS, rebuild_command, require_choice



def resolve_auto(device: str = "auto", run: RunDir | None = None, precision: str = "fp32") -> tuple[str, str]:
    """(backend, device) that ``--backend auto`` would use on this machine: a TensorRT engine of the run that fits
    this TensorRT, GPU and ONNX (with pycuda or cuda-python to feed it), else ONNX Runtime on CUDA, else on the CPU.
    An engine that is there but does not fit is named with the reason, so the choice is never silent."""
    from mlic_edge.runtime.inference.backends.onnxruntime_backend import available_devices

    if run is not None and device in ("auto", "cuda"):
        engine_backend = _usable_engine_backend(run, precision)
        if engine_backend is not None:
            return engine_backend, "cuda"
    if device in ("auto", "cuda") and "cuda" in available_devices():
        return "onnxruntime", "cuda"
    if device in ("auto", "cpu"):
        return "onnxruntime", "cpu"
    raise BackendError(f"no backend here can run on {device!r}", hint="use --device cpu")


def _usable_engine_backend(run: RunDir, precision: str) -> str | None:
    import importlib.util

    from mlic_edge.console import info
    from mlic_edge.runtime.engines.api import available_tensorrt_backends
    from mlic_edge.runtime.engines.manifest import find_engines

    if not any(path.name == f"model.{precision}.json" for path in find_engines(run.path)):
        return None
    if not any(importlib.util.find_spec(module) for module in ("pycuda", "cuda")):
        info(f"--backend auto: the run has a {precision} engine, but neither pycuda nor cuda-python is installed "
             "to run it")
        return None
    for name in available_tensorrt_backends():
        try:
            find_engine(run, name, precision)
            return name
        except MlicError as error:
            if "engine in" not in error.message:  # an engine is there but does not fit: say why it is not used
                info(f"--backend auto: not using the {name} engine: {error.message}")
    return None


def find_engine(run: RunDir, backend: str, precision: str) -> Path:
    """The engine of ``backend`` and ``precision`` in the run that fits this TensorRT, GPU and ONNX, or a one-line
    refusal saying why and how to rebuild (TensorRT missing: how to get it, and what ``auto`` would use)."""
    from mlic_edge.runtime.engines.gpu import detect_gpu
    from mlic_edge.runtime.engines.api import load_tensorrt
    from mlic_edge.runtime.engines.manifest import check_manifest, find_engines, read_manifest

    trt = load_tensorrt(backend)
    rebuild = rebuild_command(run.path, precision, backend)
    candidates = [path for path in find_engines(run.path) if path.name == f"model.{precision}.json"]
    manifests = [(path, read_manifest(path)) for path in candidates]
    manifests = [(path, manifest) for path, manifest in manifests if manifest.get("backend") == backend]
    if not manifests:
        raise BackendError(f"no {backend} {precision} engine in {run.path / 'engines'}", hint=f"build it: {rebuild}")
    gpu = detect_gpu()
    refusals = []
    for path, manifest in manifests:
        try:
            check_manifest(manifest, trt=trt, gpu=gpu, onnx_path=run.onnx(precision), rebuild_command=rebuild,
                           engine_path=path.with_suffix(".engine"))
            return path.with_suffix(".engine")
        except MlicError as error:
            refusals.append(error)
    raise refusals[0]


def create_backend(name: str, run: RunDir, precision: str = "fp32", device: str = "auto",
                   cuda_graph: bool = False) -> Backend:
    """Open backend ``name`` for the run's ``precision``; ``cuda_graph`` (TensorRT only) replays a captured CUDA
    graph per batch size instead of enqueueing copies and execution each time."""
    require_choice("backend", name, BACKENDS, BackendError)
    require_choice("precision", precision, PRECISIONS, BackendError)
    if name == "auto":
        name, device = resolve_auto(device, run, precision)
    if name != "torch" and run.onnx(precision).is_file():
        from mlic_edge.export.lineage import check_onnx

        check_onnx(run, precision)  # the ONNX (and so the engine built from it) is this run's current model
    if name in ENGINE_BACKENDS:
        from mlic_edge.runtime.inference.backends.tensorrt_backend import open_tensorrt_backend

        if device == "cpu":
            raise BackendError(f"{name} runs engines on an NVIDIA GPU, not --device cpu",
                               hint="use --backend onnxruntime --device cpu")
        engine = find_engine(run, name, precision)
        index = int(device.partition(":")[2] or 0) if device.startswith("cuda") else 0
        return open_tensorrt_backend(run, name, precision, engine, device=index, cuda_graph=cuda_graph)
    if cuda_graph:
        raise BackendError(f"--cuda-graph is for TensorRT engines, not {name}", hint="use --backend tensorrt, or drop "
                                                                                   "--cuda-graph")
    if name == "torch":
        from mlic_edge.runtime.inference.backends.torch_backend import TorchBackend

        if precision != "fp32":
            raise BackendError("the torch backend is the fp32 reference", hint="use --precision fp32")
        spec = run.spec()
        return TorchBackend(run.require(run.checkpoint, "mlic-edge train"), device="cuda" if device == "cuda" else "cpu",
                            normalization=(spec.mean, spec.std))
    from mlic_edge.runtime.inference.backends.onnxruntime_backend import OnnxRuntimeBackend, available_devices

    if device == "auto":
        device = "cuda" if "cuda" in available_devices() else "cpu"
    onnx_path = run.require(run.onnx(precision), f"mlic-edge export --run {run.path}" if precision == "fp32" else
                            rebuild_command(run.path, precision, "onnxruntime"))
    return OnnxRuntimeBackend(onnx_path, device=device, precision=precision)


__all__ = ["BACKENDS", "PRECISIONS", "Backend", "BackendInfo", "create_backend", "resolve_auto"]
