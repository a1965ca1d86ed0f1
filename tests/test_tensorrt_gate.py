"""The TensorRT gate: every registered model, exported at fp32, fp16 and int8, is accepted by NVIDIA's ONNX parser
and builder (TensorRT for RTX, which builds on a CPU). A model that does not pass fails here; it is never skipped.

Each model is its paper's architecture at toy widths on a small member of its default backbone's family, so the
operators TensorRT sees are the ones of the real model.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mlic_edge.calibration import quantize_int8, select_calibration_set
from mlic_edge.data import open_dataset
from mlic_edge.export.fp16 import convert_to_fp16
from mlic_edge.export.onnx_export import write_onnx
from mlic_edge.label_graph import LabelGraph
from mlic_edge.models import create_model, get_model_entry, list_models
from mlic_edge.rundir import RunDir
from mlic_edge.spec import Preprocessing

IMG_SIZE = 64
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# The default backbone's family, at its smallest: the same block types, a fraction of the weights.
SMALL_BACKBONE = {"resnet50": "resnet10t", "resnet101": "resnet10t", "resnest101e": "resnest14d",
                  "densenet121": "densenet121"}
TINY = {
    "baseline": {},
    "mlgcn": {"hidden": 32},
    "mlgat": {"d_reduced": 32},
    "msrn": {"embed_dim": 32, "label_hidden": 16, "gat_hidden": 16, "fc_hidden": 32},
    "q2l": {"hidden_dim": 32, "ffn_dim": 64},
    "semdep": {"attention_hidden": 16, "dependency_channels": (8, 8, 16, 16)},
}


def test_the_gate_covers_every_registered_model():
    assert {entry.name for entry in list_models()} == set(TINY)
    assert {entry.default_backbone for entry in list_models()} <= set(SMALL_BACKBONE)


@pytest.fixture(scope="module")
def tensorrt():
    from mlic_edge.runtime.engines.api import load_tensorrt

    return load_tensorrt("tensorrt-rtx")  # missing: an error that says how to install it, so the test fails


@pytest.fixture(scope="module")
def calibration(synth_data):
    dataset = open_dataset(f"voc:{synth_data}", role="train")
    return dataset, select_calibration_set(dataset, 24)


def _export(name: str, dataset, run: RunDir) -> None:
    entry = get_model_entry(name)
    label_graph = None
    if entry.needs_label_graph:
        vectors = np.random.default_rng(0).standard_normal((len(dataset.names), 32)).astype(np.float32)
        label_graph = LabelGraph.from_targets(dataset.names, dataset.targets, vectors, "gate")
    torch.manual_seed(0)
    model = create_model(name, len(dataset.names), backbone=SMALL_BACKBONE[entry.default_backbone],
                         label_graph=label_graph, **TINY[name]).eval()
    meta = {"model": name, "backbone": SMALL_BACKBONE[entry.default_backbone], "labels": dataset.names,
            "img_size": IMG_SIZE, "mean": MEAN, "std": STD}
    write_onnx(model.for_export(), torch.zeros(2, 3, IMG_SIZE, IMG_SIZE), run.onnx("fp32"), meta)


def _scores(path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_precision_parses_and_builds(name, tmp_path, tensorrt, calibration):
    from mlic_edge.runtime.engines.builder import BuildOptions, build_engine

    dataset, calibration_set = calibration
    run = RunDir(tmp_path)
    _export(name, dataset, run)
    images = np.concatenate(list(calibration_set.batches(Preprocessing(IMG_SIZE, MEAN, STD))))
    convert_to_fp16(run.onnx("fp32"), run.onnx("fp16"), images[:16])
    quantize_int8(run.onnx("fp32"), run.onnx("int8"), run.path / "calibration", method="minmax",
                  calibration=calibration_set, preprocessing=Preprocessing(IMG_SIZE, MEAN, STD))

    fp32_scores = _scores(run.onnx("fp32"), images)
    for precision in ("fp32", "fp16", "int8"):
        proto = onnx.load(str(run.onnx(precision)))
        assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 IO everywhere
        scores = _scores(run.onnx(precision), images)
        assert np.isfinite(scores).all() and scores.shape == fp32_scores.shape
        result = build_engine(tensorrt, run.onnx(precision), run.path, BuildOptions(precision=precision,
                                                                                   batch=(1, 2, 4)))
        manifest = json.loads(result.manifest_path.read_text())
        assert result.size_bytes > 0 and manifest["precision"] == precision and manifest["strongly_typed"]
        assert manifest["onnx"]["file"] == run.onnx(precision).name
    fp16_diff = np.abs(_scores(run.onnx("fp16"), images) - fp32_scores).max()
    assert fp16_diff < 1e-2, f"{name}: fp16 scores differ from fp32 by {fp16_diff:.3g}"
