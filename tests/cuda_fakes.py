"""Fake CUDA for tests without a GPU: cuda-python's runtime module (``fake_cudart``) and ``pycuda.driver``
(``fake_pycuda``) over one ``FakeGpu``, modelling the behaviour runtime/inference/cuda.py relies on, not only the
names it calls:

- handles of the real types: the fake cudart hands out the installed cuda-python's own ``cudaStream_t``,
  ``cudaEvent_t``, ``cudaGraph_t`` and ``cudaGraphExec_t`` (they are made without a driver), ints for device and
  pinned pointers, its enums and error codes, and converts arguments as the bindings do (a handle may come as the int
  of its value, a str is a TypeError). pycuda's stream arguments must be its ``Stream`` (an int is a TypeError, as
  Boost.Python's converter raises). A handle of the wrong kind or a destroyed one is an invalid resource handle.
- stream order and time: work enqueued on a stream runs at once (its data effect), or is recorded while that stream
  is captured; on the device's timeline it starts when its stream's earlier work is done (a host-to-device copy,
  TensorRT's execution and a device-to-host copy each take their own time), streams running side by side except that
  the legacy default stream and blocking streams wait for each other. An event takes its stream's time when the
  stream reaches it and is complete once that stream is synchronized, so the elapsed time is end - start (negative
  when swapped, zero when the work went to another stream), NotReady before the synchronize and an invalid resource
  handle for an event never recorded. While a stream captures in global mode, allocating, freeing, synchronizing the
  captured stream or using the legacy stream fails and invalidates the capture.
- pairing: every create and allocation is counted until its destroy or free, per ``FakeGpu``; ``no_leaks()`` fails
  the test that made a fake GPU and left any (pycuda's primary-context references included).
pycuda's names and signatures are held to the real pycuda's by tests/test_cuda_fakes.py, through the surface recorded
in tests/api_surfaces/pycuda-*.json.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import itertools
import operator
import threading
import warnings
from collections import Counter
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np
import pytest

# Fake durations: distinct powers of two, so sums are exact and any pair of events gives its own time.
H2D_MS, EXECUTE_MS, D2H_MS, OTHER_COPY_MS = 0.5, 1.0, 0.125, 0.25
# cudaStreamLegacy and cudaStreamPerThread besides 0: the implicit streams, never created or destroyed. 0 and 1 are
# the legacy default stream, which waits for every blocking stream and they for it (a non-blocking one runs beside it).
DEFAULT_STREAMS, LEGACY_STREAMS, BLOCKING = (0, 1, 2), (0, 1), 0
KINDS = ("stream", "event", "graph", "graph exec", "device memory", "pinned host memory")
_tracked: list[FakeGpu] | None = None  # the fake GPUs made under no_leaks()


class FakeCudaError(Exception):
    """A CUDA error the fake device returns, by its runtime API name (each fake module reports it its own way)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass
class FakeEvent:
    time_ms: float | None = None  # when its stream reached it on the device's timeline; None until then
    stream: int | None = None
    complete: bool = False


@dataclass
class Capture:
    mode: int
    work: list
    invalidated: bool = False


class FakeGpu:
    """One fake device: device and pinned memory are host RAM, kept apart (a copy in the wrong direction fails), and
    every stream, event, graph, executable graph and allocation is a table entry from its create to its destroy."""

    def __init__(self) -> None:
        self.memory: dict[str, dict[int, np.ndarray]] = {"device memory": {}, "pinned host memory": {}}
        self.streams: dict[int, Any] = {}
        self.events: dict[int, FakeEvent] = {}
        self.graphs: dict[int, list] = {}
        self.executables: dict[int, list] = {}
        self.captures: dict[int, Capture] = {}
        self.stream_time: dict[int, float] = {}  # when each stream's work enqueued so far is done
        self.launches = 0
        self.retained = 0  # primary context references (pycuda)
        self.initialized = False  # cuInit (pycuda)
        self.log: list[str] = []
        self.created: Counter[str] = Counter()
        self.destroyed: Counter[str] = Counter()
        self._handles = itertools.count(0x7F00_0000_1000, 0x100)  # one sequence: a value names one resource
        if _tracked is not None:
            _tracked.append(self)

    # --- creation and release, counted by kind ----------------------------------------------------------------
    def create(self, kind: str, table: dict[int, Any], value: Any) -> int:
        handle = next(self._handles)
        table[handle] = value
        self.created[kind] += 1
        return handle

    def destroy(self, kind: str, table: dict[int, Any], handle: int) -> None:
        if handle not in table:
            raise FakeCudaError("cudaErrorInvalidResourceHandle")
        del table[handle]
        self.destroyed[kind] += 1

    def alloc(self, kind: str, nbytes: int) -> int:
        self.check_no_global_capture()
        if nbytes == 0:
            return 0
        block = np.zeros(nbytes, np.uint8)
        self.memory[kind][block.ctypes.data] = block
        self.created[kind] += 1
        return block.ctypes.data

    def free(self, kind: str, ptr: int) -> None:
        self.check_no_global_capture()
        if ptr == 0:
            return
        if ptr not in self.memory[kind]:
            raise FakeCudaError("cudaErrorInvalidValue")
        del self.memory[kind][ptr]
        self.destroyed[kind] += 1

    @property
    def blocks(self) -> dict[int, np.ndarray]:
        return {**self.memory["device memory"], **self.memory["pinned host memory"]}

    def leak_report(self) -> str:
        """What was created and never released, one phrase per kind; empty when nothing was."""
        live = [f"{self.created[kind] - self.destroyed[kind]} {kind} (of {self.created[kind]} created)"
                for kind in KINDS if self.created[kind] > self.destroyed[kind]]
        if self.retained:
            live.append(f"{self.retained} primary context reference(s) never released")
        return ", ".join(live)

    # --- memory ----------------------------------------------------------------------------------------------
    def holds(self, kind: str, ptr: int, nbytes: int) -> bool:
        return any(start <= ptr and ptr + nbytes <= start + block.nbytes
                   for start, block in self.memory[kind].items())

    def view(self, ptr: int, nbytes: int, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        """Device memory as an array, for work that runs on the device (TensorRT's execution)."""
        assert self.holds("device memory", ptr, nbytes), f"{nbytes} bytes at {ptr:#x} are not device memory"
        return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr)).view(dtype).reshape(shape)

    def copy_async(self, dst: int, src: int, nbytes: int, kinds: tuple[str, str], stream: int, ms: float) -> None:
        if not (self.holds(kinds[0], dst, nbytes) and self.holds(kinds[1], src, nbytes)):
            raise FakeCudaError("cudaErrorInvalidValue")
        self.enqueue(stream, lambda: ctypes.memmove(dst, src, nbytes), ms)

    # --- streams, events, graphs -------------------------------------------------------------------------------
    def check_stream(self, stream: int) -> int:
        if stream not in self.streams and stream not in DEFAULT_STREAMS:
            raise FakeCudaError("cudaErrorInvalidResourceHandle")
        return stream

    def new_stream(self, flags: int) -> int:
        stream = self.create("stream", self.streams, flags)
        self.stream_time[stream] = max(self.stream_time.values(), default=0.0)  # it starts now
        return stream

    def destroy_stream(self, stream: int) -> None:
        self.destroy("stream", self.streams, stream)
        del self.stream_time[stream]

    def start_time(self, stream: int) -> float:
        """When work enqueued now on ``stream`` starts on the device's timeline."""
        waits_for = [stream]
        if stream in LEGACY_STREAMS:
            waits_for += [other for other, flags in self.streams.items() if flags == BLOCKING]
        elif self.streams.get(stream) == BLOCKING:
            waits_for += LEGACY_STREAMS
        return max(self.stream_time.get(other, 0.0) for other in waits_for)

    def enqueue(self, stream: Any, work: Callable[[], Any], ms: float = EXECUTE_MS) -> None:
        """Do ``work`` and take ``ms`` on ``stream``'s timeline, or record both while the stream is captured.
        ``stream`` is the raw stream value, as TensorRT takes it."""
        stream = self.check_stream(operator.index(stream))
        capture = self.captures.get(stream)
        if capture is not None:
            capture.work.append((work, ms))
            return
        if stream in LEGACY_STREAMS:
            self.check_no_global_capture("cudaErrorStreamCaptureImplicit")
        start = self.start_time(stream)
        work()
        self.stream_time[stream] = start + ms

    def event(self, event: int) -> FakeEvent:
        if event not in self.events:
            raise FakeCudaError("cudaErrorInvalidResourceHandle")
        return self.events[event]

    def record(self, event: int, stream: int) -> None:
        recorded = self.event(event)
        if stream in self.captures:
            raise NotImplementedError("the fake captures no event records")
        if stream in LEGACY_STREAMS:
            self.check_no_global_capture("cudaErrorStreamCaptureImplicit")
        recorded.time_ms, recorded.stream, recorded.complete = self.start_time(stream), stream, False

    def synchronize(self, stream: int) -> None:
        capture = self.captures.get(self.check_stream(stream))
        if capture is not None:
            capture.invalidated = True
            raise FakeCudaError("cudaErrorStreamCaptureUnsupported")
        for event in self.events.values():
            if event.stream == stream:
                event.complete = True

    def elapsed_ms(self, start: int, end: int) -> float:
        first, last = self.event(start), self.event(end)
        if first.time_ms is None or last.time_ms is None:
            raise FakeCudaError("cudaErrorInvalidResourceHandle")
        if not (first.complete and last.complete):
            raise FakeCudaError("cudaErrorNotReady")
        return last.time_ms - first.time_ms

    def begin_capture(self, stream: int, mode: int) -> None:
        if self.check_stream(stream) in DEFAULT_STREAMS:
            raise FakeCudaError("cudaErrorStreamCaptureUnsupported")
        if stream in self.captures:
            raise FakeCudaError("cudaErrorIllegalState")
        self.captures[stream] = Capture(mode, [])

    def end_capture(self, stream: int) -> int:
        capture = self.captures.pop(self.check_stream(stream), None)
        if capture is None:
            raise FakeCudaError("cudaErrorIllegalState")
        if capture.invalidated:
            raise FakeCudaError("cudaErrorStreamCaptureInvalidated")
        return self.create("graph", self.graphs, capture.work)

    def check_no_global_capture(self, error: str = "cudaErrorStreamCaptureUnsupported") -> None:
        """In global capture mode (the layer's), calls that may synchronize the device fail while a stream captures,
        and the capture is invalidated."""
        global_captures = [capture for capture in self.captures.values() if capture.mode == 0]
        for capture in global_captures:
            capture.invalidated = True
        if global_captures:
            raise FakeCudaError(error)


# --- cuda-python ----------------------------------------------------------------------------------------------
def real_cudart() -> Any:
    """The installed cuda-python's runtime module: its types, enums and error names need no driver."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        pytest.skip("the fake cudart takes its types from cuda-python: pip install cuda-bindings")
    return runtime


def _handle(handle_type: type, handle: Any) -> int:
    """A handle argument as cuda-python converts it: None is 0, anything else through the handle type (an int of its
    value or another handle; a str raises TypeError)."""
    return 0 if handle is None else int(handle_type(handle))


def _pointer(value: Any) -> int:
    """A pointer argument as cuda-python converts it: None, an int, or an object with the buffer protocol."""
    if value is None:
        return 0
    if hasattr(type(value), "__index__"):
        return operator.index(value)
    try:
        return np.frombuffer(memoryview(value), np.uint8).ctypes.data
    except TypeError:
        raise TypeError(f"Provided argument is of type {type(value)} but expected Type None, int or object with "
                        "Buffer Protocol") from None


def _size_t(value: Any) -> int:
    if isinstance(value, float):
        raise TypeError("an integer is required")
    value = operator.index(value)
    if value < 0:
        raise OverflowError("can't convert negative value to size_t")
    return value


def fake_cudart(gpu: FakeGpu) -> SimpleNamespace:
    """The slice of cuda-python's ``cuda.bindings.runtime`` that runtime/inference/cuda.py calls: each function takes
    the real one's arguments and returns (cudaError_t, value) as it does, None for the value on an error."""
    runtime = real_cudart()
    status = runtime.cudaError_t
    functions: dict[str, Callable[..., tuple]] = {}

    def function(outputs: int) -> Callable[[Callable[..., Any]], Callable[..., tuple]]:
        def define(body: Callable[..., Any]) -> Callable[..., tuple]:
            @functools.wraps(body)
            def call(*args: Any) -> tuple:
                gpu.log.append(body.__name__)
                try:
                    value = body(*args)
                except FakeCudaError as error:
                    return (getattr(status, error.name),) + (None,) * outputs
                return (status.cudaSuccess,) + ((value,) if outputs else ())
            functions[body.__name__] = call
            return call
        return define

    def stream_of(handle: Any) -> int:
        return gpu.check_stream(_handle(runtime.cudaStream_t, handle))

    def device_of(device: Any) -> None:
        if isinstance(device, float):
            raise TypeError("an integer is required")
        if operator.index(device) != 0:
            raise FakeCudaError("cudaErrorInvalidDevice")

    @function(outputs=1)
    def cudaRuntimeGetVersion() -> int:
        return runtime.cudaRuntimeGetVersion()[1]

    @function(outputs=1)
    def cudaGetDeviceCount() -> int:
        return 1

    @function(outputs=0)
    def cudaSetDevice(device):
        device_of(device)

    @function(outputs=1)
    def cudaGetDeviceProperties(device):
        device_of(device)
        properties = runtime.cudaDeviceProp()
        properties.name = b"Fake GPU".ljust(256, b"\x00")
        return properties

    @function(outputs=1)
    def cudaStreamCreateWithFlags(flags):
        return runtime.cudaStream_t(gpu.new_stream(_size_t(flags)))

    @function(outputs=0)
    def cudaStreamDestroy(stream):
        gpu.destroy_stream(_handle(runtime.cudaStream_t, stream))

    @function(outputs=0)
    def cudaStreamSynchronize(stream):
        gpu.synchronize(stream_of(stream))

    @function(outputs=1)
    def cudaMalloc(size):
        return gpu.alloc("device memory", _size_t(size))

    @function(outputs=0)
    def cudaFree(devPtr):
        gpu.free("device memory", _pointer(devPtr))

    @function(outputs=1)
    def cudaMallocHost(size):
        return gpu.alloc("pinned host memory", _size_t(size))

    @function(outputs=0)
    def cudaFreeHost(ptr):
        gpu.free("pinned host memory", _pointer(ptr))

    @function(outputs=0)
    def cudaMemcpyAsync(dst, src, count, kind, stream):
        dst, src, count, kind, stream = _pointer(dst), _pointer(src), _size_t(count), int(kind), stream_of(stream)
        kinds = runtime.cudaMemcpyKind
        directions = {kinds.cudaMemcpyHostToDevice: (("device memory", "pinned host memory"), H2D_MS),
                      kinds.cudaMemcpyDeviceToHost: (("pinned host memory", "device memory"), D2H_MS),
                      kinds.cudaMemcpyDeviceToDevice: (("device memory", "device memory"), OTHER_COPY_MS),
                      kinds.cudaMemcpyHostToHost: (("pinned host memory", "pinned host memory"), OTHER_COPY_MS)}
        if kind == kinds.cudaMemcpyDefault:
            raise NotImplementedError("the fake infers no direction: pass the kind the layer means")
        if kind not in directions:
            raise FakeCudaError("cudaErrorInvalidMemcpyDirection")
        memory, ms = directions[kind]
        gpu.copy_async(dst, src, count, memory, stream, ms)

    @function(outputs=1)
    def cudaEventCreate():
        return runtime.cudaEvent_t(gpu.create("event", gpu.events, FakeEvent()))

    @function(outputs=0)
    def cudaEventDestroy(event):
        gpu.destroy("event", gpu.events, _handle(runtime.cudaEvent_t, event))

    @function(outputs=0)
    def cudaEventRecord(event, stream):
        gpu.record(_handle(runtime.cudaEvent_t, event), stream_of(stream))

    @function(outputs=1)
    def cudaEventElapsedTime(start, end):
        return gpu.elapsed_ms(_handle(runtime.cudaEvent_t, start), _handle(runtime.cudaEvent_t, end))

    @function(outputs=0)
    def cudaStreamBeginCapture(stream, mode):
        mode = int(mode)
        if mode not in set(runtime.cudaStreamCaptureMode):
            raise FakeCudaError("cudaErrorInvalidValue")
        gpu.begin_capture(stream_of(stream), mode)

    @function(outputs=1)
    def cudaStreamEndCapture(stream):
        return runtime.cudaGraph_t(gpu.end_capture(stream_of(stream)))

    @function(outputs=1)
    def cudaGraphInstantiateWithFlags(graph, flags):
        _size_t(flags)
        work = gpu.graphs.get(_handle(runtime.cudaGraph_t, graph))
        if work is None:
            raise FakeCudaError("cudaErrorInvalidValue")
        return runtime.cudaGraphExec_t(gpu.create("graph exec", gpu.executables, list(work)))

    @function(outputs=0)
    def cudaGraphLaunch(graphExec, stream):
        work = gpu.executables.get(_handle(runtime.cudaGraphExec_t, graphExec))
        if work is None:
            raise FakeCudaError("cudaErrorInvalidResourceHandle")
        stream = stream_of(stream)
        gpu.launches += 1
        for step, ms in work:
            gpu.enqueue(stream, step, ms)

    @function(outputs=0)
    def cudaGraphExecDestroy(graphExec):
        gpu.destroy("graph exec", gpu.executables, _handle(runtime.cudaGraphExec_t, graphExec))

    @function(outputs=0)
    def cudaGraphDestroy(graph):
        gpu.destroy("graph", gpu.graphs, _handle(runtime.cudaGraph_t, graph))

    return SimpleNamespace(
        **functions, cudaError_t=status, cudaGetErrorName=runtime.cudaGetErrorName,
        cudaMemcpyKind=runtime.cudaMemcpyKind, cudaStreamCaptureMode=runtime.cudaStreamCaptureMode,
        cudaStreamNonBlocking=runtime.cudaStreamNonBlocking)


# --- pycuda ---------------------------------------------------------------------------------------------------
# CUDA's own descriptions (cuGetErrorString) of the errors the fake device returns, as pycuda words its messages.
_DRIVER_DESCRIPTIONS = {
    "cudaErrorInvalidResourceHandle": "invalid resource handle", "cudaErrorInvalidValue": "invalid argument",
    "cudaErrorNotReady": "device not ready", "cudaErrorInvalidContext": "invalid device context",
    "cudaErrorInitializationError": "initialization error"}


def fake_pycuda(gpu: FakeGpu) -> SimpleNamespace:
    """The slice of ``pycuda.driver`` that runtime/inference/cuda.py calls, with pycuda's semantics (src/cpp/cuda.hpp):
    ``init()`` before anything; a stack of current contexts per thread, ``Context.pop`` static and popping the calling
    thread's top; memory, streams and events need a current context; ``free()`` and the destructors activate the
    owning context (pushed only on the thread that made it: elsewhere the object leaks with a warning, and after the
    context was detached it leaks silently); ``detach()`` releases the primary context when current (and pops it).
    Stream arguments must be a ``Stream`` or None."""
    local = threading.local()

    class Error(Exception):
        pass

    class LogicError(Error):
        pass

    class DriverRuntimeError(Error):  # pycuda._driver.RuntimeError: NOT_READY and the like
        pass

    DriverRuntimeError.__name__ = DriverRuntimeError.__qualname__ = "RuntimeError"

    def failed(routine: str, name: str) -> Error:
        error_type = DriverRuntimeError if name == "cudaErrorNotReady" else LogicError
        return error_type(f"{routine} failed: {_DRIVER_DESCRIPTIONS.get(name, name)}")

    def on_device(routine: str, work: Callable[[], Any]) -> Any:
        """One driver call: it needs cuInit and a current context, and its CUDA errors become pycuda's."""
        if not gpu.initialized:
            raise failed(routine, "cudaErrorInitializationError")
        if not stack():
            raise failed(routine, "cudaErrorInvalidContext")
        try:
            return work()
        except FakeCudaError as error:
            raise failed(routine, error.name) from None

    def stack() -> list:
        if not hasattr(local, "stack"):
            local.stack = []
        return local.stack

    def stream_value(stream: Any, function: str) -> int:
        if stream is None:
            return 0
        if not isinstance(stream, Stream):
            raise TypeError(f"Python argument types in {function} did not match C++ signature: the stream must be a "
                            f"pycuda.driver.Stream or None, not {type(stream).__name__}")
        return stream.handle

    class Context:
        def __init__(self) -> None:
            self._creator, self._valid = threading.get_ident(), True
            gpu.retained += 1

        def push(self, /) -> None:
            gpu.log.append("ctx.push")
            stack().append(self)

        @staticmethod
        def pop() -> None:
            if not stack():
                raise LogicError("context::pop failed: invalid device context - cannot pop non-current context")
            gpu.log.append("ctx.pop")
            stack().pop()

        def detach(self, /) -> None:
            if not self._valid:
                raise LogicError("context::detach failed: invalid device context - cannot detach from invalid context")
            active = bool(stack()) and stack()[-1] is self
            if active or threading.get_ident() == self._creator:
                gpu.retained -= 1  # cuDevicePrimaryCtxRelease
            if active:
                stack().pop()
            self._valid = False

    class ContextDependent:
        """Made in the current context; ``_release`` destroys it with that context activated, as pycuda's
        ``scoped_context_activation`` does."""

        _kind: str

        def __init__(self) -> None:
            self._context = stack()[-1] if stack() else None

        def _release(self, destroy: Callable[[], None]) -> None:
            context = self._context
            if context is None or not context._valid:
                return  # "cannot activate dead context": pycuda skips the cleanup without a word
            if (not stack() or stack()[-1] is not context) and threading.get_ident() != context._creator:
                warnings.warn(f"{self._kind} in out-of-thread context could not be cleaned up")
                return
            destroy()

    class Stream(ContextDependent):
        _kind = "stream"

        def __init__(self, flags: int = 0) -> None:
            super().__init__()
            self._handle = on_device("cuStreamCreate", lambda: gpu.new_stream(flags))

        @property
        def handle(self) -> int:
            return self._handle

        def synchronize(self, /) -> None:
            gpu.log.append("synchronize")
            on_device("cuStreamSynchronize", lambda: gpu.synchronize(self._handle))

        def __del__(self) -> None:
            if hasattr(self, "_handle"):
                self._release(lambda: gpu.destroy_stream(self._handle))

    class Event(ContextDependent):
        _kind = "event"

        def __init__(self, flags: int = 0) -> None:
            super().__init__()
            self._handle = on_device("cuEventCreate", lambda: gpu.create("event", gpu.events, FakeEvent()))

        def record(self, stream: Stream | None = None) -> Event:
            gpu.log.append("record")
            value = stream_value(stream, "Event.record")
            on_device("cuEventRecord", lambda: gpu.record(self._handle, value))
            return self

        def time_since(self, start: Event, /) -> float:
            if not isinstance(start, Event):
                raise TypeError(f"Python argument types in Event.time_since(Event, {type(start).__name__}) did not "
                                "match C++ signature")
            return on_device("cuEventElapsedTime", lambda: gpu.elapsed_ms(start._handle, self._handle))

        def __del__(self) -> None:
            if hasattr(self, "_handle"):
                self._release(lambda: gpu.destroy("event", gpu.events, self._handle))

    class Allocation(ContextDependent):
        _memory: str
        _routines: tuple[str, str]  # allocate, free

        def __init__(self, nbytes: int) -> None:
            super().__init__()
            self._ptr = on_device(self._routines[0], lambda: gpu.alloc(self._memory, nbytes))
            self._valid = True

        def free(self, /) -> None:
            if not self._valid:
                raise LogicError(f"{self._routines[1]} failed: invalid resource handle")
            gpu.log.append("mem_free")
            self._release(lambda: gpu.free(self._memory, self._ptr))
            self._valid = False

        def __del__(self) -> None:
            if getattr(self, "_valid", False):
                self.free()

    class DeviceAllocation(Allocation):
        _kind, _memory, _routines = "device_allocation", "device memory", ("cuMemAlloc", "cuMemFree")

        def __int__(self) -> int:
            return self._ptr

        __index__ = __int__

    class PagelockedHostAllocation(Allocation):
        _kind, _memory, _routines = "pagelocked_host_allocation", "pinned host memory", ("cuMemHostAlloc",
                                                                                           "cuMemFreeHost")

        def _array(self, shape: tuple[int, ...], dtype: np.dtype, order: str) -> np.ndarray:
            """The array over this memory, with this allocation as its ``base`` (pycuda makes it in C)."""
            strides = None if order == "C" else tuple(dtype.itemsize * int(np.prod(shape[:axis]))
                                                      for axis in range(len(shape)))
            self.__array_interface__ = {"shape": shape, "typestr": dtype.str, "data": (self._ptr, False),
                                        "strides": strides, "version": 3}
            return np.asarray(self)

    class Device:
        def __init__(self, ordinal: int, /) -> None:
            self._ordinal = ordinal

        @staticmethod
        def count() -> int:
            if not gpu.initialized:
                raise LogicError("cuDeviceGetCount failed: initialization error")
            return 1

        def name(self, /) -> str:
            return "Fake GPU"

        def retain_primary_context(self) -> Context:
            return Context()

    def init(flags: int = 0) -> None:
        gpu.initialized = True

    def mem_alloc(nbytes: int, /) -> DeviceAllocation:
        return DeviceAllocation(nbytes)

    def pagelocked_empty(shape: Any, dtype: Any, order: str = "C", mem_flags: int = 0) -> np.ndarray:
        shape = tuple(np.atleast_1d(shape).tolist())
        dtype = np.dtype(dtype)
        return PagelockedHostAllocation(int(np.prod(shape)) * dtype.itemsize)._array(shape, dtype, order)

    def device_pointer(dest: Any) -> int:
        if not isinstance(dest, (int, DeviceAllocation)):
            raise TypeError(f"no conversion of {type(dest).__name__} to CUdeviceptr")
        return int(dest)

    def contiguous(buffer: Any) -> np.ndarray:  # what PyBUF_ANY_CONTIGUOUS takes: the buffer's own bytes
        view = memoryview(buffer)
        if not view.contiguous:
            raise BufferError("ndarray is not contiguous")
        return np.frombuffer(view.cast("B"), np.uint8) if view.nbytes else np.empty(0, np.uint8)

    def memcpy_htod_async(dest: Any, src: Any, stream: Stream | None = None) -> None:
        source, value = contiguous(src), stream_value(stream, "memcpy_htod_async")
        copy = (device_pointer(dest), source.ctypes.data, source.nbytes, ("device memory", "pinned host memory"))
        on_device("cuMemcpyHtoDAsync", lambda: gpu.copy_async(*copy, value, H2D_MS))

    def memcpy_dtoh_async(dest: Any, src: Any, stream: Stream | None = None) -> None:
        target, value = contiguous(dest), stream_value(stream, "memcpy_dtoh_async")
        copy = (target.ctypes.data, device_pointer(src), target.nbytes, ("pinned host memory", "device memory"))
        on_device("cuMemcpyDtoHAsync", lambda: gpu.copy_async(*copy, value, D2H_MS))

    return SimpleNamespace(
        Error=Error, LogicError=LogicError, RuntimeError=DriverRuntimeError, get_version=lambda: (12, 6, 0),
        init=init, Device=Device, Context=Context, Stream=Stream, Event=Event, DeviceAllocation=DeviceAllocation,
        PagelockedHostAllocation=PagelockedHostAllocation, mem_alloc=mem_alloc, pagelocked_empty=pagelocked_empty,
        memcpy_htod_async=memcpy_htod_async, memcpy_dtoh_async=memcpy_dtoh_async)


# --- the leak report ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def no_leaks() -> Iterator[None]:
    """Fail (at the end of the block) when a ``FakeGpu`` made inside it still holds anything created and not
    released: a stream, event, graph, executable graph, device or pinned allocation, or a primary context."""
    global _tracked
    outer, _tracked = _tracked, []
    try:
        yield
        gc.collect()  # pycuda releases streams and events with their objects
        leaks = [report for gpu in _tracked if (report := gpu.leak_report())]
    finally:
        _tracked = outer
    if leaks:
        pytest.fail("CUDA resources never released: " + "; ".join(leaks), pytrace=False)
