"""TensorRT backend: both IO styles, batch-range refusal, buffer growth, release order and CUDA graphs, driven by fake
TensorRT and fake CUDA modules (device memory in host RAM); a real engine only on a GPU (marker ``gpu``)."""

from __future__ import annotations

import ctypes
import itertools
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mlic_edge.errors import BackendError
from mlic_edge.io import write_json
from mlic_edge.rundir import RunDir
from mlic_edge.runtime.backends.tensorrt_backend import TIMING_KEYS, TensorRTBackend, open_tensorrt_backend
from mlic_edge.runtime.cuda import cuda_python_api, open_cuda, pycuda_api
from mlic_edge.runtime.tensorrt.api import TensorRT

WEIGHTS = np.arange(12, dtype=np.float32).reshape(3, 4) / 10 - 0.5
INPUT_SHAPE = (3, 8, 8)
ENGINE_BYTES = b"fake engine"


def expected_scores(batch: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-(batch.mean(axis=(2, 3)) @ WEIGHTS)))


# --- fake GPU: device memory is host memory, graph capture records instead of running ---------------------------
class FakeGpu:
    def __init__(self) -> None:
        self.blocks: dict[int, np.ndarray] = {}
        self.log: list[str] = []
        self.capturing = None
        self.captured: list = []
        self.graphs: dict[int, list] = {}
        self.launches = 0
        self.ids = itertools.count(100)

    def alloc(self, nbytes: int) -> int:
        block = np.zeros(nbytes, np.uint8)
        self.blocks[block.ctypes.data] = block
        return block.ctypes.data

    def free(self, ptr: int) -> None:
        del self.blocks[ptr]  # a double free or a stray pointer fails here

    def check(self, ptr: int, nbytes: int) -> None:
        assert any(start <= ptr and ptr + nbytes <= start + block.nbytes for start, block in self.blocks.items()), \
            f"{nbytes} bytes at {ptr:#x} are not allocated"

    def view(self, ptr: int, nbytes: int, dtype, shape) -> np.ndarray:
        self.check(ptr, nbytes)
        return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr)).view(dtype).reshape(shape)

    def copy(self, dst: int, src: int, nbytes: int) -> None:
        self.check(dst, nbytes)
        self.check(src, nbytes)
        ctypes.memmove(dst, src, nbytes)

    def enqueue(self, stream, work) -> None:
        if self.capturing is not None and self.capturing == stream:
            self.captured.append(work)
        else:
            work()


def fake_cudart(gpu: FakeGpu) -> SimpleNamespace:
    """The slice of cuda-python's ``cuda.bindings.runtime`` that runtime/cuda.py calls."""
    ok = 0

    def logged(name, result=(ok,)):
        def call(*args):
            gpu.log.append(name)
            return result
        return call

    def malloc(nbytes):
        gpu.log.append("cudaMalloc")
        return ok, gpu.alloc(nbytes)

    def free(name):
        def call(ptr):
            gpu.log.append(name)
            gpu.free(ptr)
            return (ok,)
        return call

    def memcpy(dst, src, nbytes, kind, stream):
        gpu.enqueue(stream, lambda: gpu.copy(dst, src, nbytes))
        return (ok,)

    def begin_capture(stream, mode):
        gpu.capturing, gpu.captured = stream, []
        return (ok,)

    def end_capture(stream):
        graph = next(gpu.ids)
        gpu.graphs[graph], gpu.capturing = gpu.captured, None
        return ok, graph

    def launch(executable, stream):
        gpu.launches += 1
        for work in gpu.graphs[executable]:
            work()
        return (ok,)

    return SimpleNamespace(
        cudaError_t=SimpleNamespace(cudaSuccess=ok), cudaGetErrorName=lambda error: (ok, b"cudaErrorFake"),
        cudaRuntimeGetVersion=lambda: (ok, 13000), cudaGetDeviceCount=lambda: (ok, 1),
        cudaSetDevice=logged("cudaSetDevice"),
        cudaGetDeviceProperties=lambda device: (ok, SimpleNamespace(name=b"Fake GPU\x00\x00")),
        cudaStreamNonBlocking=1, cudaStreamCreateWithFlags=lambda flags: (ok, next(gpu.ids)),
        cudaStreamDestroy=logged("cudaStreamDestroy"), cudaStreamSynchronize=logged("cudaStreamSynchronize"),
        cudaMalloc=malloc, cudaMallocHost=malloc, cudaFree=free("cudaFree"), cudaFreeHost=free("cudaFreeHost"),
        cudaMemcpyKind=SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2), cudaMemcpyAsync=memcpy,
        cudaEventCreate=lambda: (ok, next(gpu.ids)), cudaEventDestroy=logged("cudaEventDestroy"),
        cudaEventRecord=logged("cudaEventRecord"), cudaEventElapsedTime=lambda start, end: (ok, 0.25),
        cudaStreamCaptureMode=SimpleNamespace(cudaStreamCaptureModeGlobal=0), cudaStreamBeginCapture=begin_capture,
        cudaStreamEndCapture=end_capture, cudaGraphInstantiate=lambda graph, flags: (ok, graph),
        cudaGraphLaunch=launch, cudaGraphExecDestroy=logged("cudaGraphExecDestroy"),
        cudaGraphDestroy=logged("cudaGraphDestroy"))


def fake_pycuda(gpu: FakeGpu) -> SimpleNamespace:
    """The slice of ``pycuda.driver`` that runtime/cuda.py calls."""

    class Allocation:
        def __init__(self, nbytes):
            self.ptr = gpu.alloc(nbytes)

        def __int__(self):
            return self.ptr

        def free(self):
            gpu.log.append("mem_free")
            gpu.free(self.ptr)

    class Pinned(Allocation):
        @property
        def __array_interface__(self):
            return gpu.blocks[self.ptr].__array_interface__

    class Context:
        def push(self):
            gpu.log.append("ctx.push")

        def pop(self):
            gpu.log.append("ctx.pop")

        def detach(self):
            gpu.log.append("ctx.detach")

    class Device:
        count = staticmethod(lambda: 1)

        def __init__(self, index):
            self.index = index

        def name(self):
            return "Fake GPU"

        def retain_primary_context(self):
            return Context()

    class Stream:
        def __init__(self):
            self.handle = next(gpu.ids)

        def synchronize(self):
            gpu.log.append("synchronize")

    class Event:
        def record(self, stream):
            gpu.log.append("record")

        def time_since(self, start):
            return 0.25

    def memcpy_htod_async(dst, src, stream):
        gpu.enqueue(stream.handle, lambda: gpu.copy(int(dst), src.ctypes.data, src.nbytes))

    def memcpy_dtoh_async(dst, src, stream):
        gpu.enqueue(stream.handle, lambda: gpu.copy(dst.ctypes.data, int(src), dst.nbytes))

    return SimpleNamespace(Error=RuntimeError, get_version=lambda: (12, 6, 0), init=lambda: None, Device=Device,
                           Stream=Stream, Event=Event, mem_alloc=Allocation,
                           pagelocked_empty=lambda nbytes, dtype: np.asarray(Pinned(nbytes)),
                           memcpy_htod_async=memcpy_htod_async, memcpy_dtoh_async=memcpy_dtoh_async)


# --- fake TensorRT: the model is expected_scores(); 10.x-style names or 8.6-style bindings ----------------------
def fake_tensorrt(gpu: FakeGpu, *, named: bool, profile=(1, 8)) -> TensorRT:
    severity = SimpleNamespace(ERROR=1, WARNING=2, INFO=3)
    names = ("images", "scores")

    class ILogger:
        Severity = severity

        def __init__(self):
            pass

    def released(what):
        return lambda self: gpu.log.append(f"{what} released")

    class Context:
        def __init__(self):
            self.shape, self.addresses = None, {}

        def _set_shape(self, shape):
            if not profile[0] <= shape[0] <= profile[1]:
                return False
            self.shape = tuple(shape)
            return True

        def _shape(self, name):
            return self.shape if name == "images" else (self.shape[0], WEIGHTS.shape[1])

        def _run(self, stream):
            gpu.log.append("execute_async_v3" if named else "execute_async_v2")
            count = self.shape[0]

            def work():
                batch = gpu.view(self.addresses["images"], 4 * int(np.prod(self.shape)), np.float32, self.shape)
                scores = gpu.view(self.addresses["scores"], 4 * count * WEIGHTS.shape[1], np.float32,
                                  (count, WEIGHTS.shape[1]))
                scores[...] = expected_scores(batch)
            gpu.enqueue(stream, work)
            return True

        __del__ = released("context")

    class NamedContext(Context):
        def set_input_shape(self, name, shape):
            return self._set_shape(shape)

        def get_tensor_shape(self, name):
            return self._shape(name)

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def execute_async_v3(self, stream):
            return self._run(stream)

    class BindingContext(Context):
        def set_binding_shape(self, index, shape):
            return self._set_shape(shape)

        def get_binding_shape(self, index):
            return self._shape(names[index])

        def execute_async_v2(self, bindings, stream_handle):
            self.addresses = dict(zip(names, bindings))
            return self._run(stream_handle)

    class NamedEngine:
        num_io_tensors = 2
        get_tensor_name = staticmethod(lambda index: names[index])
        get_tensor_mode = staticmethod(lambda name: "in" if name == "images" else "out")
        get_tensor_dtype = staticmethod(lambda name: np.float32)
        create_execution_context = staticmethod(NamedContext)
        __del__ = released("engine")

    class BindingEngine:
        num_bindings = 2
        binding_is_input = staticmethod(lambda index: index == 0)
        get_binding_name = staticmethod(lambda index: names[index])
        get_binding_dtype = staticmethod(lambda index: np.float32)
        create_execution_context = staticmethod(BindingContext)
        __del__ = released("engine")

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            if data != ENGINE_BYTES:
                self.logger.log(severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization\n"
                                                "(the engine plan file is not compatible with this version)")
                return None
            return NamedEngine() if named else BindingEngine()

        __del__ = released("runtime")

    module = SimpleNamespace(__version__="10.3.0" if named else "8.6.1", ILogger=ILogger, Runtime=Runtime,
                             nptype=np.dtype, TensorIOMode=SimpleNamespace(INPUT="in", OUTPUT="out"),
                             ICudaEngine=NamedEngine if named else BindingEngine)
    return TensorRT.from_module(module, "tensorrt")


def manifest(profile=(1, 8), precision="fp32") -> dict:
    return {"format": 1, "engine": f"model.{precision}.engine", "backend": "tensorrt", "precision": precision,
            "batch": {"min": profile[0], "opt": profile[0], "max": profile[1]},
            "inputs": [{"name": "images", "shape": [-1, *INPUT_SHAPE], "dtype": "float"}],
            "outputs": [{"name": "scores", "shape": [-1, 4], "dtype": "float"}]}


@pytest.fixture
def engine_file(tmp_path) -> Path:
    path = tmp_path / "run" / "engines" / "fake-gpu-trt10.3.0" / "model.fp32.engine"
    path.parent.mkdir(parents=True)
    path.write_bytes(ENGINE_BYTES)
    return path


def make_backend(engine_file, *, named=True, cuda="cuda-python", cuda_graph=False, profile=(1, 8)):
    gpu = FakeGpu()
    api = cuda_python_api(fake_cudart(gpu)) if cuda == "cuda-python" else pycuda_api(fake_pycuda(gpu))
    backend = TensorRTBackend(engine_file, fake_tensorrt(gpu, named=named, profile=profile), precision="fp32",
                              manifest=manifest(profile), cuda_graph=cuda_graph, cuda=api)
    return backend, gpu


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, *INPUT_SHAPE)).astype(np.float32)


# --- tests ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("named, cuda", [(True, "cuda-python"), (False, "cuda-python"), (True, "pycuda")])
def test_infer_copies_in_runs_and_copies_out(engine_file, named, cuda):
    backend, gpu = make_backend(engine_file, named=named, cuda=cuda)
    with backend:
        for count in (3, 1, 8):
            batch = images(count, seed=count)
            np.testing.assert_allclose(backend.infer(batch), expected_scores(batch), rtol=1e-5, atol=1e-6)
        assert set(backend.last_timings) == set(TIMING_KEYS) and backend.last_timings["compute_ms"] == 0.25
        info = backend.info
        assert (info.backend, info.device, info.version) == ("tensorrt", "cuda:0 Fake GPU",
                                                             "10.3.0" if named else "8.6.1")
        assert info.details["io"] == ("named tensors" if named else "bindings")
        assert info.details["engine"] == str(engine_file) and info.details["cuda"].startswith(cuda)
    assert ("execute_async_v3" if named else "execute_async_v2") in gpu.log


def test_batch_outside_the_profile_is_one_clear_line(engine_file):
    backend, gpu = make_backend(engine_file)
    with backend, pytest.raises(BackendError) as caught:
        backend.infer(images(16))
    assert caught.value.message == "--batch 16 is outside the engine's profile 1..8"
    assert "mlic-edge build" in caught.value.hint and "--batch MIN,OPT,MAX" in caught.value.hint
    assert "\n" not in str(caught.value) and "execute_async_v3" not in gpu.log


def test_wrong_image_size_is_refused(engine_file):
    backend, _ = make_backend(engine_file)
    with backend, pytest.raises(BackendError, match=r"takes \(N, 3, 8, 8\)"):
        backend.infer(np.zeros((1, 3, 16, 16), np.float32))


def test_buffers_are_reallocated_only_when_the_batch_grows(engine_file):
    backend, gpu = make_backend(engine_file)
    with backend:
        backend.infer(images(4))
        first = gpu.log.count("cudaMalloc")
        assert first == 4  # pinned + device, for the input and the output
        for count in (1, 4, 2):
            backend.infer(images(count))
        assert gpu.log.count("cudaMalloc") == first and "cudaFree" not in gpu.log
        batch = images(6, seed=6)
        np.testing.assert_allclose(backend.infer(batch), expected_scores(batch), rtol=1e-5, atol=1e-6)
        assert gpu.log.count("cudaMalloc") == 2 * first and gpu.log.count("cudaFree") == 2


def test_close_releases_tensorrt_then_cuda_in_reverse_order(engine_file):
    backend, gpu = make_backend(engine_file)
    backend.infer(images(2))
    gpu.log.clear()
    backend.close()
    released = [entry for entry in gpu.log if "released" in entry or "Free" in entry or "Destroy" in entry]
    assert released[:3] == ["context released", "engine released", "runtime released"]
    assert released[3:7] == ["cudaFree", "cudaFreeHost", "cudaFree", "cudaFreeHost"]  # output, then input
    assert released[7:] == ["cudaEventDestroy"] * 4 + ["cudaStreamDestroy"]
    assert not gpu.blocks  # every byte given back
    backend.close()  # twice is harmless
    with pytest.raises(BackendError, match="is closed"):
        backend.infer(images(1))


def test_cuda_graph_is_captured_once_per_batch_size_and_replayed(engine_file):
    backend, gpu = make_backend(engine_file, cuda_graph=True)
    with backend:
        for seed in range(3):
            batch = images(2, seed=seed)
            np.testing.assert_allclose(backend.infer(batch), expected_scores(batch), rtol=1e-5, atol=1e-6)
        assert (len(gpu.graphs), gpu.launches) == (1, 3)
        assert backend.last_timings == {"h2d_ms": None, "compute_ms": None, "d2h_ms": None, "total_ms": 0.25}
        batch = images(5, seed=9)
        np.testing.assert_allclose(backend.infer(batch), expected_scores(batch), rtol=1e-5, atol=1e-6)
        assert (len(gpu.graphs), gpu.launches) == (2, 4) and gpu.log.count("cudaGraphExecDestroy") == 1
    assert gpu.log.count("cudaGraphExecDestroy") == 2 and not gpu.blocks


def test_cuda_graph_without_a_graph_api_is_refused_and_releases_cuda(engine_file):
    with pytest.raises(BackendError, match="CUDA graphs") as caught:
        make_backend(engine_file, cuda="pycuda", cuda_graph=True)
    assert "cuda-python" in caught.value.hint


def test_an_engine_from_another_tensorrt_is_refused_with_the_rebuild_command(engine_file):
    engine_file.write_bytes(b"an engine from TensorRT 8.5")
    with pytest.raises(BackendError) as caught:
        make_backend(engine_file)
    assert "could not load model.fp32.engine: IRuntime::deserializeCudaEngine" in caught.value.message
    assert f"mlic-edge build --run {engine_file.parents[2]} --precision fp32 --backend tensorrt" in caught.value.hint
    assert "\n" not in str(caught.value)


def test_real_tensorrt_rtx_engine_that_cannot_load_here_is_refused_and_cuda_released(tmp_path):
    """A real ahead-of-time TensorRT for RTX build; with no GPU its runtime refuses it, in one line with the reason."""
    from mlic_edge.runtime.gpu import detect_gpu
    from mlic_edge.runtime.tensorrt import BuildOptions, build_engine, load_tensorrt
    from test_tensorrt_build import tiny_onnx

    if detect_gpu() is not None:
        pytest.skip("a GPU is here: the fake CUDA pointers must not reach a real engine")
    try:
        trt = load_tensorrt("tensorrt-rtx")
    except BackendError as error:
        pytest.skip(f"TensorRT for RTX is not installed: {error}")
    result = build_engine(trt, tiny_onnx(tmp_path / "model.onnx"), tmp_path, BuildOptions(batch=(1, 1, 2)))
    gpu = FakeGpu()
    with pytest.raises(BackendError) as caught:
        TensorRTBackend(result.engine_path, trt, precision="fp32", manifest=result.manifest,
                        cuda=cuda_python_api(fake_cudart(gpu)))
    assert f"tensorrt-rtx {trt.version} could not load model.fp32.engine: " in caught.value.message
    assert "--backend tensorrt-rtx" in caught.value.hint and "\n" not in str(caught.value)
    assert gpu.log.count("cudaEventDestroy") == 4 and gpu.log[-1] == "cudaStreamDestroy"


def test_open_refuses_an_engine_of_another_precision(engine_file):
    write_json(engine_file.with_suffix(".json"), manifest(precision="fp16"))
    with pytest.raises(BackendError, match="is a fp16 engine, not fp32"):
        open_tensorrt_backend(RunDir(engine_file.parents[2]), "tensorrt", "fp32", engine_file)


def test_without_pycuda_or_cuda_python_says_how_to_get_them(monkeypatch):
    for name in ("pycuda", "pycuda.driver", "cuda", "cuda.bindings", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(BackendError) as caught:
        open_cuda(0)
    hint = caught.value.hint
    assert "pip install pycuda" in hint and "nvcc" in hint and "pip install cuda-python" in hint
    assert "--backend onnxruntime" in hint


def test_real_cuda_python_without_a_gpu_fails_clearly():
    pytest.importorskip("cuda.bindings")
    from mlic_edge.runtime.gpu import detect_gpu

    if detect_gpu() is not None:
        pytest.skip("a GPU is present")
    with pytest.raises(BackendError, match="CUDA cudaGetDeviceCount failed") as caught:
        open_cuda(0)
    assert "--backend onnxruntime" in caught.value.hint


def test_importing_the_backend_imports_no_tensorrt_cuda_or_torch():
    from import_checks import packages_loaded_by

    loaded = packages_loaded_by("mlic_edge.runtime.backends.tensorrt_backend")
    assert not {"tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings", "pycuda", "cuda", "torch"} & loaded


@pytest.mark.gpu
def test_real_engine_matches_onnxruntime(request, tmp_path):
    """Build the trained run's fp32 engine here and compare its scores with ONNX Runtime's on the same batch."""
    from mlic_edge.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from mlic_edge.runtime.gpu import detect_gpu
    from mlic_edge.runtime.tensorrt import BuildOptions, available_tensorrt_backends, build_engine, load_tensorrt

    gpu = detect_gpu()
    backends = available_tensorrt_backends()
    if gpu is None or not backends:
        pytest.skip("needs an NVIDIA GPU and TensorRT (or TensorRT for RTX) installed")
    try:
        open_cuda(0).close()
    except BackendError as error:
        pytest.skip(f"CUDA is not usable here: {error}")
    trt = load_tensorrt(backends[0])
    run = RunDir(Path(request.getfixturevalue("run_copy")))
    result = build_engine(trt, run.onnx("fp32"), run.path, BuildOptions(batch=(1, 2, 4)), gpu=gpu)
    batch = images(3).repeat(8, axis=2).repeat(8, axis=3)  # 64×64 like the trained run
    with OnnxRuntimeBackend(run.onnx("fp32")) as reference:
        expected = reference.infer(batch)
    try:
        backend = open_tensorrt_backend(run, trt.backend, "fp32", result.engine_path)
    except BackendError as error:
        if "cannot run on this GPU" in str(error) or "compute capability" in str(error):
            pytest.skip(f"{trt.backend} {trt.version} cannot run on {gpu.name}: {error}")
        raise
    with backend:
        np.testing.assert_allclose(backend.infer(batch), expected, atol=2e-3)
        assert backend.last_timings["compute_ms"] > 0


def test_infer_on_another_thread_makes_the_device_current_there(engine_file):
    """`mlic-edge run` infers on its own thread: pycuda's context must be pushed in that thread around the copies."""
    import threading

    backend, gpu = make_backend(engine_file, cuda="pycuda")
    with backend:
        gpu.log.clear()
        result = {}
        worker = threading.Thread(target=lambda: result.update(scores=backend.infer(images(2))))
        worker.start()
        worker.join()
        np.testing.assert_allclose(result["scores"], expected_scores(images(2)), rtol=1e-5, atol=1e-6)
        work = [entry for entry in gpu.log if entry != "ctx.push" and entry != "ctx.pop"]
        assert gpu.log[0] == "ctx.push" and gpu.log[-1] == "ctx.pop" and work  # every call inside push … pop
