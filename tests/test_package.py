"""Packaging and architecture: one namespace over the stage folders, light --help, no torch where docs/design.md forbids."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module, folder", [("mlic_edge.train", "train"), ("mlic_edge.export", "export"),
                                            ("mlic_edge.calibration", "calibration"),
                                            ("mlic_edge.runtime", "runtime")])
def test_stage_folders_import_under_one_namespace(module, folder):
    imported = __import__(module, fromlist=["_"])
    assert Path(imported.__file__).resolve().parent == ROOT / folder


def test_help_imports_no_heavy_package():
    code = ("import sys, runpy\nsys.argv=['mlic-edge','--help']\n"
            "from mlic_edge.cli.app import app\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            "heavy=[m for m in ('torch','timm','onnxruntime','onnx','tensorrt') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "train" in out and "parity" in out


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
            if node.module.startswith("mlic_edge.models"):
                names.add("mlic_edge.models")
    return names


@pytest.mark.parametrize("folder", ["runtime", "calibration"])
def test_runtime_and_calibration_never_import_torch(folder):
    allowed = {ROOT / "runtime" / "inference" / "backends" / "torch_backend.py"}  # the reference backend, imported lazily
    offenders = [str(path.relative_to(ROOT)) for path in (ROOT / folder).rglob("*.py")
                 if path not in allowed and {"torch", "timm", "mlic_edge.models"} & _imported_modules(path)]
    assert offenders == []


def test_core_package_keeps_torch_inside_models_and_tensor_code():
    allowed_dirs = {ROOT / "mlic_edge" / "models"}
    allowed_files = {ROOT / "mlic_edge" / "data" / "torch_data.py"}
    offenders = []
    for path in (ROOT / "mlic_edge").rglob("*.py"):
        if path in allowed_files or any(parent in allowed_dirs for parent in path.parents):
            continue
        if {"torch", "timm"} & _imported_modules(path):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_console_script_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'mlic-edge = "mlic_edge.cli.app:main"' in text
