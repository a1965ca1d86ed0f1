"""The import contracts of docs/design.md, checked by import-linter (``[tool.importlinter]`` in pyproject.toml).

import-linter's graph builder walks a package's folder, and mlic_edge spans five top-level folders mapped into one
namespace; so the stage folders are copied into one ``mlic_edge/`` tree first (sources only), exactly as a regular
install lays them out, and linted there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _staged(tmp_path: Path) -> Path:
    """The package as installed: mlic_edge/ with each mapped stage folder at its import path."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package, folder in sorted(mapping.items(), key=lambda item: item[0].count(".")):
        shutil.copytree(ROOT / folder, tmp_path.joinpath(*package.split(".")), ignore=ignore, dirs_exist_ok=True)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint(staged: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.fail("import-linter is not installed: pip install -e '.[dev]'")
    return subprocess.run([str(lint), "pyproject.toml"], cwd=staged, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(staged)})


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    return _staged(tmp_path_factory.mktemp("staged"))


def test_import_contracts_are_kept(staged):
    result = _lint(staged)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "5 kept, 0 broken" in result.stdout


def test_a_broken_contract_fails(staged, tmp_path):
    """The gate bites: calibration importing torch or a command (the int8 plan decides below the commands),
    engines importing the checks, or the CLI reaching past the commands into a stage, is reported."""
    copy = _staged(tmp_path)
    (copy / "mlic_edge" / "cli" / "probe.py").write_text("import mlic_edge.runtime.inference.latency\n")
    (copy / "mlic_edge" / "calibration" / "probe.py").write_text("import torch\n")
    (copy / "mlic_edge" / "calibration" / "command_probe.py").write_text("import mlic_edge.commands.build\n")
    (copy / "mlic_edge" / "runtime" / "engines" / "probe.py").write_text("import mlic_edge.runtime.checks.parity\n")
    result = _lint(copy)
    assert result.returncode != 0
    assert "mlic_edge.calibration.probe -> torch" in result.stdout
    assert "mlic_edge.calibration.command_probe -> mlic_edge.commands.build" in result.stdout
    assert "mlic_edge.runtime.engines.probe -> mlic_edge.runtime.checks.parity" in result.stdout
    assert "mlic_edge.cli.probe -> mlic_edge.runtime.inference.latency" in result.stdout
