"""The CUDA layer against NVIDIA's real cuda-python bindings of every CUDA major it supports (11.8 for CUDA 11 drivers,
12.x for JetPack 6, 13.x for current drivers). They import without a GPU or driver, so every call the layer makes
is made for real, with the layer's own argument patterns: each must fail with a CUDA error (no driver here), never
a TypeError, which is what a wrong signature gives. The bindings are installed per major by
``tests/api_surfaces/install_cuda_bindings.sh`` (CI does; elsewhere the test skips, saying so)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from cuda_fakes import FakeGpu, fake_cudart

ROOT = Path(__file__).resolve().parents[1]
BINDINGS = Path(os.environ.get("MLIC_EDGE_CUDA_BINDINGS", ROOT / ".cuda-bindings"))
MAJORS = ("11", "12", "13")
# Every call of the layer, through _CudaPythonDriver's own methods, with handles of the binding's real types.
PROBE = r'''
import json, sys
from mlic_edge.runtime.inference import cuda as layer

runtime = layer._import_cudart()
called = set()


class Recording:
    """The real module, recording which of its names the layer uses."""

    def __getattr__(self, name):
        called.add(name)
        return getattr(runtime, name)


rt = Recording()
driver = object.__new__(layer._CudaPythonDriver)
driver.rt, driver.device = rt, 0
driver.major, driver.version = driver._runtime_version()
stream, event = runtime.cudaStream_t(), runtime.cudaEvent_t()
graph, executable = runtime.cudaGraph_t(), runtime.cudaGraphExec_t()
host = layer.HostBuffer("host buffer", None, ptr=0x1000, nbytes=16)
calls = {
    "open": lambda: layer.cuda_python_api(rt, 0),
    "device_name": driver.device_name,
    "stream_create": driver.stream_create,
    "stream_destroy": lambda: driver.stream_destroy(stream),
    "malloc": lambda: driver.malloc(16),
    "free": lambda: driver.free(0x1000),
    "malloc_host": lambda: driver.malloc_host(16),
    "free_host": lambda: driver.free_host(0x1000),
    "event_create": driver.event_create,
    "event_destroy": lambda: driver.event_destroy(event),
    "copy_htod": lambda: driver.copy_htod(0x2000, host, 16, stream),
    "copy_dtoh": lambda: driver.copy_dtoh(host, 0x2000, 16, stream),
    "event_record": lambda: driver.event_record(event, stream),
    "event_elapsed_ms": lambda: driver.event_elapsed_ms(event, event),
    "stream_synchronize": lambda: driver.stream_synchronize(stream),
    "begin_capture": lambda: driver.begin_capture(stream),
    "end_capture": lambda: driver.end_capture(stream),
    "instantiate": lambda: driver._instantiate(graph),
    "graph_launch": lambda: driver.graph_launch(executable, stream),
    "graph_exec_destroy": lambda: driver.graph_exec_destroy(executable),
    "graph_destroy": lambda: driver.graph_destroy(graph),
    "bind_thread": driver.bind_thread,
    "abort_capture": lambda: driver.abort_capture(stream),
    "error_name": lambda: layer._error_name(rt, runtime.cudaError_t.cudaErrorInsufficientDriver),
}
outcome = {}
for name, call in calls.items():
    try:
        call()
        outcome[name] = "returned"
    except layer.BackendError as error:
        outcome[name] = "BackendError: " + error.message
    except Exception as error:
        outcome[name] = f"{type(error).__name__}: {error}"
stream_value = layer.handle_value(runtime.cudaStream_t(0x1234))
print(json.dumps({"version": driver.version, "outcome": outcome, "called": sorted(called),
                  "stream_value": stream_value,
                  "missing": [name for name in json.loads(sys.argv[1]) if not hasattr(runtime, name)]}))
'''


def _bindings(major: str) -> Path:
    folder = BINDINGS / major
    if not (folder / ".ok").exists():
        message = (f"cuda-python {major}.x is not installed in {folder}: run "
                   "tests/api_surfaces/install_cuda_bindings.sh")
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs them: never let this test skip there
        pytest.skip(message)
    return folder


def _with_bindings(folder: Path) -> dict[str, str]:
    """This process's environment with ``folder``'s cuda-python first on the path, then what the path already held
    (the mutation check puts a changed copy of the sources there), then the checkout; run from ``folder``, since
    ``python -c`` puts its working folder first, where a checkout's mlic_edge/ would shadow them."""
    inherited = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), *inherited, str(ROOT)])}


def _layer_calls() -> set[str]:
    """Every cuda-python runtime function runtime/inference/cuda.py names."""
    source = (ROOT / "runtime" / "inference" / "cuda.py").read_text()
    return set(re.findall(r"\b(?:self\.rt|runtime)\.(cuda[A-Z][A-Za-z]+)\b(?!\.)", source))


@pytest.mark.parametrize("major", MAJORS)
def test_every_call_of_the_cuda_layer_is_valid_on_the_real_bindings(major):
    folder = _bindings(major)
    fake_names = [name for name in vars(fake_cudart(FakeGpu())) if name.startswith("cuda")]
    completed = subprocess.run([sys.executable, "-c", PROBE, json.dumps(fake_names)], capture_output=True,
                               text=True, env=_with_bindings(folder), cwd=folder,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report["version"].startswith(f"{major}."), report["version"]  # that major, not the venv's own
    wrong = {name: result for name, result in report["outcome"].items()
             if not result.startswith("BackendError") and not (name in ("abort_capture", "error_name")
                                                                and result == "returned")}
    assert not wrong, f"cuda-python {major}.x rejects the layer's calls: {wrong}"
    assert all("no NVIDIA driver" in result or "InsufficientDriver" in result
               for result in report["outcome"].values() if result.startswith("BackendError"))
    assert set(report["called"]) >= _layer_calls(), \
        f"functions of the layer this test did not call: {_layer_calls() - set(report['called'])}"
    assert report["stream_value"] == 0x1234  # the raw handle TensorRT takes, read without int(handle)
    assert not report["missing"], f"the fake cudart has functions cuda-python {major}.x lacks: {report['missing']}"


# runtime/engines/gpu.py's cuda-python probe on the real driver bindings of the same major: each of its calls is
# made for real with the probe's own arguments (no driver here: it must end in a CUDA error), then answered as a
# machine with one GPU would answer it, or with an error status for the call named in argv[1].
DRIVER_PROBE = r'''
import json, sys
import cuda.bindings
from cuda.bindings import driver as real
from mlic_edge.runtime.engines import gpu

unprobed = gpu._probe_cuda_python()  # the real module, no driver here
ONE_GPU = {"cuInit": (), "cuDeviceGetCount": (1,), "cuDeviceGet": (real.CUdevice(0),),
           "cuDeviceGetName": (b"Fake GPU\x00\x00",), "cuDeviceGetAttribute": (8,), "cuDeviceTotalMem": (8 << 30,)}
failing = sys.argv[1]
called, outcome = [], {}


class Driver:
    def __getattr__(self, name):
        attribute = getattr(real, name)
        if not name.startswith("cu") or isinstance(attribute, type):
            return attribute

        def call(*args):
            called.append(name)
            try:
                outcome[name] = "status " + attribute(*args)[0].name
            except RuntimeError as error:  # the loader: no libcuda here (11.x, and cuda-pathfinder's error on 12.9+)
                outcome[name] = "no driver"
            except Exception as error:
                outcome[name] = f"{type(error).__name__}: {error}"
                raise
            if name not in ONE_GPU:
                raise KeyError(f"this test does not know what {name} returns: add it to ONE_GPU")
            return (real.CUresult.CUDA_ERROR_NO_DEVICE if name == failing else real.CUresult.CUDA_SUCCESS,
                    *ONE_GPU[name])
        return call


sys.modules["cuda.bindings.driver"] = cuda.bindings.driver = Driver()
try:
    found = gpu._probe_cuda_python()
    found = None if found is None else vars(found)
except Exception as error:
    found = f"raised {type(error).__name__}: {error}"
print(json.dumps({"unprobed": unprobed is None, "found": found, "called": called, "outcome": outcome}))
'''


def _probe_driver(folder: Path, failing: str = "") -> dict:
    completed = subprocess.run([sys.executable, "-c", DRIVER_PROBE, failing], capture_output=True, text=True,
                               env=_with_bindings(folder), cwd=folder,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


@pytest.mark.parametrize("major", MAJORS)
def test_gpu_probe_calls_are_valid_on_the_real_driver_bindings(major):
    """Every call of gpu.py's cuda-python probe, on the real bindings: a CUDA error each, never a TypeError (which a
    wrong signature gives, and which the probe must not hide); an error status from any call means no GPU."""
    report = _probe_driver(_bindings(major))
    assert report["unprobed"], "without a driver the probe finds no GPU, and raises nothing"
    wrong = {name: result for name, result in report["outcome"].items()
             if not (result == "no driver" or result.startswith("status CUDA_ERROR_"))}
    assert not wrong, f"cuda-python {major}.x rejects the probe's calls: {wrong}"
    source = (ROOT / "runtime" / "engines" / "gpu.py").read_text()
    assert set(report["called"]) >= set(re.findall(r"\bdriver\.(cu[A-Z]\w+)\b", source))
    assert report["found"] == {"name": "Fake GPU", "compute_capability": "8.8", "memory_mb": 8192,
                               "source": "cuda-python"}
    for failing in dict.fromkeys(report["called"]):
        assert _probe_driver(_bindings(major), failing)["found"] is None, f"{failing} failed, and a GPU was found"


def test_gpu_probe_lets_a_programming_error_through(monkeypatch):
    """No driver (the bindings' loader raises RuntimeError) means no GPU; a TypeError is a bug, and surfaces."""
    from mlic_edge.runtime.engines import gpu

    def driver_raising(error: Exception) -> SimpleNamespace:
        def raise_it(*args):
            raise error
        return SimpleNamespace(CUresult=SimpleNamespace(CUDA_SUCCESS=0), CUdevice_attribute=None, cuInit=raise_it)

    monkeypatch.setitem(sys.modules, "cuda", SimpleNamespace())
    no_driver = driver_raising(RuntimeError("Failed to dlopen libcuda.so.1"))
    monkeypatch.setitem(sys.modules, "cuda.bindings", SimpleNamespace(driver=no_driver))
    assert gpu._probe_cuda_python() is None
    sys.modules["cuda.bindings"].driver = driver_raising(TypeError("cuInit() takes exactly 1 positional argument"))
    with pytest.raises(TypeError):
        gpu._probe_cuda_python()
