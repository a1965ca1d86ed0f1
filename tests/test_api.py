"""The Python API (``from mlic_edge import Run``): the whole path without the CLI, and its refusals."""

from __future__ import annotations

import json

import pytest

from mlic_edge.errors import MlicError


def test_the_whole_path_runs_without_the_cli(synth_data, tmp_path):
    """train → export → build int8 → predict → parity → bench → pack, each the CLI's own function."""
    from mlic_edge import Run

    run = Run.train(f"voc:{synth_data}", tmp_path / "baseline", backbone="resnet10t", epochs=2, img_size=64,
                    batch_size=16, optimizer="adamw", lr=3e-3, workers=0, pretrained=False)
    assert run.spec.labels == json.loads((run.path / "run.json").read_text())["labels"]
    exported = run.export()
    assert exported["max_abs_diff"] < 1e-3 and (run.path / "reference.npz").is_file()
    built = run.build("int8", backend="onnxruntime", calib_images=16)
    assert built["precision"] == "int8" and (run.path / "model.int8.onnx").is_file()

    records = list(run.predict(str(synth_data / "JPEGImages"), precision="int8", batch=4, max_frames=10))
    assert len(records) == 10 and all({item["label"] for item in record.labels} <= set(run.spec.labels)
                                      for record in records)
    first = next(iter(run.predict(str(synth_data / "JPEGImages"))))  # leaving the loop early stops the source
    assert {"source", "index", "labels", "top_k", "timing"} <= set(first.to_dict())

    # the path, not the 2-epoch model's int8 accuracy (which moves with the CPU's int8 kernels): every limit relaxed
    report = run.parity(precisions=("fp32", "int8"), tolerances={"int8": 100.0, "fp32": 100.0},
                        labelset_floors={"int8": 0.0, "fp32": 0.0}, check=True)
    assert {result["precision"] for result in report["results"]} == {"fp32", "int8"}
    assert (run.path / "reports" / "parity.json").is_file()
    assert run.bench(batches=(1,), iterations=2, warmup=0, frames=4)["results"][0]["batch"] == 1
    assert run.pack(tmp_path / "baseline.mlic.tar.gz").is_file()
    assert {check["id"] for check in run.doctor()["checks"]} >= {"platform", "onnxruntime"}


def test_unknown_options_are_refused_in_one_line(tmp_path):
    from mlic_edge import Run

    with pytest.raises(MlicError) as caught:
        Run(tmp_path).build("int8", calibration_images=16)
    assert "unknown option calibration_images for BuildRequest" in caught.value.message
    assert "calib_images" in caught.value.hint


def test_importing_the_api_loads_nothing_heavy():
    from import_checks import packages_loaded_by

    assert not {"torch", "onnxruntime", "onnx", "tensorrt", "cv2"} & packages_loaded_by("mlic_edge.api")
