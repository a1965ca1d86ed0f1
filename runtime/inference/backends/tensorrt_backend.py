"""TensorRT (and TensorRT for RTX) engines on a GPU: pinned host buffers, async copies and execution on a CUDA stream.

Tensors by name (``execute_async_v3``), which every supported TensorRT has (8.5+, 10.x, 11.x, RTX; the real API
surfaces are recorded in ``tests/api_surfaces/``). CUDA comes from ``mlic_edge.runtime.inference.cuda`` (pycuda or
cuda-python). Every resource is made in ``__init__``/``infer`` and released in ``close``, with the CUDA context
current on the calling thread. Registers the ``tensorrt`` and ``tensorrt-rtx`` backends; the engines layer
(runtime/engines/) is imported only when a run's engine is looked for or opened, so a CPU run loads none of it.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlic_edge.errors import BackendError, MlicError
from mlic_edge.rundir import RunDir
from mlic_edge.runtime.inference.backends.base import Backend, BackendInfo
from mlic_edge.runtime.inference.backends.registry import OpenOptions, register_backend
from mlic_edge.spec import rebuild_command

if TYPE_CHECKING:  # the registry imports this module to list it (every --help): numpy and CUDA load when one opens
    import numpy as np

    from mlic_edge.runtime.engines.api import TensorRT
    from mlic_edge.runtime.inference.cuda import Cuda, DeviceBuffer, Graph, HostBuffer

def _numpy() -> Any:
    import numpy

    return numpy


def _open_cuda(device: int, graphs: bool) -> "Cuda":
    from mlic_edge.runtime.inference.cuda import open_cuda

    return open_cuda(device, graphs=graphs)


TIMING_KEYS = ("h2d_ms", "compute_ms", "d2h_ms", "total_ms")


class _Tensor:
    def __init__(self, name: str, dtype: np.dtype) -> None:
        self.name, self.dtype = name, _numpy().dtype(dtype)


class _NamedTensors:
    """The engine's I/O tensors by name; shapes and addresses are set on the execution context."""

    style = "named tensors"

    def __init__(self, trt_module: Any, engine: Any, engine_name: str) -> None:
        self.inputs: list[_Tensor] = []
        self.outputs: list[_Tensor] = []
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            tensor = _Tensor(name, numpy_dtype(trt_module, engine.get_tensor_dtype(name), name, engine_name))
            is_input = engine.get_tensor_mode(name) == trt_module.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(tensor)

    @staticmethod
    def set_input_shape(context: Any, tensor: _Tensor, shape: tuple[int, ...]) -> bool:
        return bool(context.set_input_shape(tensor.name, shape))

    @staticmethod
    def shape(context: Any, tensor: _Tensor) -> tuple[int, ...]:
        return tuple(int(size) for size in context.get_tensor_shape(tensor.name))

    @staticmethod
    def bind(context: Any, tensor: _Tensor, ptr: int) -> None:
        context.set_tensor_address(tensor.name, ptr)

    @staticmethod
    def execute(context: Any, stream_ptr: int) -> bool:
        return bool(context.execute_async_v3(stream_ptr))


def numpy_dtype(trt_module: Any, dtype: Any, tensor: str, engine_name: str) -> np.dtype:
    """The numpy type of a TensorRT DataType; bf16, fp8, int4, fp4 (no numpy equivalent) are one-line refusals."""
    try:
        return _numpy().dtype(trt_module.nptype(dtype))
    except TypeError:
        kind = str(getattr(dtype, "name", dtype)).rsplit(".", 1)[-1]
        raise BackendError(f"tensor {tensor!r} of {engine_name} is {kind}, which numpy cannot hold",
                           hint="export the model with float32 inputs and outputs (mlic-edge export does), "
                                "then rebuild the engine") from None


class TensorRTBackend(Backend):
    """One engine on one GPU. ``cuda``: a ``Cuda`` to use (tests pass fakes); the backend owns and closes it."""

    def __init__(self, engine_path: Path, trt: TensorRT, *, precision: str, manifest: dict, device: int = 0,
                 cuda_graph: bool = False, cuda: Cuda | None = None) -> None:
        from mlic_edge.runtime.engines.builder import recording_logger

        self.engine_path = Path(engine_path)
        self.trt = trt
        self.manifest = manifest
        self.cuda_graph = cuda_graph
        self.last_timings: dict[str, float | None] = dict.fromkeys(TIMING_KEYS)
        batch = manifest.get("batch") or {}
        self.batch_range = (int(batch.get("min", 1)), int(batch.get("max", 1)))
        self._rebuild = rebuild_command(self.engine_path.parent.parent.parent, precision, trt.backend)
        self._dla_core = _dla_core(manifest.get("device"))
        self._context = self._engine = self._runtime = None
        self._graph: Graph | None = None
        self._graph_batch = 0
        self._buffers: dict[str, tuple[HostBuffer, DeviceBuffer]] = {}
        self._shape: tuple[int, ...] | None = None
        self._nbytes: dict[str, int] = {}
        self._contiguous = _numpy().ascontiguousarray
        self._cuda = cuda or _open_cuda(device, graphs=cuda_graph)  # made first, closed last
        try:
            if cuda_graph and not self._cuda.supports_graphs:
                raise BackendError(f"CUDA graph capture was asked for, and {self._cuda.name} has no CUDA graph API",
                                   hint="pip install cuda-python (preferred for --cuda-graph when both are "
                                        "installed), or run without CUDA graphs")
            with self._cuda.on_this_thread():
                self._stream = self._cuda.stream()
                self._events = [self._cuda.event() for _ in range(4)]
                self._logger = recording_logger(trt.module)
                self._runtime = self._create_runtime()
                self._engine = self._deserialize()
                self._context = self._engine.create_execution_context()
                if self._context is None:
                    raise BackendError(f"TensorRT could not create an execution context for {self.engine_path.name}:"
                                       f" {self._logger.last_error() or 'no reason given'}",
                                       hint="free GPU memory (other processes) or rebuild with a smaller --workspace")
                self._io = self._detect_io()
                if cuda_graph:
                    self._check_capturable()
        except BaseException:
            self.close()
            raise
        self.info = BackendInfo(
            backend=trt.backend, device=f"cuda:{self._cuda.device} {self._cuda.device_name}", precision=precision,
            version=trt.version,
            details={"engine": str(self.engine_path), "io": self._io.style, "cuda": f"{self._cuda.name} "
                     f"{self._cuda.version}", "batch": list(self.batch_range), "cuda_graph": cuda_graph,
                     "device": f"dla:{self._dla_core}" if self._dla_core is not None else "gpu",
                     "input": self._input.name, "output": self._output.name})

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, C) scores for a float32 NCHW batch; N must lie within the engine's optimization profile."""
        if self._cuda is None:
            raise BackendError(f"the TensorRT backend of {self.engine_path.name} is closed",
                               hint="open a new backend (create_backend) for further inference")
        batch = self._contiguous(batch, dtype=self._input.dtype)
        count = batch.shape[0] if batch.ndim else 0
        low, high = self.batch_range
        if not low <= count <= high:
            raise BackendError(f"--batch {count} is outside the engine's profile {low}..{high}",
                               hint=f"rebuild with {self._rebuild} --batch MIN,OPT,MAX")
        with self._cuda.on_this_thread():  # `mlic-edge run` infers on its own thread
            output_shape = self._prepare(batch.shape)
            self._buffers[self._input.name][0].view(batch.dtype, batch.shape)[...] = batch
            if self.cuda_graph:
                self._run_graph(count)
            else:
                self._run_stream(count)
            return self._buffers[self._output.name][0].view(self._output.dtype, output_shape).copy()

    def close(self) -> None:
        """TensorRT objects first (context, engine, runtime), then CUDA's graph, buffers, events and stream, all
        with the device's context current on the calling thread (which need not be the one that opened it)."""
        cuda, self._cuda = getattr(self, "_cuda", None), None
        if cuda is None:
            return
        try:
            with cuda.on_this_thread():
                self._graph = None  # owned by ``cuda``: released below with the rest
                for name in ("_context", "_engine", "_runtime"):
                    setattr(self, name, None)
                self._buffers = {}
        finally:
            cuda.close()

    # --- one inference ---------------------------------------------------------------------------------------
    def _run_stream(self, count: int) -> None:
        cuda, stream, (start, copied_in, computed, copied_out) = self._cuda, self._stream, self._events
        cuda.record(start, stream)
        self._copy_in()
        cuda.record(copied_in, stream)
        self._execute(count)
        cuda.record(computed, stream)
        self._copy_out()
        cuda.record(copied_out, stream)
        cuda.synchronize(stream)
        self.last_timings = {"h2d_ms": cuda.elapsed_ms(start, copied_in),
                             "compute_ms": cuda.elapsed_ms(copied_in, computed),
                             "d2h_ms": cuda.elapsed_ms(computed, copied_out),
                             "total_ms": cuda.elapsed_ms(start, copied_out)}

    def _run_graph(self, count: int) -> None:
        """Copies and execution as one CUDA graph, captured for this batch size (a new size captures again)."""
        cuda, stream, (start, _, _, end) = self._cuda, self._stream, self._events
        if self._graph is None or self._graph_batch != count:
            if self._graph is not None:
                cuda.free(self._graph)
                self._graph = None
            self._execute(count)  # TensorRT needs one plain run after a shape change before capture
            cuda.synchronize(stream)
            self._graph = cuda.capture(stream, lambda: (self._copy_in(), self._execute(count),
                                                        self._copy_out()))
            self._graph_batch = count
        cuda.record(start, stream)
        cuda.launch(self._graph, stream)
        cuda.record(end, stream)
        cuda.synchronize(stream)
        # Inside a graph the stages are not timed separately: only the whole.
        self.last_timings = {"h2d_ms": None, "compute_ms": None, "d2h_ms": None,
                             "total_ms": cuda.elapsed_ms(start, end)}

    def _copy_in(self) -> None:
        host, device = self._buffers[self._input.name]
        self._cuda.copy_to_device(device, host, self._nbytes[self._input.name], self._stream)

    def _copy_out(self) -> None:
        host, device = self._buffers[self._output.name]
        self._cuda.copy_to_host(host, device, self._nbytes[self._output.name], self._stream)

    def _check_capturable(self) -> None:
        """TensorRT for RTX captures an engine only when it was built with REQUIRE_USER_ALLOCATION; ask the
        context where the API can say, so a refusal is one line now rather than a failed capture later."""
        if self.trt.caps.stream_capturable_query and not self._context.is_stream_capturable(self._stream.ptr):
            raise BackendError(f"{self.engine_path.name} cannot be captured in a CUDA graph on this stream "
                               f"({self.trt.backend} {self.trt.version} says it is not stream capturable)",
                               hint=f"rebuild it with this mlic-edge ({self._rebuild}), which builds TensorRT for "
                                    "RTX engines for graph capture, or run without --cuda-graph")

    def _execute(self, count: int) -> None:
        if not self._io.execute(self._context, self._stream.ptr):
            raise BackendError(f"TensorRT could not run {self.engine_path.name} on a batch of {count}: "
                               f"{self._logger.last_error() or 'no reason given'}",
                               hint="check the GPU with nvidia-smi; if the engine is damaged, rebuild it: "
                                    f"{self._rebuild}")

    # --- shapes and buffers ----------------------------------------------------------------------------------
    def _prepare(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Set the input shape (when it changed), grow buffers that are too small, bind addresses; output shape."""
        if shape != self._shape:
            expected = tuple(self.manifest.get("inputs", [{}])[0].get("shape", ())[1:])
            if expected and all(size > 0 for size in expected) and tuple(shape[1:]) != expected:
                raise BackendError(f"input batch has shape {tuple(shape)}; {self.engine_path.name} takes "
                                   f"(N, {', '.join(map(str, expected))})",
                                   hint="preprocess with the run's img_size (mlic_edge.data.images.preprocess)")
            if not self._io.set_input_shape(self._context, self._input, tuple(shape)):
                raise BackendError(f"TensorRT refused input shape {tuple(shape)} for {self.engine_path.name}: "
                                   f"{self._logger.last_error() or 'outside the optimization profile'}",
                                   hint=f"rebuild with {self._rebuild} --batch MIN,OPT,MAX")
            self._shape = tuple(shape)
        output_shape = self._io.shape(self._context, self._output)
        self._nbytes = {self._input.name: int(math.prod(shape)) * self._input.dtype.itemsize,
                        self._output.name: int(math.prod(output_shape)) * self._output.dtype.itemsize}
        for tensor in (self._input, self._output):
            self._ensure_buffer(tensor, self._nbytes[tensor.name])
        return output_shape

    def _ensure_buffer(self, tensor: _Tensor, nbytes: int) -> None:
        """Allocate on first use and reallocate only when the batch grows past what the buffers hold."""
        current = self._buffers.get(tensor.name)
        if current is not None and current[0].nbytes >= nbytes:
            return
        if self._graph is not None:  # it holds the old addresses
            self._cuda.free(self._graph)
            self._graph = None
        if current is not None:
            for buffer in current:
                self._cuda.free(buffer)
        self._buffers[tensor.name] = (self._cuda.host_buffer(nbytes), self._cuda.device_buffer(nbytes))
        self._io.bind(self._context, tensor, self._buffers[tensor.name][1].ptr)

    # --- loading ---------------------------------------------------------------------------------------------
    def _create_runtime(self) -> Any:
        """The runtime, set up for this engine before it is deserialized: a version-compatible plan carries its
        lean runtime as host code, which TensorRT refuses to load unless allowed (as Polygraphy's loader does);
        a DLA plan is deserialized onto the DLA core it was built for."""
        caps = self.trt.caps
        if self.manifest.get("version_compatible") and not caps.engine_host_code:
            raise BackendError(f"{self.engine_path.name} is version-compatible, and {self.trt.backend} "
                               f"{self.trt.version} cannot load engines with embedded host code",
                               hint=f"rebuild it without --version-compatible: {self._rebuild}")
        if self._dla_core is not None and not caps.runtime_dla_core:
            raise BackendError(f"{self.engine_path.name} was built for DLA core {self._dla_core}, and "
                               f"{self.trt.backend} {self.trt.version} has no DLA runtime",
                               hint="run it on the Jetson it was built for, or rebuild without --dla-core")
        try:
            runtime = self.trt.module.Runtime(self._logger)
        except (TypeError, RuntimeError) as error:  # pybind raises TypeError when the factory returns nullptr
            raise BackendError(f"{self.trt.backend} {self.trt.version} could not create a runtime: "
                               f"{self._logger.last_error() or error}",
                               hint="check the NVIDIA driver with nvidia-smi, or use --backend onnxruntime") from error
        if self.manifest.get("version_compatible"):
            runtime.engine_host_code_allowed = True
        if self._dla_core is not None:
            if self._dla_core >= runtime.num_DLA_cores:
                raise BackendError(f"{self.engine_path.name} was built for DLA core {self._dla_core}; this device "
                                   f"has {runtime.num_DLA_cores}",
                                   hint=f"rebuild with a --dla-core below {runtime.num_DLA_cores}: {self._rebuild}")
            runtime.DLA_core = self._dla_core
        return runtime

    def _deserialize(self) -> Any:
        try:
            data = self.engine_path.read_bytes()
        except OSError as error:
            raise BackendError(f"cannot read {self.engine_path}: {error.strerror or error}",
                               hint=f"build it: {self._rebuild}") from error
        try:
            engine = self._runtime.deserialize_cuda_engine(data)
        except (RuntimeError, TypeError, ValueError) as error:
            engine, reason = None, str(error).strip()
        else:
            reason = None
        if engine is None:
            reason = self._logger.last_error() or reason or "no reason given"
            raise BackendError(f"{self.trt.backend} {self.trt.version} could not load {self.engine_path.name}: "
                               f"{reason}", hint=f"an engine runs only on the TensorRT and GPU it was built for; "
                                                 f"rebuild it here: {self._rebuild}")
        return engine

    def _detect_io(self) -> _NamedTensors:
        if not self.trt.caps.named_tensors:
            raise BackendError(f"{self.trt.backend} {self.trt.version} has no name-based tensor API "
                               "(execute_async_v3, TensorRT 8.5 and later)",
                               hint="use TensorRT 8.6 or newer (JetPack 6), or --backend onnxruntime")
        io = _NamedTensors(self.trt.module, self._engine, self.engine_path.name)
        if len(io.inputs) != 1 or not io.outputs:
            raise BackendError(f"{self.engine_path.name} has {len(io.inputs)} inputs and {len(io.outputs)} outputs; "
                               "mlic-edge runs models with one image input and a scores output",
                               hint=f"re-export the model with mlic-edge export, then {self._rebuild}")
        wanted = [tensor["name"] for tensor in self.manifest.get("outputs", [])]
        self._input = io.inputs[0]
        self._output = next((tensor for tensor in io.outputs if tensor.name in wanted[:1]), io.outputs[0])
        return io


def _dla_core(device: Any) -> int | None:
    """The DLA core of a manifest's ``device`` ("gpu" or "dla:<core>")."""
    kind, _, core = str(device or "gpu").partition(":")
    return int(core) if kind == "dla" and core.isdigit() else None


def open_tensorrt_backend(run: RunDir, backend_name: str, precision: str, engine_path: Path, *, device: int = 0,
                          cuda_graph: bool = False) -> TensorRTBackend:
    """The engine ``find_engine`` chose, with the manifest beside it and the TensorRT of ``backend_name``."""
    from mlic_edge.runtime.engines.api import load_tensorrt
    from mlic_edge.runtime.engines.manifest import read_manifest

    engine_path = Path(engine_path)
    try:
        manifest = read_manifest(engine_path.with_suffix(".json"))
    except MlicError as error:
        raise BackendError(error.message, hint=error.hint) from error
    if manifest.get("precision") != precision:
        raise BackendError(f"{engine_path.name} is a {manifest.get('precision')} engine, not {precision}",
                           hint=rebuild_command(run.path, precision, backend_name))
    return TensorRTBackend(engine_path, load_tensorrt(backend_name), precision=precision, manifest=manifest,
                           device=device, cuda_graph=cuda_graph)


def find_engine(run: RunDir, backend: str, precision: str) -> Path:
    """The engine of ``backend`` and ``precision`` in the run that fits this TensorRT, GPU and ONNX, or a one-line
    refusal saying why and how to rebuild (TensorRT missing: how to get it, and what ``auto`` would use)."""
    from mlic_edge.runtime.engines.api import load_tensorrt
    from mlic_edge.runtime.engines.gpu import detect_gpu
    from mlic_edge.runtime.engines.manifest import check_manifest, read_manifest

    trt = load_tensorrt(backend)
    rebuild = rebuild_command(run.path, precision, backend)
    manifests = [(path, read_manifest(path)) for path in run.engine_manifests(precision)]
    manifests = [(path, manifest) for path, manifest in manifests if manifest.get("backend") == backend]
    if not manifests:
        raise BackendError(f"no {backend} {precision} engine in {run.engines}", hint=f"build it: {rebuild}")
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


def open_engine_backend(backend_name: str, run: RunDir, precision: str, device: str,
                        options: OpenOptions) -> TensorRTBackend:
    """The run's engine of ``backend_name`` and ``precision`` that fits here, on the GPU of ``device``."""
    if device == "cpu":
        raise BackendError(f"{backend_name} runs engines on an NVIDIA GPU, not --device cpu",
                           hint="use --backend onnxruntime --device cpu")
    engine = find_engine(run, backend_name, precision)
    index = int(device.partition(":")[2] or 0) if device.startswith("cuda") else 0
    backend = open_tensorrt_backend(run, backend_name, precision, engine, device=index, cuda_graph=options.cuda_graph)
    backend.thread_budget = options.thread_budget("cuda")
    return backend


def _installed(backend_name: str) -> bool:
    from mlic_edge.runtime.engines.api import available_tensorrt_backends

    return backend_name in available_tensorrt_backends()


def _auto_device(backend_name: str, run: RunDir | None, precision: str, device: str) -> str | None:
    """"cuda" where the run has an engine of ``backend_name`` that fits this TensorRT, GPU and ONNX and a CUDA binding
    is installed to feed it; an engine that is there but cannot run is named with the reason."""
    import importlib.util

    from mlic_edge.console import info

    if run is None:
        return None
    try:
        find_engine(run, backend_name, precision)
    except MlicError as error:
        if "engine in" not in error.message:  # an engine is there but does not fit: say why it is not used
            info(f"--backend auto: not using the {backend_name} engine: {error.message}")
        return None
    if not any(importlib.util.find_spec(module) for module in ("pycuda", "cuda")):
        info(f"--backend auto: not using the {backend_name} engine: neither pycuda nor cuda-python is installed to "
             "run it")
        return None
    return "cuda"


def _parity_graphs(backend_name: str, run: RunDir, precision: str, asked: bool) -> list[str]:
    """By default, the run's engines of ``backend_name`` and ``precision``."""
    from mlic_edge.runtime.engines.manifest import read_manifest

    built = any(read_manifest(path).get("backend") == backend_name for path in run.engine_manifests(precision))
    return ["auto"] if asked or built else []


def _register(name: str, title: str, description: str, extras: tuple[str, ...], auto_order: int) -> None:
    register_backend(name=name, title=title, description=description, installed=partial(_installed, name),
                     extras=extras, runs_engines=True, buildable=True, auto_order=auto_order,
                     auto_device=partial(_auto_device, name),
                     parity_graphs=partial(_parity_graphs, name))(partial(open_engine_backend, name))


# The extras: cuda12 stands for the cuda-python of the driver's CUDA major (cuda12 or cuda13: doctor names it);
# full TensorRT comes from JetPack or NVIDIA's package index, not from an extra.
_register("tensorrt", "TensorRT", "TensorRT engines on an NVIDIA GPU (Jetson, data-centre, desktop)", ("cuda12",), 10)
_register("tensorrt-rtx", "TensorRT for RTX", "TensorRT for RTX engines on RTX desktop GPUs (it builds them on a CPU "
          "too)", ("tensorrt-rtx", "cuda13"), 20)


__all__ = ["TIMING_KEYS", "TensorRTBackend", "find_engine", "open_engine_backend", "open_tensorrt_backend"]
