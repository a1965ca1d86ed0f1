"""The torch-free edge install, end to end: a bundle made by the full install is unpacked, built (ONNX Runtime and
TensorRT for RTX), run, parity-checked and benchmarked in a separate virtual environment without PyTorch, from a
regular (non-editable) install of the wheel this source tree builds (tests/conftest.py's built_package), with the
`edge` extra a Jetson installs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_wheel import run_installed

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def edge_venv(tmp_path_factory, built_package) -> Path:
    venv = tmp_path_factory.mktemp("edge") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                             f"{built_package.wheel}[edge,tensorrt-rtx]"], capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return venv


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, trained_run) -> Path:
    """Made on the training machine (this process, with PyTorch): fp16 and int8 ONNX, then `pack` (which measures
    the workstation's parity on the graphs it ships)."""
    import contextlib
    import io

    from mlic_edge.rundir import RunDir
    from mlic_edge.commands.build import BuildRequest, build
    from mlic_edge.commands.pack import pack

    run = RunDir(tmp_path_factory.mktemp("workstation") / "baseline")
    shutil.copytree(trained_run, run.path)
    with contextlib.redirect_stderr(io.StringIO()):
        for precision in ("fp16", "int8"):
            build(run, BuildRequest(precision=precision, backend="onnxruntime", calib_images=64, evaluate=False,
                                        qat_epochs=0))
        return Path(pack(run, run.path.parent / "baseline.mlic.tar.gz")["bundle"])


def _edge(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run_installed(venv, cwd, "mlic-edge", *args)


def test_the_edge_install_has_no_torch_and_imports_the_installed_package(edge_venv, tmp_path):
    code = ("import importlib.util, mlic_edge; print(importlib.util.find_spec('torch') is None, "
            "mlic_edge.__file__)")
    result = subprocess.run([str(edge_venv / "bin" / "python"), "-c", code], cwd=tmp_path, capture_output=True,
                            text=True)
    no_torch, location = result.stdout.split()
    assert no_torch == "True" and "site-packages" in location and str(REPO) not in location


def test_a_bundle_goes_through_build_run_parity_and_bench_without_torch(edge_venv, bundle, tmp_path):
    device = tmp_path / "device"
    device.mkdir()
    shutil.copy(bundle, device / bundle.name)

    doctor = _edge(edge_venv, device, "doctor", "--json")
    checks = {check["id"]: check for check in json.loads(doctor.stdout)["checks"]}
    assert checks["tensorrt-rtx"]["status"] == "ok" and checks["onnxruntime"]["status"] == "ok", doctor.stderr

    built = _edge(edge_venv, device, "build", "--bundle", bundle.name, "--out", "run", "-p", "int8", "-b",
                  "onnxruntime", "--json")
    assert built.returncode == 0, built.stderr
    entry = json.loads(built.stdout)
    assert entry["int8"]["reused"] and entry["accuracy"]["images"] > 0  # calibration record reused, no dataset here

    engine = _edge(edge_venv, device, "build", "--run", "run", "-p", "fp16", "-b", "tensorrt-rtx", "--json")
    assert engine.returncode == 0, engine.stderr
    engine_entry = json.loads(engine.stdout)
    assert engine_entry["fp16"]["reused"] and (device / "run" / engine_entry["engine"]["path"]).stat().st_size > 0

    ran = _edge(edge_venv, device, "run", "run/images/**/*.jpg", "--run", "run", "-b", "onnxruntime", "-p", "int8",
                "--max-frames", "5")
    assert ran.returncode == 0, ran.stderr
    assert len([json.loads(line) for line in ran.stdout.splitlines()]) == 5

    # int8 of the tiny fixture model is held to issue 15's limits, not the default targets it misses on 40 images
    parity = _edge(edge_venv, device, "parity", "--run", "run", "--json", "--tolerance", "int8=1.5", "--min-same",
                   "int8=0.9")
    assert parity.returncode == 0, parity.stderr
    report = json.loads(parity.stdout)
    assert {(r["backend"], r["precision"]) for r in report["results"]} == {
        ("onnxruntime", "fp32"), ("onnxruntime", "fp16"), ("onnxruntime", "int8")}
    assert all(r["passed"] for r in report["results"])
    assert [(s["backend"], s["precision"]) for s in report["skipped"]] == [("tensorrt-rtx", "fp16")]  # no GPU here
    assert all(row["same_bytes"] and row["workstation"] for row in report["workstation"])

    # what held here: every graph as shipped and checked, the engine built from the shipped fp16 graph but not run
    deploy = json.loads((device / "run" / "reports" / "deploy.json").read_text())
    assert all(graph["identical"] for graph in deploy["graphs"])
    assert [engine["shipped_graph"] for engine in deploy["engines"]] == ["model.fp16.onnx"]
    assert deploy["status"] == "incomplete" and any("has no device parity" in p for p in deploy["problems"])
    doctor_run = _edge(edge_venv, device, "doctor", "--run", "run", "--json")
    check = next(c for c in json.loads(doctor_run.stdout)["checks"] if c["id"] == "deploy")
    assert check["status"] == "warn" and "has no device parity" in check["detail"]

    bench = _edge(edge_venv, device, "bench", "--run", "run", "-b", "onnxruntime", "--batch", "1", "--iterations",
                  "3", "--warmup", "1", "--frames", "10", "--json")
    assert bench.returncode == 0, bench.stderr
    assert json.loads(bench.stdout)["results"][0]["ratio"] > 0
