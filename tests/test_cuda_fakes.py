"""The fake CUDA modules (tests/cuda_fakes.py) hold to the real ones: the fake pycuda exposes only names the real
pycuda.driver has, with their signatures (recorded from pycuda's source: tests/api_surfaces/pycuda-*.json); the fake
cudart takes the real functions' parameters and hands out the real handle types; and through the CUDA layer they
behave as a device does: event times follow event order (a swapped pair is refused by the layer), a time read before
the synchronize is not ready, a handle of the wrong kind is refused, capture rules hold, and whatever a test leaves
unreleased fails its leak report."""

from __future__ import annotations

import contextlib
import inspect
import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from cuda_fakes import H2D_MS, FakeGpu, fake_cudart, fake_pycuda, no_leaks, real_cudart
from mlic_edge.errors import BackendError
from mlic_edge.runtime.inference.cuda import Cuda, Stream, cuda_python_api, pycuda_api

SURFACES = sorted((Path(__file__).parent / "api_surfaces").glob("pycuda-*.json"))
KEPT_DUNDERS = ("__init__", "__int__", "__index__")  # the fakes' other dunders are Python's, not pycuda's


@pytest.fixture(autouse=True)
def cuda_released():
    with no_leaks():
        yield


def open_fake(binding: str, gpu: FakeGpu) -> Cuda:
    return cuda_python_api(fake_cudart(gpu)) if binding == "cuda-python" else pycuda_api(fake_pycuda(gpu))


@contextlib.contextmanager
def fake_cuda(binding: str) -> Iterator[Cuda]:
    """A ``Cuda`` over a fake, the device current on this thread (pycuda needs it) until it is closed."""
    with open_fake(binding, FakeGpu()) as cuda, cuda.on_this_thread():
        yield cuda


# --- pycuda: the recorded surface -----------------------------------------------------------------------------
def _parameters(function: Any, method: bool) -> list[tuple[str | None, bool, bool]]:
    """(name if it may be passed by keyword, keyword, optional) of each parameter after self."""
    found = list(inspect.signature(function).parameters.values())[1 if method else 0:]
    return [(parameter.name if parameter.kind != parameter.POSITIONAL_ONLY else None,
             parameter.kind != parameter.POSITIONAL_ONLY, parameter.default is not parameter.empty)
            for parameter in found]


def _recorded(parameters: list[dict[str, Any]]) -> list[tuple[str | None, bool, bool]]:
    return [(parameter["name"] if parameter["keyword"] else None, parameter["keyword"], parameter["optional"])
            for parameter in parameters]


def _class_members(surface: dict[str, Any], name: str) -> dict[str, Any]:
    """A class's recorded members with its bases'."""
    recorded = surface["members"][name]
    members = {}
    for base in recorded.get("bases", []):
        members.update(_class_members(surface, base))
    return {**members, **recorded["members"]}


def _fake_class_members(cls: type) -> dict[str, Any]:
    defined = {name: value for klass in reversed(cls.__mro__[:-1]) for name, value in vars(klass).items()}
    return {name: value for name, value in defined.items() if not name.startswith("_") or name in KEPT_DUNDERS}


@pytest.mark.parametrize("surface_file", SURFACES, ids=lambda path: path.stem)
def test_fake_pycuda_exposes_only_the_real_surface(surface_file):
    surface = json.loads(surface_file.read_text())
    real = surface["members"]
    module = fake_pycuda(FakeGpu())
    wrong = []
    for name, value in vars(module).items():
        recorded = real.get(name)
        if recorded is None:
            wrong.append(f"{name}: not in pycuda.driver")
        elif isinstance(value, type) and issubclass(value, BaseException):
            bases = [base.__name__ for base in value.__bases__ if base is not Exception]
            if recorded["kind"] != "exception" or bases != recorded["bases"]:
                wrong.append(f"{name}: an exception with bases {bases}; pycuda's: {recorded}")
        elif isinstance(value, type):
            wrong += [f"{name}.{problem}" for problem in _class_differences(surface, name, value)]
        elif recorded["kind"] != "function":
            wrong.append(f"{name}: a function here, a {recorded['kind']} in pycuda")
        elif _parameters(value, method=False) != _recorded(recorded["params"]):
            wrong.append(f"{name}{inspect.signature(value)}: pycuda's takes {recorded['params']}")
    assert not wrong, "the fake pycuda differs from pycuda " + surface["version"] + ":\n" + "\n".join(wrong)


def _class_differences(surface: dict[str, Any], name: str, cls: type) -> list[str]:
    if surface["members"][name]["kind"] != "class":
        return [f": a class here, a {surface['members'][name]['kind']} in pycuda"]
    real = _class_members(surface, name)
    wrong = []
    for member, value in _fake_class_members(cls).items():
        recorded = real.get(member)
        if recorded is None:
            if member != "__init__":  # pycuda makes this class only through its functions (py::no_init)
                wrong.append(f"{member}: not in pycuda's {name}")
            continue
        if isinstance(value, property):
            if recorded["kind"] != "property" or (value.fset is not None) != recorded["writable"]:
                wrong.append(f"{member}: a property (writable: {value.fset is not None}); pycuda's: {recorded}")
            continue
        static = isinstance(value, staticmethod)
        if recorded["kind"] != ("staticmethod" if static else "method"):
            wrong.append(f"{member}: {'static' if static else 'a method'} here; pycuda's: {recorded['kind']}")
            continue
        signatures = recorded.get("signatures") or [recorded.get("params")]
        function = value.__func__ if static else value
        if _parameters(function, method=not static) not in [_recorded(signature) for signature in signatures]:
            wrong.append(f"{member}{inspect.signature(function)}: pycuda's takes {signatures}")
    return wrong


def test_the_recorded_pycuda_surface_has_what_the_cuda_layer_calls():
    """The names runtime/inference/cuda.py's pycuda driver uses, read from its source, are in the recorded surface
    (so the surface test above covers every call the layer makes)."""
    source = (Path(__file__).parents[1] / "runtime" / "inference" / "cuda.py").read_text()
    pycuda_part = source[source.index("class _PyCudaDriver"):source.index("class _CudaPythonDriver")]
    used = set(re.findall(r"\b(?:self\.cuda|driver)\.(\w+)", pycuda_part))
    for surface_file in SURFACES:
        recorded = json.loads(surface_file.read_text())["members"]
        assert used <= set(recorded), used - set(recorded)
        assert used <= set(vars(fake_pycuda(FakeGpu()))), "the fake lacks a name the layer calls"


# --- cuda-python: the real functions' parameters and types ----------------------------------------------------
def test_fake_cudart_takes_the_real_functions_parameters():
    runtime = real_cudart()
    fake = fake_cudart(FakeGpu())
    wrong = {}
    for name, function in vars(fake).items():
        real = getattr(runtime, name)
        if not callable(function) or isinstance(real, type) or function is real:
            continue
        real_names = [part.split(":")[0].split()[-1] for part in
                      re.match(rf"{name}\((.*)\)", real.__doc__.split("\n", 1)[0])[1].split(",") if part.strip()]
        if list(inspect.signature(function).parameters) != real_names:
            wrong[name] = (str(inspect.signature(function)), real_names)
    assert not wrong


def test_fake_cudart_hands_out_the_real_handle_types():
    runtime, gpu = real_cudart(), FakeGpu()
    cuda = cuda_python_api(fake_cudart(gpu))
    with cuda:
        stream, event = cuda.stream(), cuda.event()
        device, host = cuda.device_buffer(16), cuda.host_buffer(16)
        graph = cuda.capture(stream, lambda: cuda.copy_to_device(device, host, 16, stream))
        assert isinstance(stream.handle, runtime.cudaStream_t) and isinstance(event.handle, runtime.cudaEvent_t)
        assert isinstance(graph.handle, runtime.cudaGraphExec_t)
        assert type(device.ptr) is int and type(host.ptr) is int
        assert type(stream.ptr) is int and stream.ptr == int(stream.handle)  # the raw value TensorRT takes


# --- behaviour through the CUDA layer -------------------------------------------------------------------------
def timed_copy(cuda: Cuda, synchronize: bool = True):
    stream, start, end = cuda.stream(), cuda.event(), cuda.event()
    device, host = cuda.device_buffer(64), cuda.host_buffer(64)
    cuda.record(start, stream)
    cuda.copy_to_device(device, host, 64, stream)
    cuda.record(end, stream)
    if synchronize:
        cuda.synchronize(stream)
    return start, end


@pytest.mark.parametrize("binding", ["cuda-python", "pycuda"])
def test_event_times_follow_event_order_and_the_layer_refuses_a_swapped_pair(binding):
    with fake_cuda(binding) as cuda:
        start, end = timed_copy(cuda)
        assert cuda.elapsed_ms(start, end) == H2D_MS
        with pytest.raises(BackendError, match="out of order") as caught:
            cuda.elapsed_ms(end, start)
        assert f"-{H2D_MS}" in caught.value.message and "bug in mlic-edge" in caught.value.hint
        with pytest.raises(BackendError, match="out of order"):  # nothing between them: zero is no time either
            cuda.elapsed_ms(start, start)


@pytest.mark.parametrize("binding", ["cuda-python", "pycuda"])
def test_an_event_time_before_the_synchronize_is_not_ready(binding):
    with fake_cuda(binding) as cuda:
        start, end = timed_copy(cuda, synchronize=False)
        with pytest.raises(BackendError, match="cudaErrorNotReady|device not ready"):
            cuda.elapsed_ms(start, end)
        never_recorded = cuda.event()
        with pytest.raises(BackendError, match="cudaErrorInvalidResourceHandle|invalid resource handle"):
            cuda.elapsed_ms(start, never_recorded)


def test_a_handle_of_the_wrong_kind_is_refused_and_an_int_of_the_right_one_taken():
    """cuda-python converts a handle argument from any int (as a real GPU would take it), so the value decides:
    an event's where a stream goes is an invalid handle; pycuda takes only its Stream (an int is a TypeError)."""
    runtime = fake_cudart(FakeGpu())
    error, stream = runtime.cudaStreamCreateWithFlags(runtime.cudaStreamNonBlocking)
    error, event = runtime.cudaEventCreate()
    assert runtime.cudaStreamSynchronize(int(stream)) == (runtime.cudaError_t.cudaSuccess,)
    assert runtime.cudaStreamSynchronize(event) == (runtime.cudaError_t.cudaErrorInvalidResourceHandle,)
    with pytest.raises(TypeError):
        runtime.cudaStreamSynchronize("stream")
    assert runtime.cudaEventDestroy(event) == runtime.cudaStreamDestroy(stream) == (runtime.cudaError_t.cudaSuccess,)
    assert runtime.cudaStreamDestroy(stream) == (runtime.cudaError_t.cudaErrorInvalidResourceHandle,)  # twice
    with fake_cuda("pycuda") as cuda:
        stream, device, host = cuda.stream(), cuda.device_buffer(8), cuda.host_buffer(8)
        with pytest.raises(TypeError, match="Stream"):
            cuda._driver.cuda.memcpy_htod_async(device.ptr, host.array, stream.ptr)


def test_capture_rules_hold():
    """Under global capture mode, synchronizing the captured stream, allocating or using the legacy default stream
    fails and invalidates the capture; the layer tidies up the failed capture, so nothing is left."""
    with cuda_python_api(fake_cudart(FakeGpu())) as cuda:
        stream, device, host = cuda.stream(), cuda.device_buffer(8), cuda.host_buffer(8)
        with pytest.raises(BackendError, match="cudaStreamSynchronize failed .*cudaErrorStreamCaptureUnsupported"):
            cuda.capture(stream, lambda: cuda.synchronize(stream))
        with pytest.raises(BackendError, match="cudaMalloc failed .*cudaErrorStreamCaptureUnsupported"):
            cuda.capture(stream, lambda: cuda.device_buffer(8))
        legacy = Stream("stream", None)
        with pytest.raises(BackendError, match="cudaMemcpyAsync failed .*cudaErrorStreamCaptureImplicit"):
            cuda.capture(stream, lambda: cuda.copy_to_device(device, host, 8, legacy))


def test_work_on_another_stream_is_not_timed_by_this_one():
    """Streams run side by side: a copy enqueued on another non-blocking stream takes no time between two events of
    this one, so the layer refuses the zero it would time."""
    with fake_cuda("cuda-python") as cuda:
        stream, elsewhere, start, end = cuda.stream(), cuda.stream(), cuda.event(), cuda.event()
        device, host = cuda.device_buffer(8), cuda.host_buffer(8)
        cuda.record(start, stream)
        cuda.copy_to_device(device, host, 8, elsewhere)
        cuda.record(end, stream)
        cuda.synchronize(stream)
        with pytest.raises(BackendError, match="timed 0.0 ms"):
            cuda.elapsed_ms(start, end)


@pytest.mark.parametrize("binding", ["cuda-python", "pycuda"])
def test_what_is_not_released_fails_the_leak_report(binding):
    with pytest.raises(pytest.fail.Exception, match=r"1 stream \(of 1 created\)"):
        with no_leaks():
            cuda = open_fake(binding, FakeGpu())
            with cuda.on_this_thread():
                cuda.stream()  # never closed
    gpu = FakeGpu()
    with no_leaks():
        cuda = open_fake(binding, gpu)
        with cuda.on_this_thread():
            cuda.stream()
        cuda.close()
    assert gpu.leak_report() == "" and gpu.created == gpu.destroyed == {"stream": 1}
