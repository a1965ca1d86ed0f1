"""Shared fixtures: one small synthetic dataset and one trained tiny run, made once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


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
    train(TrainConfig(model="baseline", data=f"voc:{synth_data}", out=run.path, backbone="resnet10t", epochs=6,
                      img_size=64, batch_size=16, optimizer="adamw", lr=3e-3, workers=0, seed=0))
    export_onnx(run, check_images=8)
    write_reference(run)
    return run.path


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(trained_run, target)
    return target
