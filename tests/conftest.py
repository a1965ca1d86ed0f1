"""Shared fixtures: one small synthetic dataset, one trained tiny run and one built wheel, made once per test
session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]

# No test reaches the network: ImageNet weights come from files the tests write (tests/test_pretrained.py), and a
# training that asks for them otherwise stops at once instead of trying the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def own_cache_dir(tmp_path_factory):
    """What mlic-edge caches (the models listing) goes to the session's folder, never the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLIC_EDGE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    from mlic_edge.data.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthConfig(classes=4, images=160, size=64, seed=1, video=True, video_frames=12))
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, synth_data) -> Path:
    """A baseline trained for a few short epochs and exported (tests copy it before changing it)."""
    from mlic_edge.export.onnx_export import export_onnx
    from mlic_edge.export.reference import write_reference
    from mlic_edge.rundir import RunDir
    from mlic_edge.train.trainer import TrainConfig, train

    run = RunDir(tmp_path_factory.mktemp("runs") / "baseline")
    # val_fraction=0: it trains on all 120 training images and chooses its best epoch on the eval split, as runs did
    # before the validation split (the figures many tests assert were measured so); ``validated_run`` has one.
    train(TrainConfig(model="baseline", data=f"voc:{synth_data}", out=run.path, backbone="resnet10t", epochs=6,
                      img_size=64, batch_size=16, optimizer="adamw", lr=3e-3, workers=0, seed=0, pretrained=False,
                      val_fraction=0.0))
    export_onnx(run, check_images=8)
    write_reference(run)
    return run.path


@pytest.fixture(scope="session")
def validated_run(tmp_path_factory, synth_data) -> Path:
    """A tiny baseline trained with the default validation split (10 % of the 120 training images, at least 8:
    12 images held out before training) and exported (tests copy it before changing it)."""
    from mlic_edge.export.onnx_export import export_onnx
    from mlic_edge.rundir import RunDir
    from mlic_edge.train.trainer import TrainConfig, train

    run = RunDir(tmp_path_factory.mktemp("runs") / "validated")
    train(TrainConfig(model="baseline", data=f"voc:{synth_data}", out=run.path, recipe="quick",
                      backbone="resnet10t", epochs=3, img_size=32, batch_size=16, workers=0, seed=0,
                      pretrained=False))
    export_onnx(run, check_images=8)
    return run.path


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(trained_run, target)
    return target


class BuiltPackage(NamedTuple):
    sdist: Path
    wheel: Path


@pytest.fixture(scope="session")
def built_package(tmp_path_factory) -> BuiltPackage:
    """The sdist of a copy of this source tree and the wheel built from that sdist, as `python -m build` makes them
    for a release (the copy keeps build/ and *.egg-info out of the checkout)."""
    work = tmp_path_factory.mktemp("package")
    source = work / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv*", "runs", "build", "dist", "demo",
                                                                "__pycache__", "*.egg-info", ".pytest_cache"))
    result = subprocess.run([sys.executable, "-m", "build", "--outdir", str(work / "dist"), str(source)],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [sdist] = (work / "dist").glob("*.tar.gz")
    [wheel] = (work / "dist").glob("*.whl")
    return BuiltPackage(sdist, wheel)
