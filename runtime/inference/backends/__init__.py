"""Backends by name, from the registry (registry.py); ``auto`` picks the first that can run here and says which (never
a silent fallback)."""

from __future__ import annotations

from mlic_edge.errors import BackendError
from mlic_edge.rundir import RunDir
from mlic_edge.runtime.inference.backends.base import Backend, BackendInfo
from mlic_edge.runtime.inference.backends.registry import OpenOptions, get_backend, resolve_auto
from mlic_edge.spec import DEFAULT_DEVICE, DEFAULT_PRECISION, INT8_GRAPHS, PRECISIONS, require_choice


def create_backend(name: str, run: RunDir, precision: str = DEFAULT_PRECISION, device: str = DEFAULT_DEVICE,
                   cuda_graph: bool = False, graph: str = "auto", threads: int | None = None,
                   fp16_fallback: bool = False) -> Backend:
    """Open backend ``name`` for the run's ``precision``; ``cuda_graph`` (TensorRT only) replays a captured CUDA
    graph per batch size instead of enqueueing copies and execution each time. ``graph`` (ONNX Runtime, int8):
    ``tensorrt`` (model.int8.onnx), ``cpu`` (model.int8.cpu.onnx) or ``auto`` (the CPU graph on the CPU where
    it was built, else the TensorRT one, saying so). ``threads`` (``--threads``): the inference threads; by default
    the thread budget's (runtime/inference/threads.py), which the backend carries as ``thread_budget``.
    ``fp16_fallback``: fp16 asked of ONNX Runtime on a CPU without fp16 arithmetic runs the fp32 graph (said)."""
    entry = None if name == "auto" else get_backend(name)
    require_choice("precision", precision, PRECISIONS, BackendError)
    if graph != "auto":
        require_choice("int8 graph", graph, INT8_GRAPHS, BackendError)
        if precision != "int8":
            raise BackendError(f"graph {graph!r} is an int8 graph, not {precision}", hint="use --precision int8")
    if entry is None:
        name, device = resolve_auto(device, run, precision)
        entry = get_backend(name)
    if entry.made_from_onnx and run.onnx(precision).is_file():
        from mlic_edge.export.lineage import check_onnx

        check_onnx(run, precision)  # the ONNX (and so the engine built from it) is this run's current model
    if cuda_graph and not entry.runs_engines:
        raise BackendError(f"--cuda-graph is for TensorRT engines, not {name}", hint="use --backend tensorrt, or drop "
                                                                                   "--cuda-graph")
    options = OpenOptions(cuda_graph=cuda_graph, graph=graph, threads=threads, fp16_fallback=fp16_fallback)
    return entry.opener(run, precision, device, options)


__all__ = ["Backend", "BackendInfo", "create_backend", "resolve_auto"]
