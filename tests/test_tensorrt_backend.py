"""TensorRT backend: named-tensor IO on every supported TensorRT, batch-range refusal, buffer growth, release order
and CUDA graphs, driven by fakes built from the real TensorRT API surfaces and fake CUDA modules (device memory in
host RAM); a real engine only on a GPU (marker ``gpu``)."""

from __future__ import annotations

import sys
import threading
import warnings
import weakref
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mlic_edge.errors import BackendError
from mlic_edge.io import write_json
from mlic_edge.rundir import RunDir
from mlic_edge.runtime.inference.backends.tensorrt_backend import TIMING_KEYS, TensorRTBackend, open_tensorrt_backend
from mlic_edge.runtime.inference.cuda import cuda_python_api, open_cuda, pycuda_api
from mlic_edge.runtime.engines.api import TensorRT
from cuda_fakes import D2H_MS, EXECUTE_MS, H2D_MS, FakeGpu, fake_cudart, fake_pycuda, no_leaks
from trt_surface import FakeTensorRT, load_surface, surface_names

WEIGHTS = np.arange(12, dtype=np.float32).reshape(3, 4) / 10 - 0.5
INPUT_SHAPE = (3, 8, 8)
ENGINE_BYTES = b"fake engine"
VERSION_COMPATIBLE_ENGINE_BYTES = b"fake engine with its lean runtime"


def expected_scores(batch: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-(batch.mean(axis=(2, 3)) @ WEIGHTS)))


# --- fake TensorRT, built from the real API surface of each supported version: the model is expected_scores() ---
def fake_tensorrt(gpu: FakeGpu, version: str = "10.3", *, profile=(1, 8), dla_cores: int = 0,
                  capturable: bool = True, output_dtype: str = "FLOAT") -> TensorRT:
    module = FakeTensorRT(load_surface(version))
    names = ("images", "scores")

    def released(owner, what):
        weakref.finalize(owner, gpu.log.append, f"{what} released")
        return owner

    def set_input_shape(context, name, shape):
        if not profile[0] <= shape[0] <= profile[1]:
            return False
        vars(context)["test_shape"] = tuple(shape)
        return True

    def get_tensor_shape(context, name):
        shape = vars(context)["test_shape"]
        return shape if name == "images" else (shape[0], WEIGHTS.shape[1])

    def set_tensor_address(context, name, ptr):
        vars(context).setdefault("test_addresses", {})[name] = ptr
        return True

    def execute_async_v3(context, stream_handle):
        gpu.log.append("execute_async_v3")
        shape, addresses = vars(context)["test_shape"], vars(context)["test_addresses"]
        count = shape[0]

        def work():
            batch = gpu.view(addresses["images"], 4 * int(np.prod(shape)), np.float32, shape)
            scores = gpu.view(addresses["scores"], 4 * count * WEIGHTS.shape[1], np.float32, (count, WEIGHTS.shape[1]))
            scores[...] = expected_scores(batch)
        gpu.enqueue(stream_handle, work)
        return True

    context_api = dict(set_input_shape=set_input_shape, get_tensor_shape=get_tensor_shape,
                       set_tensor_address=set_tensor_address, execute_async_v3=execute_async_v3)
    if module.IExecutionContext.__dict__.get("is_stream_capturable"):
        context_api["is_stream_capturable"] = lambda context, stream: capturable
    module.implement("IExecutionContext", **context_api)
    module.implement(
        "ICudaEngine", num_io_tensors=2, get_tensor_name=lambda engine, index: names[index],
        get_tensor_mode=lambda engine, name: module.TensorIOMode.INPUT if name == "images" else
        module.TensorIOMode.OUTPUT,
        get_tensor_dtype=lambda engine, name: module.DataType.FLOAT if name == "images" else
        getattr(module.DataType, output_dtype),
        create_execution_context=lambda engine: released(module.IExecutionContext(), "context"))

    def deserialize_cuda_engine(runtime, data):
        logger = vars(runtime)["test_logger"]
        vars(runtime)["test_dla_core_at_load"] = runtime.DLA_core
        if data == VERSION_COMPATIBLE_ENGINE_BYTES and not runtime.engine_host_code_allowed:
            logger.log(module.ILogger.Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                       "(the engine contains host executable code; set engine_host_code_allowed to load it)")
            return None
        if data not in (ENGINE_BYTES, VERSION_COMPATIBLE_ENGINE_BYTES):
            logger.log(module.ILogger.Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization\n"
                                                      "(the engine plan file is not compatible with this version)")
            return None
        return released(module.ICudaEngine(), "engine")

    module.implement("Runtime", __init__=lambda runtime, logger: (vars(runtime).update(test_logger=logger),
                                                                 released(runtime, "runtime")),
                     deserialize_cuda_engine=deserialize_cuda_engine, engine_host_code_allowed=False, DLA_core=-1,
                     num_DLA_cores=dla_cores)
    return TensorRT.from_module(module, "tensorrt-rtx" if version.startswith("rtx") else "tensorrt")


def manifest(profile=(1, 8), precision="fp32", **extra) -> dict:
    return {**extra, "format": 1, "engine": f"model.{precision}.engine", "backend": "tensorrt", "precision": precision,
            "batch": {"min": profile[0], "opt": profile[0], "max": profile[1]},
            "inputs": [{"name": "images", "shape": [-1, *INPUT_SHAPE], "dtype": "float"}],
            "outputs": [{"name": "scores", "shape": [-1, 4], "dtype": "float"}]}


@pytest.fixture
def engine_file(tmp_path) -> Path:
    path = tmp_path / "run" / "engines" / "fake-gpu-trt10.3.0" / "model.fp32.engine"
    path.parent.mkdir(parents=True)
    path.write_bytes(ENGINE_BYTES)
    return path


def make_backend(engine_file, *, version="10.3", cuda="cuda-python", cuda_graph=False, profile=(1, 8),
                 extra_manifest=None, **fake_options):
    gpu = FakeGpu()
    api = cuda_python_api(fake_cudart(gpu)) if cuda == "cuda-python" else pycuda_api(fake_pycuda(gpu))
    backend = TensorRTBackend(engine_file, fake_tensorrt(gpu, version, profile=profile, **fake_options),
                              precision="fp32", manifest=manifest(profile, **(extra_manifest or {})),
                              cuda_graph=cuda_graph, cuda=api)
    return backend, gpu


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, *INPUT_SHAPE)).astype(np.float32)


@pytest.fixture(autouse=True)
def cuda_released():
    """Every test here ends with the fake GPUs' leak report: a stream, event, graph, allocation or primary context
    that was created and not released fails it."""
    with no_leaks():
        yield


# --- tests ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", surface_names())
@pytest.mark.parametrize("cuda", ["cuda-python", "pycuda"])
def test_infer_copies_in_runs_and_copies_out(engine_file, version, cuda):
    """Against the real API surface of every supported TensorRT: an attribute or call one lacks fails here."""
    backend, gpu = make_backend(engine_file, version=version, cuda=cuda)
    with backend:
        for count in (3, 1, 8):
            batch = images(count, seed=count)
            np.testing.assert_allclose(backend.infer(batch), expected_scores(batch), rtol=1e-5, atol=1e-6)
        assert backend.last_timings == {"h2d_ms": H2D_MS, "compute_ms": EXECUTE_MS, "d2h_ms": D2H_MS,
                                         "total_ms": H2D_MS + EXECUTE_MS + D2H_MS}  # from the events' order
        assert set(backend.last_timings) == set(TIMING_KEYS)
        info = backend.info
        assert (info.device, info.version) == ("cuda:0 Fake GPU", load_surface(version)["version"])
        assert info.details["io"] == "named tensors" and info.details["device"] == "gpu"
        assert info.details["engine"] == str(engine_file) and info.details["cuda"].startswith(cuda)
    assert "execute_async_v3" in gpu.log
    assert gpu.retained == 0 and not gpu.blocks  # every byte and the primary context given back


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
        def allocations(counts):
            return counts["device memory"], counts["pinned host memory"]
        assert allocations(gpu.created) == (2, 2)  # for the input and the output
        for count in (1, 4, 2):
            backend.infer(images(count))
        assert allocations(gpu.created) == (2, 2) and not gpu.destroyed
        batch = images(6, seed=6)
        np.testing.assert_allclose(backend.infer(batch), expected_scores(batch), rtol=1e-5, atol=1e-6)
        assert allocations(gpu.created) == (4, 4) and allocations(gpu.destroyed) == (2, 2)


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
        assert (gpu.created["graph"], gpu.launches) == (1, 3)
        assert backend.last_timings == {"h2d_ms": None, "compute_ms": None, "d2h_ms": None,
                                        "total_ms": H2D_MS + EXECUTE_MS + D2H_MS}
        batch = images(5, seed=9)
        np.testing.assert_allclose(backend.infer(batch), expected_scores(batch), rtol=1e-5, atol=1e-6)
        assert (gpu.created["graph"], gpu.launches) == (2, 4) and gpu.log.count("cudaGraphExecDestroy") == 1
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
    from mlic_edge.runtime.engines.gpu import detect_gpu
    from mlic_edge.runtime.engines import BuildOptions, build_engine, load_tensorrt
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
    from mlic_edge.runtime.engines.gpu import detect_gpu

    if detect_gpu() is not None:
        pytest.skip("a GPU is present")
    with pytest.raises(BackendError, match="CUDA cudaGetDeviceCount failed") as caught:
        open_cuda(0)
    assert "--backend onnxruntime" in caught.value.hint


def test_importing_the_backend_imports_no_tensorrt_cuda_or_torch():
    from import_checks import packages_loaded_by

    loaded = packages_loaded_by("mlic_edge.runtime.inference.backends.tensorrt_backend")
    assert not {"tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings", "pycuda", "cuda", "torch"} & loaded


@pytest.mark.gpu
def test_real_engine_matches_onnxruntime(request, tmp_path):
    """Build the trained run's fp32 engine here and compare its scores with ONNX Runtime's on the same batch."""
    from mlic_edge.runtime.inference.backends.onnxruntime_backend import OnnxRuntimeBackend
    from mlic_edge.runtime.engines.gpu import detect_gpu
    from mlic_edge.runtime.engines import BuildOptions, available_tensorrt_backends, build_engine, load_tensorrt

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


# --- what a real device would hit (issue 10) ------------------------------------------------------------------
@pytest.mark.parametrize("version", ["8.6", "10.3", "11.4"])
def test_version_compatible_engine_loads_with_host_code_allowed_first(engine_file, version):
    """A version-compatible plan embeds its lean runtime: TensorRT refuses it unless the runtime allows host code,
    which must be set before deserializing (as Polygraphy's loader does)."""
    engine_file.write_bytes(VERSION_COMPATIBLE_ENGINE_BYTES)
    backend, gpu = make_backend(engine_file, version=version, extra_manifest={"version_compatible": True})
    with backend:
        batch = images(2)
        np.testing.assert_allclose(backend.infer(batch), expected_scores(batch), rtol=1e-5, atol=1e-6)
        calls = backend.trt.module.calls
        assert calls.index("Runtime.engine_host_code_allowed=") < calls.index("Runtime.deserialize_cuda_engine")
    engine_file.write_bytes(ENGINE_BYTES)  # an ordinary plan: host code stays disallowed
    backend, _ = make_backend(engine_file, version=version)
    with backend:
        assert "Runtime.engine_host_code_allowed=" not in backend.trt.module.calls


@pytest.mark.parametrize("version", ["8.6", "10.3", "11.4"])
def test_dla_engine_is_deserialized_onto_its_core(engine_file, version):
    backend, _ = make_backend(engine_file, version=version, dla_cores=2, profile=(1, 1),
                              extra_manifest={"device": "dla:1"})
    with backend:
        assert vars(backend._runtime)["test_dla_core_at_load"] == 1 and backend.info.details["device"] == "dla:1"
        batch = images(1)
        np.testing.assert_allclose(backend.infer(batch), expected_scores(batch), rtol=1e-5, atol=1e-6)
    with pytest.raises(BackendError) as caught:
        make_backend(engine_file, version=version, dla_cores=1, extra_manifest={"device": "dla:1"})
    assert "built for DLA core 1; this device has 1" in caught.value.message and "--dla-core" in caught.value.hint


@pytest.mark.parametrize("version", surface_names())
def test_a_tensor_numpy_cannot_hold_is_one_line_naming_it(engine_file, version):
    with pytest.raises(BackendError) as caught:
        make_backend(engine_file, version=version, output_dtype="FP8")
    assert caught.value.message == "tensor 'scores' of model.fp32.engine is FP8, which numpy cannot hold"
    assert "float32" in caught.value.hint and "\n" not in str(caught.value)


def test_rtx_engine_that_is_not_stream_capturable_is_refused_for_cuda_graphs(engine_file):
    backend, gpu = make_backend(engine_file, version="rtx-1.7", cuda_graph=True)
    with backend:
        batch = images(2)
        np.testing.assert_allclose(backend.infer(batch), expected_scores(batch), rtol=1e-5, atol=1e-6)
        assert gpu.launches == 1
    with pytest.raises(BackendError) as caught:
        make_backend(engine_file, version="rtx-1.7", cuda_graph=True, capturable=False)
    assert "cannot be captured in a CUDA graph" in caught.value.message and "--cuda-graph" in caught.value.hint
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("failure", ["error code", "TypeError"])
def test_failed_graph_instantiation_releases_the_captured_graph(engine_file, failure):
    gpu = FakeGpu()
    cudart = fake_cudart(gpu)

    def instantiate(graph, flags):
        if failure == "TypeError":
            raise TypeError("cudaGraphInstantiate() takes exactly 3 positional arguments (2 given)")
        return 999, None

    cudart.cudaGraphInstantiateWithFlags = instantiate
    backend = TensorRTBackend(engine_file, fake_tensorrt(gpu), precision="fp32", manifest=manifest(),
                              cuda_graph=True, cuda=cuda_python_api(cudart))
    with backend, pytest.raises(BackendError if failure == "error code" else TypeError):
        backend.infer(images(2))
    assert gpu.log.count("cudaGraphDestroy") == 1 and not gpu.blocks


def test_pycuda_backend_closes_from_another_thread_without_leaking(engine_file):
    """`mlic-edge run` opens the backend on one thread, infers on another and may stop from a third: every free
    must happen with the context current there, and nothing may pop a context that thread never pushed."""
    backend, gpu = make_backend(engine_file, cuda="pycuda")
    outcome = {}

    def on_thread(work):
        def target():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # pycuda's "out-of-thread context could not be cleaned up"
                    outcome[work.__name__] = work()
            except BaseException as error:  # reported below
                outcome[work.__name__] = error
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()

    def infer():
        return backend.infer(images(2))

    def close():
        backend.close()

    on_thread(infer)
    on_thread(close)
    np.testing.assert_allclose(outcome["infer"], expected_scores(images(2)), rtol=1e-5, atol=1e-6)
    assert outcome["close"] is None
    assert not gpu.blocks and gpu.retained == 0
    assert gpu.log.count("ctx.push") == gpu.log.count("ctx.pop") + 1  # the last push is popped by detach


def test_cuda_graphs_prefer_cuda_python_when_pycuda_is_also_installed(monkeypatch):
    gpu = FakeGpu()
    pycuda_module = SimpleNamespace(driver=fake_pycuda(gpu))
    runtime = fake_cudart(gpu)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda_module)
    monkeypatch.setitem(sys.modules, "pycuda.driver", pycuda_module.driver)
    monkeypatch.setitem(sys.modules, "cuda", SimpleNamespace(bindings=SimpleNamespace(runtime=runtime)))
    monkeypatch.setitem(sys.modules, "cuda.bindings", SimpleNamespace(runtime=runtime))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    with open_cuda(0) as plain, open_cuda(0, graphs=True) as for_graphs:
        assert (plain.name, for_graphs.name) == ("pycuda", "cuda-python")


def test_cuda_python_newer_than_the_driver_names_the_matching_major(monkeypatch):
    """cuda-python 13 on a CUDA 12.6 driver (JetPack 6) fails with InsufficientDriver: say which to install."""
    from mlic_edge.runtime.engines import gpu as gpu_module

    runtime = fake_cudart(FakeGpu())
    runtime.cudaGetDeviceCount = lambda: (35, None)
    runtime.cudaGetErrorName = lambda error: (0, b"cudaErrorInsufficientDriver")
    monkeypatch.setattr(gpu_module, "driver_cuda_version", lambda: (12, 6))
    with pytest.raises(BackendError) as caught:
        cuda_python_api(runtime)
    assert "cuda-python 13.x needs a driver for CUDA 13 (>= 580); this driver supports CUDA 12.6" in \
        caught.value.message
    assert "pip install 'cuda-python>=12.8,<13'" in caught.value.hint and "no usable NVIDIA GPU" not in str(caught.value)
    monkeypatch.setattr(gpu_module, "driver_cuda_version", lambda: None)  # no driver at all: say that instead
    with pytest.raises(BackendError, match="cudaErrorInsufficientDriver") as caught:
        cuda_python_api(runtime)
    assert "no NVIDIA driver is loaded" in caught.value.hint
