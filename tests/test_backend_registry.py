"""The backend registry (runtime/inference/backends/registry.py): the names every command accepts, auto's order,
doctor's rows, parity's targets and the CLI's help come from it, and a new backend is one new file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

import mlic_edge.runtime.inference.backends as backends_package
from mlic_edge.errors import BackendError
from mlic_edge.rundir import RunDir
from mlic_edge.runtime.deployment import doctor
from mlic_edge.runtime.inference.backends import create_backend, registry, resolve_auto
from mlic_edge.runtime.checks.parity import present_targets

ROOT = Path(__file__).resolve().parents[1]

# A whole backend file, as a contributor would add it to runtime/inference/backends/.
NUMPY_BACKEND = '''"""A toy backend: every label scored by the image's mean value, in numpy."""

from __future__ import annotations

import numpy as np

from mlic_edge.rundir import RunDir
from mlic_edge.runtime.inference.backends.base import Backend, BackendInfo
from mlic_edge.runtime.inference.backends.registry import OpenOptions, register_backend


class NumpyBackend(Backend):
    def __init__(self, labels: int) -> None:
        self.labels = labels
        self.info = BackendInfo(backend="numpy", device="cpu", precision="fp32", version=np.__version__)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        mean = np.asarray(batch, np.float32).reshape(len(batch), -1).mean(axis=1)
        return np.repeat((1 / (1 + np.exp(-mean)))[:, None], self.labels, axis=1).astype(np.float32)


@register_backend(name="numpy", title="NumPy", description="a toy: every label scored by the image's mean value",
                  installed=lambda: True)
def open_numpy(run: RunDir, precision: str, device: str, options: OpenOptions) -> NumpyBackend:
    backend = NumpyBackend(len(run.spec().labels))
    backend.thread_budget = options.thread_budget("cpu")
    return backend
'''
TOY_MODULE = f"{backends_package.__name__}.numpy_backend"


@contextlib.contextmanager
def numpy_backend_file(folder: Path) -> Iterator[Path]:
    """numpy_backend.py in ``folder``, which joins the backends package's folders for the block; afterwards the
    module and its registry entry are gone."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "numpy_backend.py").write_text(NUMPY_BACKEND)
    backends_package.__path__.append(str(folder))
    try:
        yield folder
    finally:
        backends_package.__path__.remove(str(folder))
        sys.modules.pop(TOY_MODULE, None)
        if hasattr(backends_package, "numpy_backend"):
            delattr(backends_package, "numpy_backend")
        registry._BACKENDS.pop("numpy", None)


@pytest.fixture
def numpy_backend(tmp_path) -> Iterator[Path]:
    with numpy_backend_file(tmp_path / "toy") as folder:
        yield folder


@pytest.fixture
def labelled_run(tmp_path) -> RunDir:
    """A run directory with only its run.json: enough for a backend that needs no graph."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({
        "model": "baseline", "backbone": "resnet10t", "labels": ["cat", "dog", "bird"], "img_size": 32,
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "dataset": {"spec": "data/synth"}}))
    return RunDir(run)


def test_the_names_are_those_spec_and_the_cli_listed():
    assert registry.BACKENDS == ("auto", "tensorrt", "tensorrt-rtx", "onnxruntime", "torch")
    assert registry.ENGINE_BACKENDS == ("tensorrt", "tensorrt-rtx")
    assert registry.BUILD_BACKENDS == ("auto", "tensorrt", "tensorrt-rtx", "onnxruntime")


def test_the_engine_layer_loads_the_registrys_engine_backends():
    from mlic_edge.runtime.engines.api import TENSORRT_BACKENDS

    assert TENSORRT_BACKENDS == registry.ENGINE_BACKENDS


def test_autos_order_is_the_documented_one():
    design = (ROOT / "docs" / "design.md").read_text()
    documented = re.search(r"`--backend auto` tries, in turn, (.*?)\.\n", design, re.S)
    assert documented, "docs/design.md, Backends: the sentence that gives auto's order"
    assert tuple(re.findall(r"`([\w-]+)` \(", documented.group(1))) == registry.AUTO_ORDER
    assert registry.AUTO_ORDER == ("tensorrt", "tensorrt-rtx", "onnxruntime")


def test_auto_takes_the_first_backend_installed_and_able_in_the_registrys_order(monkeypatch):
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    installed = {"first": False}
    registry.register_backend(name="first", title="First", description="a toy ahead of every other",
                              installed=lambda: installed["first"], auto_order=1,
                              auto_device=lambda run, precision, device: "cpu")(lambda *arguments: None)
    assert registry.AUTO_ORDER[0] == "first"
    assert resolve_auto("cpu") == ("onnxruntime", "cpu")  # not installed: passed over
    installed["first"] = True
    assert resolve_auto("cpu") == ("first", "cpu")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_backend(name="first", title="First", description="again", installed=lambda: True)(print)


def test_listing_the_registry_imports_no_backend_library():
    code = ("import json, sys\nfrom mlic_edge.runtime.inference.backends.registry import BACKENDS, list_backends\n"
            "assert len(list_backends()) == len(BACKENDS) - 1\n"
            "print(json.dumps(sorted(sys.modules)))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout)
    heavy = {"torch", "onnxruntime", "onnx", "tensorrt", "tensorrt_rtx", "pycuda", "cuda"}
    assert not heavy & {name.split(".")[0] for name in loaded}
    assert not [name for name in loaded if name.startswith("mlic_edge.runtime.engines")]  # a CPU run loads none


def test_a_backend_file_is_selectable_by_name(numpy_backend, labelled_run):
    assert "numpy" in registry.BACKENDS and "numpy" not in registry.AUTO_ORDER + registry.BUILD_BACKENDS
    with create_backend("numpy", labelled_run, device="cpu") as backend:
        scores = backend.infer(np.zeros((2, 3, 32, 32), np.float32))
        assert backend.info.backend == "numpy" and backend.thread_budget is not None
    assert scores.shape == (2, 3) and np.allclose(scores, 0.5)
    with pytest.raises(BackendError, match="--cuda-graph is for TensorRT engines, not numpy"):
        create_backend("numpy", labelled_run, cuda_graph=True)
    with pytest.raises(BackendError, match=r"unknown backend 'nump'.*numpy"):
        create_backend("nump", labelled_run)


def test_a_backend_file_gets_a_doctor_row_and_parity_checks_it_when_asked(numpy_backend, labelled_run):
    assert "numpy" in doctor.check_ids()
    (check,) = [check for check_id, _, check in doctor.all_checks() if check_id == "numpy"]
    outcome = check(None)
    assert outcome.status == "ok" and "installed" in outcome.detail
    assert present_targets(labelled_run, ["numpy"], ["fp32", "int8"]) == [("numpy", "fp32", "auto"),
                                                                            ("numpy", "int8", "auto")]
    assert present_targets(labelled_run) == []  # by default parity checks only the artefacts a run holds


def test_a_backend_file_is_in_the_cli_help(tmp_path):
    with numpy_backend_file(tmp_path):
        code = ("import sys\nimport mlic_edge.runtime.inference.backends as backends\n"
                f"backends.__path__.append({str(tmp_path)!r})\n"
                "from mlic_edge.cli.app import main\nsys.argv = ['mlic-edge', 'bench', '--help']\n"
                "try:\n    main()\nexcept SystemExit:\n    pass\n")
        help_text = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                   env={**os.environ, "COLUMNS": "250"}).stdout
    assert "onnxruntime, numpy, torch." in help_text, help_text
    assert "numpy" not in registry.BACKENDS  # the block took its entry away again
