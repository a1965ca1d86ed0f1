"""Backends by name; ``auto`` picks the first that can run here and says which (never a silent fallback)."""

from __future__ import annotations

import importlib.util

from mlic_edge.errors import BackendError
from mlic_edge.rundir import RunDir
from mlic_edge.runtime.backends.base import Backend, BackendInfo

BACKENDS = ("auto", "tensorrt", "tensorrt-rtx", "onnxruntime", "torch")
PRECISIONS = ("fp32", "fp16", "int8")


def resolve_auto(device: str = "auto") -> tuple[str, str]:
    """(backend, device) that ``--backend auto`` would use on this machine."""
    from mlic_edge.runtime.backends.onnxruntime_backend import available_devices

    if device in ("auto", "cuda") and "cuda" in available_devices():
        return "onnxruntime", "cuda"
    if device in ("auto", "cpu"):
        return "onnxruntime", "cpu"
    raise BackendError(f"no backend here can run on {device!r}", hint="use --device cpu")


def create_backend(name: str, run: RunDir, precision: str = "fp32", device: str = "auto") -> Backend:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}", hint=f"choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}", hint=f"choose one of {', '.join(PRECISIONS)}")
    if name == "auto":
        name, device = resolve_auto(device)
    if name in ("tensorrt", "tensorrt-rtx"):
        module = "tensorrt" if name == "tensorrt" else "tensorrt_rtx"
        if importlib.util.find_spec(module) is None:
            raise BackendError(f"backend {name!r} needs the {module} Python package, which is not installed",
                               hint="on Jetson it comes with JetPack (python3-libnvinfer); "
                                    "--backend auto would pick " + "/".join(resolve_auto("auto")))
        raise BackendError(f"backend {name!r} is not implemented in this version of mlic-edge",
                           hint="use --backend onnxruntime")
    if name == "torch":
        from mlic_edge.runtime.backends.torch_backend import TorchBackend

        if precision != "fp32":
            raise BackendError("the torch backend is the fp32 reference", hint="use --precision fp32")
        return TorchBackend(run.require(run.checkpoint, "mlic-edge train"),
                            device="cuda" if device == "cuda" else "cpu")
    from mlic_edge.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend, available_devices

    if device == "auto":
        device = "cuda" if "cuda" in available_devices() else "cpu"
    onnx_path = run.require(run.onnx(precision), "mlic-edge export" if precision == "fp32" else
                            f"mlic-edge export --precision {precision}")
    return OnnxRuntimeBackend(onnx_path, device=device, precision=precision)


__all__ = ["BACKENDS", "PRECISIONS", "Backend", "BackendInfo", "create_backend", "resolve_auto"]
