"""benchmarks/gpu_check.py without a GPU: its CUDA-layer step through the real layer over the fake cudart, its
checks (round trips, timings, leaks, CUDA statuses), its exit status and its results file when a step fails or a
subprocess times out; and the layer's count of live CUDA resources (``live_resources``) that its leak check reads."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from mlic_edge.errors import BackendError
from mlic_edge.runtime.engines import gpu as gpu_module
from mlic_edge.runtime.engines.gpu import GpuInfo
from mlic_edge.runtime.inference import cuda as cuda_module
from mlic_edge.runtime.inference.cuda import cuda_python_api, live_resources
from cuda_fakes import FakeGpu, fake_cudart

ROOT = Path(__file__).resolve().parents[1]
ALL_KINDS = {"device buffer": 1, "pinned host buffer": 1, "stream": 1, "event": 1, "graph": 1, "graph exec": 1}


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Runtime:
    """The fake cudart plus the calls gpu_check makes itself; keyword arguments replace any call."""

    def __init__(self, **replaced) -> None:
        self._fake = fake_cudart(FakeGpu())
        self.__dict__.update(replaced)

    def __getattr__(self, name: str):
        return getattr(self._fake, name)

    def cudaMemGetInfo(self):
        return self.cudaError_t.cudaSuccess, 8 << 30, 16 << 30

    def cudaDeviceSynchronize(self):
        return (self.cudaError_t.cudaSuccess,)

    def cudaGetLastError(self):
        return (self.cudaError_t.cudaSuccess,)


@pytest.fixture
def no_live_resources(monkeypatch):
    """A fresh count: other tests in this process may leave fake resources open on purpose."""
    monkeypatch.setattr(cuda_module, "_live", Counter())


@pytest.fixture
def gpu_check(monkeypatch, no_live_resources):
    module = load_gpu_check()
    monkeypatch.setattr(module, "BANDWIDTH_BYTES", 4096)
    monkeypatch.setattr(module, "LEAK_CYCLE_BYTES", 1024)
    return module


def use_runtime(monkeypatch, runtime: Runtime) -> None:
    monkeypatch.setattr(cuda_module, "_import_cudart", lambda: runtime)
    monkeypatch.setattr(cuda_module, "open_cuda", lambda device=0, graphs=False: cuda_python_api(runtime, device))


def on_a_gpu(monkeypatch, gpu_check, doctor=lambda: {"checks": []}) -> None:
    """main() as on a machine with a GPU, the reference overhead (PyTorch) left out."""
    monkeypatch.setattr(gpu_module, "detect_gpu", lambda: GpuInfo("Fake GPU", "9.0", 81559, "nvidia-smi"))
    monkeypatch.setattr(gpu_module, "driver_cuda_version", lambda: (12, 8))
    monkeypatch.setattr(gpu_check, "doctor_json", doctor)
    monkeypatch.setattr(gpu_check, "reference_overhead", lambda *args, **kwargs: [])
    monkeypatch.setattr(gpu_check, "multistream_reference", lambda *args, **kwargs: {"multi": {}})


def shifted_copies_back(runtime: Runtime):
    """cudaMemcpyAsync that copies device-to-host from one byte further on: a round trip that gives back other bytes."""
    copy = runtime._fake.cudaMemcpyAsync

    def copy_wrong(dst, src, nbytes, kind, stream):
        if kind == runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost:
            return copy(dst, src + 1, nbytes - 1, kind, stream)
        return copy(dst, src, nbytes, kind, stream)
    return copy_wrong


def test_cuda_layer_checks_hold_on_the_fake(monkeypatch, gpu_check):
    use_runtime(monkeypatch, Runtime())
    report = gpu_check.cuda_layer(cycles=3, bandwidth_cycles=4)
    assert gpu_check.cuda_layer_failures(report) == []
    assert report["round_trips"] == 8 and report["failed_round_trips"] == 0 and report["invalid_timings"] == 0
    assert report["live_resources_before"] == report["live_resources_after"] == {}
    h2d = report["bandwidth"]["h2d_gb_s"]
    assert h2d["n"] == 4 and h2d["min"] <= h2d["median"] <= h2d["max"] and h2d["spread_percent"] is not None


def test_a_round_trip_that_gives_back_other_bytes_fails_the_run(monkeypatch, gpu_check, tmp_path):
    runtime = Runtime()
    runtime.cudaMemcpyAsync = shifted_copies_back(runtime)
    use_runtime(monkeypatch, runtime)
    on_a_gpu(monkeypatch, gpu_check)
    assert gpu_check.main(["--out", str(tmp_path), "--cycles", "2", "--bandwidth-cycles", "2"]) == 1
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["exit"] == 1 and written["cuda_layer"]["failed_round_trips"] == 5
    assert written["failures"] == ["cuda_layer: 5 of 5 round trips (plain or graph) gave back other bytes than "
                                   "were sent"]
    assert written["reference_overhead"] == []  # the next step still ran


def test_every_check_held_exits_0(monkeypatch, gpu_check, tmp_path):
    use_runtime(monkeypatch, Runtime())
    on_a_gpu(monkeypatch, gpu_check)
    assert gpu_check.main(["--out", str(tmp_path), "--cycles", "2", "--bandwidth-cycles", "2"]) == 0
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["failures"] == [] and written["exit"] == 0 and written["driver_cuda"] == "12.8"
    assert written["multistream"] == {"multi": {}}


def test_a_doctor_time_out_is_recorded_and_the_results_still_written(monkeypatch, tmp_path, no_live_resources):
    gpu_check = load_gpu_check()

    def times_out(command, **kwargs):
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    monkeypatch.setattr(gpu_check.subprocess, "run", times_out)
    monkeypatch.setattr(gpu_module, "detect_gpu", lambda: None)
    assert gpu_check.main(["--out", str(tmp_path)]) == 1  # a failure outranks "no GPU here" (2)
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["doctor"]["timed_out"] is True and "doctor --json" in written["doctor"]["command"]
    assert written["failures"] == [f"doctor: {written['doctor']['command']} timed out after 120 s"]
    assert "skipped" in written and written["exit"] == 1


def test_a_time_out_in_a_measuring_step_is_recorded_and_the_rest_still_runs(monkeypatch, gpu_check, tmp_path):
    def cuda_layer_times_out(*args):
        raise subprocess.TimeoutExpired(["nvidia-smi"], 5)

    on_a_gpu(monkeypatch, gpu_check)
    monkeypatch.setattr(gpu_check, "cuda_layer", cuda_layer_times_out)
    assert gpu_check.main(["--out", str(tmp_path)]) == 1
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["cuda_layer"] == {"error": "timed out after 5 s", "command": "nvidia-smi", "timed_out": True}
    assert written["reference_overhead"] == [] and written["failures"] == ["cuda_layer: nvidia-smi timed out after 5 s"]


def test_no_gpu_and_nothing_failed_exits_2(monkeypatch, tmp_path, no_live_resources, capsys):
    gpu_check = load_gpu_check()
    monkeypatch.setattr(gpu_module, "detect_gpu", lambda: None)
    monkeypatch.setattr(gpu_check, "doctor_json", lambda: {"checks": []})
    monkeypatch.setattr(gpu_check, "multistream_reference", lambda *args, **kwargs: pytest.fail("ran without a GPU"))
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["failures"] == [] and "multi-stream comparison" in written["skipped"]
    assert written["multistream"] == {"skipped": "no NVIDIA GPU here: the PyTorch CUDA reference over 4 streams "
                                                 "(batch 1 vs batched) was not run"}
    assert f"gpu_check: multistream skipped: {written['multistream']['skipped']}" in capsys.readouterr().err


def test_a_failed_multistream_step_is_recorded_and_fails_the_run(monkeypatch, gpu_check, tmp_path):
    def no_second_process(*args, **kwargs):
        raise RuntimeError("a worker did not start (exit 1)")

    use_runtime(monkeypatch, Runtime())
    on_a_gpu(monkeypatch, gpu_check)
    monkeypatch.setattr(gpu_check, "multistream_reference", no_second_process)
    assert gpu_check.main(["--out", str(tmp_path), "--cycles", "1", "--bandwidth-cycles", "1"]) == 1
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["multistream"] == {"error": "RuntimeError: a worker did not start (exit 1)"}
    assert written["failures"] == ["multistream: RuntimeError: a worker did not start (exit 1)"]


def test_the_multistream_step_runs_on_the_cpu_reference(tmp_path):
    """Step 4's whole path (the PyTorch reference, the pipeline, the loop, single-stream worker processes on the
    shared device) with device="cpu": every stream's frames are counted in each way of running them."""
    pytest.importorskip("torch")
    frames, streams = 4, 2
    report = load_gpu_check().multistream_reference(tmp_path, frames, 1, streams=streams, device="cpu",
                                                    backbone="resnet10t", img_size=64)
    assert report["backend"]["backend"] == "torch" and report["backend"]["device"] == "cpu"
    measured = report["rounds"][0]
    assert measured["single"]["pipeline"]["frames"] == measured["single"]["loop"]["frames"] == frames
    for mode in ("one_run", "processes", "sequential"):
        assert measured["multi"][str(streams)][mode]["frames"] == streams * frames
    assert len(measured["multi"][str(streams)]["processes"]["stream_fps"]) == streams
    assert set(report["multi"][str(streams)]["batch_fill"]) <= {str(size) for size in range(1, streams + 1)}


def test_doctor_without_json_fails_the_run(monkeypatch, gpu_check, tmp_path):
    use_runtime(monkeypatch, Runtime())
    on_a_gpu(monkeypatch, gpu_check, doctor=lambda: {"error": "no JSON on stdout", "exit": 1, "stdout": "",
                                                     "stderr": "Traceback"})
    assert gpu_check.main(["--out", str(tmp_path), "--cycles", "1", "--bandwidth-cycles", "1"]) == 1
    assert json.loads((tmp_path / "gpu_check.json").read_text())["failures"] == [
        "doctor: printed no JSON (exit 1)"]


def test_leaks_and_bad_timings_are_failures(gpu_check):
    report = {"failed_round_trips": 0, "round_trips": 12, "invalid_timings": 2, "device_memory_leak": True,
              "leaked_bytes": 3 << 20, "cycles": 10, "live_resources_after": {"stream": 10, "pinned host buffer": 20}}
    assert gpu_check.cuda_layer_failures(report) == [
        "cuda_layer: 2 event timings were not positive and finite",
        f"cuda_layer: {3 << 20} bytes of device memory not given back after 10 cycles",
        "cuda_layer: still live after every cycle was closed: 20 pinned host buffer, 10 stream"]


def test_swapped_event_timings_count_as_invalid_and_stay_out_of_the_bandwidth(gpu_check):
    cycles = [{"h2d_ms": 1.0, "d2h_ms": 2.0, "graph_ms": 3.0}, {"h2d_ms": -1.0, "d2h_ms": 4.0, "graph_ms": 3.0},
              {"h2d_ms": 0.5, "d2h_ms": float("nan"), "graph_ms": 3.0}]
    figures = gpu_check.bandwidth(cycles, 10**9)
    assert figures["h2d_gb_s"] == {"median": 1.5e3, "min": 1e3, "max": 2e3, "spread_percent": 100 * 1e3 / 1.5e3,
                                   "n": 2}
    assert figures["d2h_gb_s"]["n"] == 2 and figures["graph_round_trip_ms"]["spread_percent"] == 0
    assert sum(not gpu_check.valid_timing(cycle[key]) for cycle in cycles for key in gpu_check.TIMINGS) == 2


def test_a_cuda_status_error_is_raised_naming_the_call(gpu_check):
    runtime = Runtime(cudaMemGetInfo=lambda: (2, 0, 0))
    with pytest.raises(gpu_check.CudaStatusError, match="cudaMemGetInfo returned cudaErrorMemoryAllocation"):
        gpu_check.device_memory_free(runtime)
    with pytest.raises(gpu_check.CudaStatusError, match="cudaGetLastError returned cudaErrorIllegalAddress"):
        gpu_check.synchronize_device(Runtime(cudaGetLastError=lambda: (700,)))


def test_live_resources_count_what_the_layer_created_until_destroyed(no_live_resources):
    cuda = cuda_python_api(Runtime())
    stream = cuda.stream()
    cuda.host_buffer(64), cuda.device_buffer(64), cuda.event()
    cuda.capture(stream, lambda: None)
    assert live_resources() == ALL_KINDS
    cuda.close()
    assert live_resources() == {}


def test_a_failed_destroy_stays_counted_as_live(no_live_resources):
    runtime = Runtime(cudaEventDestroy=lambda event: (1,))
    cuda = cuda_python_api(runtime)
    cuda.event(), cuda.stream()
    with pytest.raises(BackendError, match="cudaEventDestroy"):
        cuda.close()
    assert live_resources() == {"event": 1}
