"""`export --uint8-input`: the normalisation folded into the graph, so frames go to the GPU as captured. The folded
model must give the float model's scores on the raw frames, and every stage after export must take it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cli_helpers import assert_one_line_error, invoke
from mlic_edge.data import open_dataset
from mlic_edge.data.images import model_input, preprocess, read_image
from mlic_edge.export.fold_input import fold_uint8_input


def _scores(model, inputs):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": inputs})[0]


def test_folded_graph_on_raw_frames_equals_the_float_graph_on_preprocessed_ones(trained_run, synth_data):
    meta = json.loads((trained_run / "run.json").read_text())
    frames = [read_image(p) for p in open_dataset(f"voc:{synth_data}", role="eval").image_paths[:12]]
    size, mean, std = meta["img_size"], meta["mean"], meta["std"]
    float_model = onnx.load(str(trained_run / "model.onnx"))
    expected = _scores(float_model, np.stack([preprocess(f, size, mean, std) for f in frames]))
    folded = fold_uint8_input(onnx.load(str(trained_run / "model.onnx")), mean, std)
    raw = np.stack([model_input(f, size, mean, std, input_format="uint8-nhwc-bgr") for f in frames])
    assert raw.dtype == np.uint8 and raw.shape == (12, size, size, 3)
    assert folded.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    np.testing.assert_allclose(_scores(folded, raw), expected, atol=1e-5, rtol=0)
    # The flip matters: feeding RGB instead of BGR frames changes the scores (the test can fail).
    assert np.abs(_scores(folded, np.ascontiguousarray(raw[..., ::-1])) - expected).max() > 1e-3


@pytest.fixture(scope="module")
def uint8_run(tmp_path_factory, trained_run, synth_data):
    import shutil

    run = tmp_path_factory.mktemp("uint8") / "run"
    shutil.copytree(trained_run, run)
    return run


def test_uint8_run_exports_runs_builds_and_passes_parity(capsys, uint8_run, synth_data):
    result = invoke(capsys, "export", "--run", uint8_run, "--uint8-input", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["max_abs_diff"] < 1e-4 and "folded" in result.err
    assert json.loads((uint8_run / "run.json").read_text())["input_format"] == "uint8-nhwc-bgr"

    for precision in ("fp16", "int8"):
        built = invoke(capsys, "build", "--run", uint8_run, "-p", precision, "-b", "onnxruntime", "--calib-images",
                       "48", "--qat-epochs", "0", "--json")
        assert built.code == 0, built.err
        proto = onnx.load(str(uint8_run / f"model.{precision}.onnx"))
        assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    engine = invoke(capsys, "build", "--run", uint8_run, "-p", "int8", "-b", "tensorrt-rtx", "--batch", "1,2,4",
                    "--json")
    assert engine.code == 0, engine.err
    assert json.loads(engine.out)["engine"]["manifest"]["inputs"][0]["shape"][1:] == [64, 64, 3]

    ran = invoke(capsys, "run", str(synth_data / "video.mp4"), "--run", uint8_run, "-b", "onnxruntime", "-p", "int8")
    assert ran.code == 0, ran.err
    assert len(ran.out.splitlines()) == 12

    # int8 of this tiny model is held to issue 15's limits here, not the default targets (0.2 points / 98.5 %) it
    # misses on 40 images: the uint8 input is what is checked.
    parity = invoke(capsys, "parity", "--run", uint8_run, "--backend", "onnxruntime", "--backend", "torch", "--json",
                    "--tolerance", "int8=1.5", "--min-same", "int8=0.9")
    assert parity.code == 0, parity.err
    results = {(r["backend"], r["precision"]): r for r in json.loads(parity.out)["results"]}
    assert results[("onnxruntime", "fp32")]["max_abs_diff"] < 1e-4 and results[("torch", "fp32")]["max_abs_diff"] < 1e-4
    assert all(r["passed"] for r in results.values())


def test_uint8_run_serves_nhwc_uint8_in_triton_and_is_refused_by_deepstream(capsys, uint8_run, tmp_path):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    result = invoke(capsys, "export", "triton", str(tmp_path / "repo"), "--run", uint8_run)
    assert result.code == 0, result.err
    (config,) = (tmp_path / "repo").glob("*/config.pbtxt")
    parsed = text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())
    assert parsed.input[0].data_type == model_config_pb2.TYPE_UINT8 and list(parsed.input[0].dims) == [64, 64, 3]
    assert parsed.input[0].format == model_config_pb2.ModelInput.FORMAT_NHWC
    assert_one_line_error(invoke(capsys, "export", "deepstream", str(tmp_path / "ds"), "--run", uint8_run),
                          "uint8 frames", "--uint8-input")
