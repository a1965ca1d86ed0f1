"""FP16 mixed precision decided by measurement: IO stays fp32, overflow and error hot spots stay fp32, TensorRT accepts it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlic_edge.errors import CalibrationError
from mlic_edge.export.fp16 import ASKED_REASON, convert_to_fp16
from mlic_edge.io import sha256_file
from mlic_edge.rundir import RunDir

SIZE = 8  # hand-made graphs take [batch, 3, 8, 8]


def _scores(path: Path, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["scores"], {"images": inputs})[0]


def _hand_model(path: Path, scale: float = 2e4, offset: float = 0.0) -> Path:
    """images -> Conv -> GlobalAveragePool -> Flatten -> pooled [N, 4], then
    scores = Sigmoid(((pooled + offset - offset) * scale - ReduceMean(...)) * 1e-4).

    With scale 2e4 and conv biases of magnitude 3..6, ``amplify`` reaches ~1e5 (> 65504); with offset 1000,
    ``add_offset`` / ``cancel`` lose the fraction of pooled in fp16 without any tensor leaving fp16's range.
    """
    rng = np.random.default_rng(0)
    weights = (rng.standard_normal((4, 3, 3, 3)) * 0.05).astype(np.float32)
    bias = np.array([4.0, -5.0, 6.0, -3.0], np.float32)
    inits = [numpy_helper.from_array(weights, "conv_w"), numpy_helper.from_array(bias, "conv_b"),
             numpy_helper.from_array(np.array(offset, np.float32), "offset"),
             numpy_helper.from_array(np.array(scale, np.float32), "scale"),
             numpy_helper.from_array(np.array(1e-4, np.float32), "shrink")]
    nodes = [
        helper.make_node("Conv", ["images", "conv_w", "conv_b"], ["features"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["features"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["pooled"], name="flatten"),
        helper.make_node("Add", ["pooled", "offset"], ["shifted"], name="add_offset"),
        helper.make_node("Sub", ["shifted", "offset"], ["unshifted"], name="cancel"),
        helper.make_node("Mul", ["unshifted", "scale"], ["big"], name="amplify"),
        helper.make_node("ReduceMean", ["big"], ["mean"], name="reduce_mean", axes=[1], keepdims=1),
        helper.make_node("Sub", ["big", "mean"], ["centred"], name="centre"),
        helper.make_node("Mul", ["centred", "shrink"], ["logits"], name="shrink"),
        helper.make_node("Sigmoid", ["logits"], ["scores"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes, "hand", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = "precision", "fp32"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _hand_inputs(count: int = 16, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, SIZE, SIZE)).astype(np.float32)


def _eval_images(run: RunDir, role: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    from mlic_edge.data import open_dataset
    from mlic_edge.data.images import preprocess, read_image

    meta = run.read()
    dataset = open_dataset(meta["dataset"]["spec"], role=role,
                           split=meta["dataset"].get("eval_split") if role == "eval" else None)
    images = [preprocess(read_image(path), meta["img_size"], meta["mean"], meta["std"])
              for path in dataset.image_paths[:count]]
    return np.stack(images), dataset.targets[:count]


@pytest.fixture(scope="module")
def converted_run(tmp_path_factory, trained_run):
    """model.fp16.onnx of a copy of the trained run, made once for the tests that only read it."""
    import shutil

    run = RunDir(tmp_path_factory.mktemp("fp16") / "run")
    shutil.copytree(trained_run, run.path)
    calibration, _ = _eval_images(run, "train", 32)
    report = convert_to_fp16(run.onnx("fp32"), run.onnx("fp16"), calibration)
    return run, report


def test_trained_model_io_fp32_weights_fp16(converted_run):
    run, report = converted_run
    model = onnx.load(str(run.onnx("fp16")))
    assert [value.type.tensor_type.elem_type for value in [*model.graph.input, *model.graph.output]] == \
        [TensorProto.FLOAT, TensorProto.FLOAT]
    initializers = {init.name: init.data_type for init in model.graph.initializer}
    conv_weights = [initializers[node.input[1]] for node in model.graph.node if node.op_type == "Conv"]
    assert conv_weights and conv_weights.count(TensorProto.FLOAT16) >= 0.8 * len(conv_weights)
    assert report.images == 32 and report.nodes_total > 20 and report.path == run.onnx("fp16")
    assert report.as_dict()["path"] == str(run.onnx("fp16"))


def test_trained_model_scores_and_map_close(converted_run):
    from mlic_edge.metrics import mean_average_precision

    run, report = converted_run
    images, targets = _eval_images(run, "eval", 64)
    fp32, fp16 = _scores(run.onnx("fp32"), images), _scores(run.onnx("fp16"), images)
    assert np.all(np.isfinite(fp16))
    assert np.abs(fp32 - fp16).max() <= 2e-3  # calibration tolerance 1e-3, measured on other (train) images
    assert report.max_abs_diff <= 1e-3
    map32, map16 = mean_average_precision(fp32, targets).map, mean_average_precision(fp16, targets).map
    assert abs(map32 - map16) < 0.005


def test_metadata_precision_and_source_hash(converted_run):
    run, _ = converted_run
    source = {entry.key: entry.value for entry in onnx.load(str(run.onnx("fp32"))).metadata_props}
    meta = {entry.key: entry.value for entry in onnx.load(str(run.onnx("fp16"))).metadata_props}
    assert meta["precision"] == "fp16" and source["precision"] == "fp32"
    assert meta["source_onnx_sha256"] == sha256_file(run.onnx("fp32"))
    assert meta["labels"] == source["labels"] and meta["img_size"] == source["img_size"]


def _tensorrt_accepts(path: Path, image_shape: tuple[int, int, int]) -> None:
    trt = pytest.importorskip("tensorrt_rtx_bindings")
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(path.read_bytes())
    assert ok, [parser.get_error(index).desc() for index in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (1, *image_shape), (2, *image_shape), (4, *image_shape))
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is not None


def test_tensorrt_rtx_strongly_typed_accepts_trained_fp16(converted_run):
    run, _ = converted_run
    _tensorrt_accepts(run.onnx("fp16"), (3, 64, 64))


def test_overflowing_nodes_kept_fp32_by_measurement(tmp_path):
    source = _hand_model(tmp_path / "hand.onnx")
    inputs = _hand_inputs()
    expected = _scores(source, inputs)

    report = convert_to_fp16(source, tmp_path / "hand.fp16.onnx", inputs)
    kept = {node.name: node for node in report.kept_fp32}
    assert {"amplify", "reduce_mean", "centre", "shrink"} <= set(kept)
    assert "conv" not in kept and "sigmoid" not in kept
    assert kept["amplify"].op_type == "Mul" and "(> fp16 max 65504" in kept["amplify"].reason
    got = _scores(tmp_path / "hand.fp16.onnx", inputs)
    assert np.all(np.isfinite(got)) and np.abs(got - expected).max() <= 1e-3
    _tensorrt_accepts(tmp_path / "hand.fp16.onnx", (3, SIZE, SIZE))


def test_naive_conversion_overflows(tmp_path):
    """The same graph without measurement overflows: proves the test above can fail. ONNX Runtime's CPU provider
    computes fp16 Mul/ReduceMean in fp32, so the overflow is seen on the fp16 tensor itself and in the emulation."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from mlic_edge.export.fp16 import _compare, _fp16_emulation, _load

    source = _hand_model(tmp_path / "hand.onnx")
    naive = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    naive.graph.output.append(helper.make_tensor_value_info("big", TensorProto.FLOAT16, None))
    onnx.save(naive, str(tmp_path / "naive.onnx"))
    session = ort.InferenceSession(str(tmp_path / "naive.onnx"), providers=["CPUExecutionProvider"])
    big = session.run(["big"], {"images": _hand_inputs()})[0]
    assert big.dtype == np.float16 and np.isinf(big).any()
    model = _load(source)
    _, max_diff, _ = _compare(model, _fp16_emulation(model, {}), _hand_inputs())
    assert not np.isfinite(max_diff)


def test_accuracy_refinement_keeps_cancellation(tmp_path):
    """No tensor leaves fp16's range, but (pooled + 1000) - 1000 drops pooled's fraction: the error measurement finds
    the nodes, and the scores come back within tolerance."""
    source = _hand_model(tmp_path / "hand.onnx", scale=5e3, offset=1000.0)
    inputs = _hand_inputs()
    report = convert_to_fp16(source, tmp_path / "hand.fp16.onnx", inputs, range_limit=1e12)
    kept = {node.name: node.reason for node in report.kept_fp32}
    assert {"add_offset", "cancel"} <= set(kept) and report.refinements >= 2
    assert all(reason.startswith("largest fp16 error") for reason in kept.values())
    assert report.max_abs_diff <= 1e-3
    with pytest.raises(CalibrationError, match="after 1 refinement"):
        convert_to_fp16(source, tmp_path / "other.fp16.onnx", inputs, range_limit=1e12, max_refinements=1)
    assert not (tmp_path / "other.fp16.onnx").exists()


def test_keep_fp32_honoured_and_unknown_refused(tmp_path):
    source = _hand_model(tmp_path / "hand.onnx")
    inputs = _hand_inputs()
    report = convert_to_fp16(source, tmp_path / "hand.fp16.onnx", inputs, keep_fp32=["conv"])
    assert any(node.name == "conv" and node.reason == ASKED_REASON for node in report.kept_fp32)
    model = onnx.load(str(tmp_path / "hand.fp16.onnx"))
    initializers = {init.name: init.data_type for init in model.graph.initializer}
    assert initializers["conv_w"] == TensorProto.FLOAT

    with pytest.raises(CalibrationError, match="no_such_node") as error:
        convert_to_fp16(source, tmp_path / "bad.fp16.onnx", inputs, keep_fp32=["no_such_node"])
    assert "conv" in error.value.hint
    assert not (tmp_path / "bad.fp16.onnx").exists()


def test_module_imports_no_torch():
    from import_checks import packages_loaded_by

    assert "torch" not in packages_loaded_by("mlic_edge.export.fp16")
