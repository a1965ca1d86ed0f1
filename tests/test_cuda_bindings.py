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

import pytest

from test_tensorrt_backend import FakeGpu, fake_cudart

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


def _layer_calls() -> set[str]:
    """Every cuda-python runtime function runtime/inference/cuda.py names."""
    source = (ROOT / "runtime" / "inference" / "cuda.py").read_text()
    return set(re.findall(r"\b(?:self\.rt|runtime)\.(cuda[A-Z][A-Za-z]+)\b(?!\.)", source))


@pytest.mark.parametrize("major", MAJORS)
def test_every_call_of_the_cuda_layer_is_valid_on_the_real_bindings(major):
    folder = _bindings(major)
    fake_names = [name for name in vars(fake_cudart(FakeGpu())) if name.startswith("cuda")]
    completed = subprocess.run([sys.executable, "-c", PROBE, json.dumps(fake_names)], capture_output=True,
                               text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)])},
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
