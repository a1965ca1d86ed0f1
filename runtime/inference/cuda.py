"""CUDA for the TensorRT backend: streams, device and pinned host buffers, async copies, events and CUDA graphs.

Two implementations behind one small API, picked by what is importable: pycuda (the original design's choice) and
cuda-python (``cuda.bindings``, what TensorRT's own samples use; preferred for CUDA graphs, which pycuda lacks).
Every call is written for the real bindings of each supported major (cuda-python 11.8, 12.x, 13.x:
tests/test_cuda_bindings.py makes each one). Everything made through a ``Cuda`` is owned by it and released by
``close()`` in reverse order of creation, with the device current on the closing thread; ``live_resources()`` counts
what cuda-python created and has not destroyed yet. Nothing here imports pycuda or cuda-python until ``open_cuda`` is
called.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from mlic_edge.errors import BackendError

INSTALL_HINT = ("pip install cuda-python of the CUDA major your driver supports ('cuda-python==12.*' on JetPack 6, "
                "'cuda-python==11.8.*' with a CUDA 11 driver, 13.* needs a driver >= 580; `mlic-edge doctor` names "
                "it), or pip install pycuda (it compiles against the CUDA toolkit, so nvcc must be on PATH); or run the "
                "ONNX instead with --backend onnxruntime")


@dataclass(eq=False)
class Resource:
    """One thing a ``Cuda`` made; ``release`` frees it (set to None once done)."""

    kind: str
    handle: Any
    release: Callable[[], None] | None = field(default=None, repr=False)


@dataclass(eq=False)
class DeviceBuffer(Resource):
    ptr: int = 0
    nbytes: int = 0


@dataclass(eq=False)
class HostBuffer(Resource):
    """Page-locked host memory, seen from numpy as ``array`` (uint8, ``nbytes`` long)."""

    ptr: int = 0
    nbytes: int = 0
    array: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint8), repr=False)

    def view(self, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        """The first ``prod(shape)`` elements of ``dtype`` as an array of ``shape`` (no copy)."""
        count = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.array[:count].view(dtype).reshape(shape)


@dataclass(eq=False)
class Stream(Resource):
    ptr: int = 0  # the raw ``cudaStream_t`` value TensorRT takes


class Event(Resource):
    pass


class Graph(Resource):
    """An instantiated CUDA graph (the captured graph itself is released with it)."""


class Cuda:
    """One device's CUDA work through pycuda or cuda-python; ``close()`` releases everything it made."""

    def __init__(self, driver: "_Driver") -> None:
        self._driver = driver
        self._owned: list[Resource] = []
        self.name = driver.name
        self.version = driver.version
        self.device = driver.device
        try:
            self.device_name = driver.device_name()
        except BaseException:
            driver.close()
            raise

    @property
    def supports_graphs(self) -> bool:
        return self._driver.supports_graphs

    def stream(self) -> Stream:
        handle, ptr, release = self._driver.stream_create()
        return self._own(Stream("stream", handle, release, ptr=ptr))

    def device_buffer(self, nbytes: int) -> DeviceBuffer:
        handle, ptr, release = self._driver.malloc(max(int(nbytes), 1))
        return self._own(DeviceBuffer("device buffer", handle, release, ptr=ptr, nbytes=int(nbytes)))

    def host_buffer(self, nbytes: int) -> HostBuffer:
        handle, ptr, array, release = self._driver.malloc_host(max(int(nbytes), 1))
        return self._own(HostBuffer("host buffer", handle, release, ptr=ptr, nbytes=int(nbytes), array=array))

    def event(self) -> Event:
        return self._own(Event("event", *self._driver.event_create()))

    def copy_to_device(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int, stream: Stream) -> None:
        self._check_size("host-to-device copy", nbytes, dst, src)
        self._driver.copy_htod(dst.ptr, src, nbytes, stream.handle)

    def copy_to_host(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
        self._check_size("device-to-host copy", nbytes, dst, src)
        self._driver.copy_dtoh(dst, src.ptr, nbytes, stream.handle)

    def record(self, event: Event, stream: Stream) -> None:
        self._driver.event_record(event.handle, stream.handle)

    def elapsed_ms(self, start: Event, end: Event) -> float:
        """Milliseconds from ``start`` to ``end``, both recorded and their stream synchronized. Every interval measured
        here holds work, and CUDA's event timer resolves about half a microsecond, so a time that is not positive
        means the events were passed or recorded out of order: a bug, raised rather than reported."""
        elapsed = float(self._driver.event_elapsed_ms(start.handle, end.handle))
        if not elapsed > 0:
            raise BackendError(f"CUDA events timed {elapsed} ms from start to end: they were recorded or passed out "
                               "of order", hint="this is a bug in mlic-edge; please report it")
        return elapsed

    def synchronize(self, stream: Stream) -> None:
        self._driver.stream_synchronize(stream.handle)

    def capture(self, stream: Stream, work: Callable[[], None]) -> Graph:
        """Run ``work`` (which only enqueues on ``stream``) under graph capture; the graph replays it."""
        if not self.supports_graphs:
            raise BackendError(f"CUDA graphs are not available through {self.name}",
                               hint="pip install cuda-python for CUDA graphs, or run without them")
        self._driver.begin_capture(stream.handle)
        try:
            work()
        except BaseException:
            self._driver.abort_capture(stream.handle)
            raise
        return self._own(Graph("graph", *self._driver.end_capture(stream.handle)))

    def launch(self, graph: Graph, stream: Stream) -> None:
        self._driver.graph_launch(graph.handle, stream.handle)

    def free(self, resource: Resource) -> None:
        """Release one resource now (a buffer that was outgrown); ``close()`` releases the rest."""
        if resource in self._owned:
            self._owned.remove(resource)
        _release(resource)

    def close(self) -> None:
        """Release every resource in reverse order of creation, with the device current on the calling thread (any
        thread may close, not only the one that opened), then the device context. Safe to call twice."""
        driver, self._driver = self._driver, None
        if driver is None:
            return
        errors: list[BackendError] = []
        try:
            with _bound(driver):
                while self._owned:
                    try:
                        _release(self._owned.pop())
                    except BackendError as error:  # keep releasing; report the first failure after
                        errors.append(error)
        except BackendError as error:  # the context could not be made current: it goes, and its memory with it
            errors.append(error)
        finally:
            self._owned.clear()
            driver.close()
        if errors:
            raise errors[0]

    def on_this_thread(self) -> contextlib.AbstractContextManager[None]:
        """Make the device current in the calling thread for the block. The pipeline infers on its own thread, and
        pycuda's context (unlike the runtime API's per-process primary context) is current only where it was
        pushed; blocks nest."""
        if self._driver is None:
            raise BackendError("this CUDA device was closed", hint="open a new backend for further inference")
        return _bound(self._driver)

    def __enter__(self) -> "Cuda":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _own(self, resource: Any) -> Any:
        self._owned.append(resource)
        return resource

    @staticmethod
    def _check_size(what: str, nbytes: int, *buffers: DeviceBuffer | HostBuffer) -> None:
        too_small = [buffer for buffer in buffers if buffer.nbytes < nbytes]
        if too_small:
            raise BackendError(f"{what} of {nbytes} bytes into a {too_small[0].kind} of {too_small[0].nbytes}",
                               hint="this is a bug in mlic-edge; please report it")


def open_cuda(device: int = 0, *, graphs: bool = False) -> Cuda:
    """CUDA on ``device`` through pycuda if it imports, else cuda-python; with ``graphs`` cuda-python first (pycuda
    has no graph API). BackendError saying how to get one."""
    pycuda_driver, cudart = _import_pycuda(), _import_cudart()
    if cudart is not None and (graphs or pycuda_driver is None):
        return cuda_python_api(cudart, device)
    if pycuda_driver is not None:
        return pycuda_api(pycuda_driver, device)
    raise BackendError("running TensorRT engines needs pycuda or cuda-python, and neither is installed",
                       hint=INSTALL_HINT)


def _import_pycuda() -> Any:
    try:
        import pycuda.driver as pycuda_driver
    except ImportError:
        return None
    return pycuda_driver


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python before 12.6 (11.8, for CUDA 11 drivers)
        except ImportError:
            return None
    return cudart


def pycuda_api(driver_module: Any, device: int = 0) -> Cuda:
    """A ``Cuda`` over a ``pycuda.driver`` module (or an object shaped like one)."""
    return Cuda(_PyCudaDriver(driver_module, device))


def cuda_python_api(runtime_module: Any, device: int = 0) -> Cuda:
    """A ``Cuda`` over cuda-python's runtime module ``cuda.bindings.runtime`` (or an object shaped like one)."""
    return Cuda(_CudaPythonDriver(runtime_module, device))


@contextlib.contextmanager
def _bound(driver: "_Driver") -> Iterator[None]:
    driver.bind_thread()
    try:
        yield
    finally:
        driver.unbind_thread()


def _release(resource: Resource) -> None:
    release, resource.release = resource.release, None
    if release is not None:
        release()
    resource.handle = None  # pycuda frees streams and events with their last reference


class _Driver:
    """The primitive calls one CUDA binding offers; each method is one call, errors are BackendErrors."""

    name: str
    version: str
    device: int
    supports_graphs: bool = False

    def device_name(self) -> str: ...
    def stream_create(self) -> tuple[Any, Callable[[], None]]: ...
    def malloc(self, nbytes: int) -> tuple[Any, int, Callable[[], None]]: ...
    def malloc_host(self, nbytes: int) -> tuple[Any, int, np.ndarray, Callable[[], None]]: ...
    def event_create(self) -> tuple[Any, Callable[[], None]]: ...
    def copy_htod(self, dst_ptr: int, src: HostBuffer, nbytes: int, stream: Any) -> None: ...
    def copy_dtoh(self, dst: HostBuffer, src_ptr: int, nbytes: int, stream: Any) -> None: ...
    def event_record(self, event: Any, stream: Any) -> None: ...
    def event_elapsed_ms(self, start: Any, end: Any) -> float: ...
    def stream_synchronize(self, stream: Any) -> None: ...
    def close(self) -> None: ...

    def bind_thread(self) -> None: ...

    def unbind_thread(self) -> None: ...

    def begin_capture(self, stream: Any) -> None:
        raise BackendError(f"{self.name} has no CUDA graph API", hint="pip install cuda-python for CUDA graphs")

    def abort_capture(self, stream: Any) -> None: ...
    def end_capture(self, stream: Any) -> tuple[Any, Callable[[], None]]: ...
    def graph_launch(self, graph: Any, stream: Any) -> None: ...


class _PyCudaDriver(_Driver):
    """pycuda, in the device's primary context (the one TensorRT's runtime API uses). pycuda has no graph API.

    pycuda keeps a stack of current contexts per thread, and its ``Context.pop()`` pops the calling thread's top
    (failing with "cannot pop non-current context" on a thread that pushed nothing). So the context is never left
    current: every block of work pushes it on the calling thread and pops it there (``bind_thread`` /
    ``unbind_thread``), and ``close`` pushes it once more to detach, which pops it: any thread may close.
    """

    name = "pycuda"

    def __init__(self, driver: Any, device: int) -> None:
        self.cuda, self.device = driver, device
        self.version = ".".join(str(part) for part in getattr(driver, "get_version", lambda: ())())
        self._call("cuInit", driver.init)
        count = self._call("cuDeviceGetCount", driver.Device.count)
        if not 0 <= device < count:
            raise BackendError(f"CUDA device {device} asked for; this machine has {count}",
                               hint=f"use --device between 0 and {count - 1}" if count else
                               "check the NVIDIA driver (nvidia-smi), or use --backend onnxruntime")
        self._device = driver.Device(device)
        self._context = self._call("cuDevicePrimaryCtxRetain", self._device.retain_primary_context)

    def device_name(self) -> str:
        return str(self._device.name())

    def stream_create(self):
        stream = self._call("cuStreamCreate", self.cuda.Stream)
        return stream, int(stream.handle), lambda: None  # pycuda frees it with the object

    def malloc(self, nbytes):
        allocation = self._call("cuMemAlloc", self.cuda.mem_alloc, nbytes)
        return allocation, int(allocation), lambda: self._call("cuMemFree", allocation.free)

    def malloc_host(self, nbytes):
        array = self._call("cuMemHostAlloc", self.cuda.pagelocked_empty, nbytes, np.uint8)
        return array, int(array.ctypes.data), array, lambda: self._call("cuMemFreeHost", array.base.free)

    def event_create(self):
        return self._call("cuEventCreate", self.cuda.Event), lambda: None

    def copy_htod(self, dst_ptr, src, nbytes, stream):
        self._call("cuMemcpyHtoDAsync", self.cuda.memcpy_htod_async, dst_ptr, src.array[:nbytes], stream)

    def copy_dtoh(self, dst, src_ptr, nbytes, stream):
        self._call("cuMemcpyDtoHAsync", self.cuda.memcpy_dtoh_async, dst.array[:nbytes], src_ptr, stream)

    def event_record(self, event, stream):
        self._call("cuEventRecord", event.record, stream)

    def event_elapsed_ms(self, start, end):
        return self._call("cuEventElapsedTime", end.time_since, start)

    def stream_synchronize(self, stream):
        self._call("cuStreamSynchronize", stream.synchronize)

    def bind_thread(self) -> None:
        self._call("cuCtxPushCurrent", self._context.push)

    def unbind_thread(self) -> None:
        self._call("cuCtxPopCurrent", self._context.pop)

    def close(self) -> None:
        context, self._context = self._context, None
        if context is not None:  # detaching the current context releases the primary context and pops it
            self._call("cuCtxPushCurrent", context.push)
            self._call("cuDevicePrimaryCtxRelease", context.detach)

    def _call(self, what: str, function: Callable[..., Any], *args: Any) -> Any:
        error_type = getattr(self.cuda, "Error", RuntimeError)
        try:
            return function(*args)
        except error_type as error:
            raise _cuda_error(what, str(error).strip() or type(error).__name__, self.device) from error


class _CudaPythonDriver(_Driver):
    """cuda-python's runtime API (``cudaMalloc`` ...): every call returns (error, values...)."""

    name = "cuda-python"
    supports_graphs = True

    def __init__(self, runtime: Any, device: int) -> None:
        self.rt, self.device = runtime, device
        self.major, self.version = self._runtime_version()
        count = self._call("cudaGetDeviceCount", runtime.cudaGetDeviceCount)
        if not 0 <= device < count:
            raise BackendError(f"CUDA device {device} asked for; this machine has {count}",
                               hint=f"use --device between 0 and {count - 1}" if count else
                               "check the NVIDIA driver (nvidia-smi), or use --backend onnxruntime")
        self._call("cudaSetDevice", runtime.cudaSetDevice, device)

    def device_name(self) -> str:
        properties = self._call("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties, self.device)
        name = properties.name
        return (name.split(b"\x00", 1)[0].decode(errors="replace") if isinstance(name, bytes) else str(name)).strip()

    def stream_create(self):
        stream = self._call("cudaStreamCreateWithFlags", self.rt.cudaStreamCreateWithFlags,
                            self.rt.cudaStreamNonBlocking)
        return stream, handle_value(stream), lambda: self.stream_destroy(stream)

    def stream_destroy(self, stream: Any) -> None:
        self._call("cudaStreamDestroy", self.rt.cudaStreamDestroy, stream)

    def malloc(self, nbytes):
        ptr = int(self._call("cudaMalloc", self.rt.cudaMalloc, nbytes))
        return ptr, ptr, lambda: self.free(ptr)

    def free(self, ptr: int) -> None:
        self._call("cudaFree", self.rt.cudaFree, ptr)

    def malloc_host(self, nbytes):
        ptr = int(self._call("cudaMallocHost", self.rt.cudaMallocHost, nbytes))
        array = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))
        return ptr, ptr, array, lambda: self.free_host(ptr)

    def free_host(self, ptr: int) -> None:
        self._call("cudaFreeHost", self.rt.cudaFreeHost, ptr)

    def event_create(self):
        event = self._call("cudaEventCreate", self.rt.cudaEventCreate)
        return event, lambda: self.event_destroy(event)

    def event_destroy(self, event: Any) -> None:
        self._call("cudaEventDestroy", self.rt.cudaEventDestroy, event)

    def copy_htod(self, dst_ptr, src, nbytes, stream):
        self._call("cudaMemcpyAsync", self.rt.cudaMemcpyAsync, dst_ptr, src.ptr, nbytes,
                   self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)

    def copy_dtoh(self, dst, src_ptr, nbytes, stream):
        self._call("cudaMemcpyAsync", self.rt.cudaMemcpyAsync, dst.ptr, src_ptr, nbytes,
                   self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)

    def event_record(self, event, stream):
        self._call("cudaEventRecord", self.rt.cudaEventRecord, event, stream)

    def event_elapsed_ms(self, start, end):
        return self._call("cudaEventElapsedTime", self.rt.cudaEventElapsedTime, start, end)

    def stream_synchronize(self, stream):
        self._call("cudaStreamSynchronize", self.rt.cudaStreamSynchronize, stream)

    def begin_capture(self, stream):
        self._call("cudaStreamBeginCapture", self.rt.cudaStreamBeginCapture, stream,
                   self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal)

    def abort_capture(self, stream):
        """End a capture that is already failing, only to tidy up: errors here would hide the first one."""
        try:
            graph = self._call("cudaStreamEndCapture", self.rt.cudaStreamEndCapture, stream)
        except BackendError:
            return
        self._tidy(self.graph_destroy, graph)

    def end_capture(self, stream):
        graph = self._call("cudaStreamEndCapture", self.rt.cudaStreamEndCapture, stream)
        try:
            executable = self._instantiate(graph)
        except BaseException:  # the captured graph must not outlive a failed instantiation, whatever failed
            self._tidy(self.graph_destroy, graph)
            raise

        def release() -> None:
            self.graph_exec_destroy(executable)
            self.graph_destroy(graph)

        return executable, release

    def graph_exec_destroy(self, executable: Any) -> None:
        self._call("cudaGraphExecDestroy", self.rt.cudaGraphExecDestroy, executable)

    def graph_destroy(self, graph: Any) -> None:
        self._call("cudaGraphDestroy", self.rt.cudaGraphDestroy, graph)

    @staticmethod
    def _tidy(release: Callable[[Any], None], handle: Any) -> None:
        try:
            release(handle)
        except BackendError:
            pass  # already failing: the first error is the one to report

    def _instantiate(self, graph: Any) -> Any:
        """``cudaGraphInstantiateWithFlags(graph, flags)`` has one signature in every cuda-python (11.4+, 12, 13);
        plain ``cudaGraphInstantiate`` takes (graph, logBuffer, bufferSize) on 11.x and (graph, flags) after."""
        return self._call("cudaGraphInstantiateWithFlags", self.rt.cudaGraphInstantiateWithFlags, graph, 0)

    def graph_launch(self, graph, stream):
        self._call("cudaGraphLaunch", self.rt.cudaGraphLaunch, graph, stream)

    def bind_thread(self) -> None:
        self._call("cudaSetDevice", self.rt.cudaSetDevice, self.device)  # the current device is per thread

    def unbind_thread(self) -> None:
        pass

    def close(self) -> None:
        pass  # the runtime API's primary context stays with the process, as TensorRT expects

    def _runtime_version(self) -> tuple[int, str]:
        """(major, "major.minor") of the CUDA runtime these bindings carry: the CUDA the driver must support."""
        error, version = self.rt.cudaRuntimeGetVersion()
        if not _ok(self.rt, error):
            return 0, "unknown"
        return version // 1000, f"{version // 1000}.{version % 1000 // 10}"

    def _call(self, what: str, function: Callable[..., Any], *args: Any) -> Any:
        try:
            error, *values = function(*args)
        except RuntimeError as loader_error:  # 11.x raises when libcuda is absent ("Failed to dlopen libcuda.so.1")
            raise _cuda_error(what, f"no NVIDIA driver ({loader_error})", self.device) from loader_error
        if not _ok(self.rt, error):
            raise _cuda_error(what, _error_name(self.rt, error), self.device, bindings_major=self.major)
        _count_resource(what)
        return values[0] if len(values) == 1 else (tuple(values) or None)


# The cuda-python calls that create (+1) or destroy (-1) a resource, by kind: counted when they succeed, so that a check
# on a real GPU (benchmarks/gpu_check.py) sees pinned memory, streams, events and graphs that were never destroyed.
_RESOURCE_CALLS = {
    "cudaMalloc": ("device buffer", 1), "cudaFree": ("device buffer", -1),
    "cudaMallocHost": ("pinned host buffer", 1), "cudaFreeHost": ("pinned host buffer", -1),
    "cudaStreamCreateWithFlags": ("stream", 1), "cudaStreamDestroy": ("stream", -1),
    "cudaEventCreate": ("event", 1), "cudaEventDestroy": ("event", -1),
    "cudaStreamEndCapture": ("graph", 1), "cudaGraphDestroy": ("graph", -1),
    "cudaGraphInstantiateWithFlags": ("graph exec", 1), "cudaGraphExecDestroy": ("graph exec", -1),
}
_live = Counter[str]()
_live_lock = threading.Lock()  # the pipeline creates and frees on its own thread


def live_resources() -> dict[str, int]:
    """How many of each kind (``_RESOURCE_CALLS``) cuda-python has created and not destroyed, in this process, over
    every ``Cuda`` together; kinds at zero are left out. pycuda's are not counted (it frees streams and events with
    their Python objects)."""
    with _live_lock:
        return {kind: count for kind, count in _live.items() if count}


def _count_resource(call: str) -> None:
    kind_change = _RESOURCE_CALLS.get(call)
    if kind_change is not None:
        with _live_lock:
            _live[kind_change[0]] += kind_change[1]


def _ok(runtime: Any, error: Any) -> bool:
    return error == runtime.cudaError_t.cudaSuccess


def _error_name(runtime: Any, error: Any) -> str:
    try:
        status, name = runtime.cudaGetErrorName(error)
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # an unknown code must still produce a message
        return str(error)


def handle_value(handle: Any) -> int:
    """The raw pointer value of a cuda-python handle (``cudaStream_t``...): read through ``getPtr()``, the address
    of the value, because ``int(handle)`` is deprecated in cuda-bindings 13; plain ints pass through."""
    if isinstance(handle, int):
        return handle
    if hasattr(handle, "getPtr"):
        return ctypes.c_void_p.from_address(int(handle.getPtr())).value or 0
    return int(handle)


def _cuda_error(what: str, reason: str, device: int, bindings_major: int | None = None) -> BackendError:
    if "InsufficientDriver" in reason or "INSUFFICIENT_DRIVER" in reason:
        from mlic_edge.runtime.engines.gpu import cuda_python_mismatch, cuda_python_requirement, driver_cuda_version

        driver = driver_cuda_version()
        mismatch = cuda_python_mismatch(bindings_major, driver)
        if mismatch and driver is not None:
            return BackendError(f"CUDA {what} failed on device {device}: {reason}: {mismatch}",
                                hint=f"pip install '{cuda_python_requirement(driver)}' (the cuda-python of this "
                                     "driver's CUDA), or update the NVIDIA driver")
        hint = ("no NVIDIA driver is loaded here (check nvidia-smi); run the ONNX with --backend onnxruntime"
                if driver is None else "update the NVIDIA driver, or install the cuda-python of its CUDA major "
                                       "(mlic-edge doctor names it)")
    elif any(word in reason for word in ("NoDevice", "NO_DEVICE", "no CUDA-capable", "no NVIDIA driver")):
        hint = "no usable NVIDIA GPU or driver here (check nvidia-smi); run the ONNX with --backend onnxruntime"
    elif "MemoryAllocation" in reason or "OUT_OF_MEMORY" in reason:
        hint = f"GPU {device} is out of memory: use a smaller --batch or stop other GPU work"
    else:
        hint = "check the NVIDIA driver with nvidia-smi; CUDA_LAUNCH_BLOCKING=1 shows which call failed first"
    return BackendError(f"CUDA {what} failed on device {device}: {reason}", hint=hint)


__all__ = ["Cuda", "DeviceBuffer", "Event", "Graph", "HostBuffer", "INSTALL_HINT", "Resource", "Stream",
           "cuda_python_api", "live_resources", "open_cuda", "pycuda_api"]
