"""The package as pip installs it: every source file of the package folders in the sdist and, at its namespaced
path, in the wheel built from that sdist; the wheel installed non-editable reports the source's version and imports
an official checkpoint (the torch-free edge path on the same wheel: tests/test_edge_install.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import mlic_edge
from test_import_command import official_files

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# Where each top-level source folder lands in the wheel (docs/design.md, "Layout"). Stated here rather than read from
# pyproject.toml, so that a mapping dropped there fails this test.
NAMESPACED = {"mlic_edge": "mlic_edge", "train": "mlic_edge/train", "export": "mlic_edge/export",
              "calibration": "mlic_edge/calibration", "runtime": "mlic_edge/runtime"}


def run_installed(venv: Path, cwd: Path, program: str, *args: object) -> subprocess.CompletedProcess:
    """``program`` of ``venv/bin`` run in ``cwd``; the environment's PYTHONPATH and VIRTUAL_ENV (the test venv's,
    where the checkout is importable) are left out."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(venv / "bin" / program), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def source_files() -> list[str]:
    """The files of the package folders, relative to the repository: git's list where there is one (no caches or
    scratch files), else every file but bytecode."""
    if (REPO / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "--", *NAMESPACED], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.splitlines()
        files = [name for name in listed if (REPO / name).is_file()]  # not one deleted since its last commit
    else:
        files = [path.relative_to(REPO).as_posix() for folder in NAMESPACED for path in (REPO / folder).rglob("*")
                 if path.is_file() and "__pycache__" not in path.parts]
    assert {name.split("/")[0] for name in files} == set(NAMESPACED), files
    return sorted(files)


def test_the_wheel_has_every_source_file_at_its_namespaced_path(built_package, source_files):
    with zipfile.ZipFile(built_package.wheel) as wheel:
        shipped = set(wheel.namelist())
    expected = [f"{NAMESPACED[folder]}/{rest}" for folder, rest in (name.split("/", 1) for name in source_files)]
    missing = [name for name in expected if name not in shipped]
    assert missing == [], f"{built_package.wheel.name} lacks {len(missing)} source files: {missing}"


def test_the_sdist_has_every_source_file(built_package, source_files):
    with tarfile.open(built_package.sdist) as sdist:
        shipped = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}  # below mlic_edge-VERSION/
    missing = [name for name in source_files if name not in shipped]
    assert missing == [], f"{built_package.sdist.name} lacks {len(missing)} source files: {missing}"


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory, built_package) -> Path:
    """A fresh venv with the wheel installed non-editable and without its dependencies: these come from the test
    venv's site-packages, listed in a .pth file (installing PyTorch afresh would cost minutes and gigabytes). A folder
    a .pth file lists is appended to sys.path but its own .pth files are not run, so the checkout's editable-install
    hook there stays off and mlic_edge can only be the wheel's (checked here)."""
    venv = tmp_path_factory.mktemp("wheel") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    installed = run_installed(venv, venv, "python", "-m", "pip", "install", "--quiet", "--no-deps",
                              built_package.wheel)
    assert installed.returncode == 0, installed.stderr[-3000:]
    site = Path(run_installed(venv, venv, "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
                .stdout.strip())
    borrowed = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    (site / "test-venv-packages.pth").write_text("\n".join(borrowed) + "\n")
    located = run_installed(venv, venv, "python", "-c", "import mlic_edge; print(mlic_edge.__file__)")
    assert Path(located.stdout.strip()).parent == site / "mlic_edge", located.stdout + located.stderr
    return venv


def test_the_installed_wheel_has_the_source_version(wheel_venv, tmp_path):
    printed = run_installed(wheel_venv, tmp_path, "mlic-edge", "--version")
    assert printed.returncode == 0 and printed.stdout.strip() == f"mlic-edge {mlic_edge.__version__}", printed
    metadata = run_installed(wheel_venv, tmp_path, "python", "-c",
                             "import importlib.metadata as m; print(m.version('mlic-edge'))")
    assert metadata.stdout.strip() == mlic_edge.__version__, metadata


def test_the_installed_wheel_imports_an_official_checkpoint(wheel_venv, tmp_path, synth_data):
    options, checkpoint = official_files(tmp_path, synth_data)
    result = run_installed(wheel_venv, tmp_path, "mlic-edge", "import", "ml-gcn", checkpoint, "--out", tmp_path / "run",
                           *options, "--img-size", "64", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"] == "mlgcn" and (tmp_path / "run" / "run.json").is_file()
