"""INT8 calibration: image selection, Q/DQ placement and symmetric scales, no INT32 bias, accuracy, reuse of the
calibration record, --keep-fp, sensitivity, and NVIDIA's parser + builder accepting the result."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from mlic_edge.calibration import (METHODS, CalibrationSet, layer_sensitivity, quantizable_nodes, quantize_int8,
                                   quantized_node_names, residual_add_inputs, select_calibration_set)
from mlic_edge.calibration import images as calibration_images
from mlic_edge.data import open_dataset
from mlic_edge.data.dataset import MultiLabelDataset
from mlic_edge.data.images import preprocess, read_image
from mlic_edge.errors import CalibrationError
from mlic_edge.metrics import mean_average_precision
from mlic_edge.rundir import RunDir
from mlic_edge.spec import WEIGHTED_OP_TYPES, Preprocessing

CALIBRATION_IMAGES = 48


def _dataset(targets: list[list[int]], root: Path = Path("/nowhere")) -> MultiLabelDataset:
    array = np.asarray(targets, dtype=np.int8)
    return MultiLabelDataset(names=[f"c{i}" for i in range(array.shape[1])],
                             image_paths=[root / f"{i:03d}.jpg" for i in range(len(array))], targets=array,
                             root=root, format="voc", split="trainval", spec=f"voc:{root}")


# ----------------------------------------------------------------------------------------------- selection


def test_selection_covers_every_class_including_a_rare_one_and_is_deterministic():
    rng = np.random.default_rng(3)
    targets = np.zeros((200, 5), dtype=np.int8)
    targets[:, :4] = rng.random((200, 4)) < 0.5
    targets[137, 4] = 1  # the tail class: one image in 200
    dataset = _dataset(targets.tolist())
    first = select_calibration_set(dataset, 6, seed=7)
    assert len(first) == 6 and first.requested == 6
    assert "137.jpg" in {path.name for path in first.image_paths}
    assert first.missing_classes() == [] and first.class_counts["c4"] == 1
    assert select_calibration_set(dataset, 6, seed=7).image_ids == first.image_ids
    assert select_calibration_set(dataset, 6, seed=8).image_ids != first.image_ids


def test_fewer_images_than_asked_uses_all_and_says_how_many(monkeypatch):
    warned: list[str] = []
    monkeypatch.setattr(calibration_images, "warn", warned.append)
    chosen = select_calibration_set(_dataset([[1, 0], [0, 1], [1, 1]]), 10)
    assert len(chosen) == 3 and chosen.requested == 10
    assert any("asked for 10" in note and "using all 3" in note for note in chosen.notes)
    assert warned == chosen.notes


def test_class_absent_from_calibration_is_warned_by_name(monkeypatch):
    warned: list[str] = []
    monkeypatch.setattr(calibration_images, "warn", warned.append)
    chosen = select_calibration_set(_dataset([[1, 0, 0], [0, 1, 0], [1, 1, -1]]), 2)
    assert chosen.missing_classes() == ["c2"]
    assert len(warned) == 1 and "c2" in warned[0]
    with pytest.raises(CalibrationError):
        select_calibration_set(_dataset([[1]]), 0)


def test_fingerprint_ignores_order_and_sees_file_bytes(tmp_path):
    for name, data in (("a.jpg", b"one"), ("b.jpg", b"two")):
        (tmp_path / name).write_bytes(data)

    def make(names: list[str]) -> CalibrationSet:
        return CalibrationSet([tmp_path / n for n in names], names, ["x"], {"x": 1}, len(names))

    before = make(["a.jpg", "b.jpg"]).fingerprint()
    assert make(["b.jpg", "a.jpg"]).fingerprint() == before
    (tmp_path / "b.jpg").write_bytes(b"changed")
    assert make(["a.jpg", "b.jpg"]).fingerprint() != before


# ----------------------------------------------------------------------------------------------- quantization


@pytest.fixture(scope="module")
def run(trained_run, tmp_path_factory) -> RunDir:
    target = tmp_path_factory.mktemp("int8") / "run"
    shutil.copytree(trained_run, target)
    return RunDir(target)


@pytest.fixture(scope="module")
def calibration(synth_data) -> CalibrationSet:
    return select_calibration_set(open_dataset(f"voc:{synth_data}", "train"), CALIBRATION_IMAGES)


def _quantize(run: RunDir, calibration: CalibrationSet | None, method: str = "entropy", out: str = "model.int8.onnx",
              **kwargs):
    meta = run.read()
    return quantize_int8(run.onnx("fp32"), run.path / out, run.path / "calibration", method=method,
                         calibration=calibration, preprocessing=Preprocessing(int(meta["img_size"]), meta["mean"],
                                                                              meta["std"]), **kwargs)


@pytest.fixture(scope="module")
def int8(run, calibration):
    steps: list[tuple[int, int]] = []
    report = _quantize(run, calibration, progress=lambda done, total: steps.append((done, total)))
    assert steps and steps[-1] == (CALIBRATION_IMAGES, CALIBRATION_IMAGES)
    return report


@pytest.fixture(scope="module")
def eval_inputs(synth_data, run):
    meta = run.read()
    dataset = open_dataset(f"voc:{synth_data}", "eval")
    batch = np.stack([preprocess(read_image(path), int(meta["img_size"]), meta["mean"], meta["std"])
                      for path in dataset.image_paths])
    return batch, dataset.targets


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def test_weights_are_per_channel_symmetric_int8_and_biases_stay_float(int8):
    model = onnx.load(str(int8.path))
    initializers = {init.name: init for init in model.graph.initializer}
    producers = _producers(model)
    weighted = [node for node in model.graph.node if node.op_type in WEIGHTED_OP_TYPES]
    assert weighted
    for node in weighted:
        dq = producers.get(node.input[1])
        assert dq is not None and dq.op_type == "DequantizeLinear", node.name
        weight, scale, zero_point = (initializers[name] for name in dq.input[:3])
        assert weight.data_type == TensorProto.INT8
        out_channels = weight.dims[1] if node.op_type == "ConvTranspose" else weight.dims[0]
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i == 0 for a in node.attribute):
            out_channels = weight.dims[1]
        assert numpy_helper.to_array(scale).shape == (out_channels,), node.name
        axis = {a.name: a.i for a in dq.attribute}.get("axis", 1)
        if node.op_type == "Conv":
            assert axis == 0
        if len(node.input) > 2 and node.input[2]:
            assert node.input[2] in initializers and initializers[node.input[2]].data_type == TensorProto.FLOAT
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero_point = numpy_helper.to_array(initializers[node.input[2]])
            assert initializers[node.input[2]].data_type == TensorProto.INT8
            assert not zero_point.any(), f"{node.name} is not symmetric"
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers:
            assert initializers[node.input[0]].data_type != TensorProto.INT32, "bias quantized to INT32"


def test_qdq_placement_is_the_one_tensorrt_fuses(int8, run):
    """Q/DQ on the activation inputs of Conv/Gemm/MatMul and on the shortcut of residual Adds, nowhere else: no Q/DQ
    between a Conv and its Relu or on the Conv branch of an Add (TensorRT fuses Conv + Add + Relu), none on an Add's
    output."""
    fp32 = onnx.load(str(run.onnx("fp32")))
    model = onnx.load(str(int8.path))
    producers = _producers(model)
    constants = {init.name for init in model.graph.initializer}
    weighted_inputs = {name for node in fp32.graph.node if node.op_type in WEIGHTED_OP_TYPES for name in node.input}
    residual = residual_add_inputs(fp32)
    nodes = {node.name: node for node in fp32.graph.node}
    shortcuts = {nodes[name].input[index] for name, index in residual.items()}
    fp32_constants = {init.name for init in fp32.graph.initializer}
    block_adds = {node.name for node in fp32.graph.node
                  if node.op_type == "Add" and not fp32_constants & set(node.input)}
    assert residual.keys() == block_adds and residual  # a ResNet: every block's Add is fed by a Conv
    assert {node.input[0] for node in model.graph.node if node.op_type == "QuantizeLinear"} \
        <= weighted_inputs | shortcuts  # nothing else is quantized: no Conv output before a Relu, no Add output
    quantized = quantized_node_names(model)
    assert int8.quantized_nodes == len(quantized) > 0
    for node in model.graph.node:
        inputs = [name for name in node.input if name and name not in constants]
        fed = [producers.get(name) is not None and producers[name].op_type == "DequantizeLinear" for name in inputs]
        if node.op_type in WEIGHTED_OP_TYPES:
            assert all(fed), f"{node.name}: an activation input is not quantized"
        elif node.op_type == "Add" and node.name in residual:
            index = residual[node.name]
            assert fed[index] and not fed[1 - index], f"{node.name}: Q/DQ belongs on the shortcut alone"
            assert producers[node.input[1 - index]].op_type == "Conv"  # the fused branch stays float
        elif node.op_type == "Relu":
            assert not any(fed), f"{node.name} reads a dequantized Conv output"


def test_metadata_is_carried_and_marks_int8(int8, run):
    meta = {entry.key: entry.value for entry in onnx.load(str(int8.path)).metadata_props}
    fp32 = {entry.key: entry.value for entry in onnx.load(str(run.onnx("fp32"))).metadata_props}
    assert meta["precision"] == "int8" and meta["labels"] == fp32["labels"]
    assert meta["calibration_key"] == int8.key and len(meta["source_onnx_sha256"]) == 64


@pytest.mark.parametrize("method", METHODS)
def test_int8_map_within_one_and_a_half_points_of_fp32(run, calibration, eval_inputs, method):
    import onnxruntime as ort

    images, targets = eval_inputs

    def mean_ap(path: Path) -> float:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return mean_average_precision(session.run(None, {"images": images})[0], targets).map

    report = _quantize(run, calibration, method=method, out=f"model.int8.{method}.onnx")
    fp32_map, int8_map = mean_ap(run.onnx("fp32")), mean_ap(report.path)
    print(f"{method}: fp32 mAP {fp32_map:.4f}, int8 mAP {int8_map:.4f}")
    assert abs(fp32_map - int8_map) <= 0.015


def test_record_is_reused_without_reading_images_and_changes_with_data(run, calibration, int8, synth_data,
                                                                     monkeypatch):
    record = int8.record_dir
    assert record.parent == run.path / "calibration" and (record / "record.json").is_file()
    stored = (record / "record.json").read_text()
    assert '"images_used": 48' in stored and '"method": "entropy"' in stored
    ranges = (record / "ranges.json").read_bytes()

    def no_images(*args, **kwargs):
        raise AssertionError("images were read although the record exists")

    monkeypatch.setattr(CalibrationSet, "batches", no_images)
    again = _quantize(run, calibration)
    assert again.reused and again.key == int8.key and again.images == CALIBRATION_IMAGES
    assert (record / "ranges.json").read_bytes() == ranges
    offline = _quantize(run, None)
    assert offline.reused and offline.key == int8.key
    monkeypatch.undo()

    other = select_calibration_set(open_dataset(f"voc:{synth_data}", "train"), CALIBRATION_IMAGES - 8)
    changed = _quantize(run, other, out="model.int8.other.onnx")
    assert not changed.reused and changed.key != int8.key


def test_no_record_and_no_images_is_a_clear_error(run_copy):
    with pytest.raises(CalibrationError, match="no minmax calibration record") as error:
        _quantize(RunDir(run_copy), None, method="minmax")
    assert "--calib-data" in error.value.hint


def test_unreadable_images_leave_nothing_behind(run_copy, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    bad = CalibrationSet([broken], ["broken.jpg"], ["x"], {"x": 1}, 1)
    with pytest.raises(CalibrationError, match="could be read"):
        _quantize(RunDir(run_copy), bad)
    assert not (run_copy / "model.int8.onnx").exists()
    assert not any((run_copy / "calibration").glob("*/record.json"))


def test_a_layer_input_the_same_for_every_image_is_named_as_the_cause(run_copy, calibration):
    """An image-independent branch left in the graph (its values equal over the images up to rounding) cannot be
    histogrammed by percentile/entropy calibration: the error says so and how to get past it."""
    path = RunDir(run_copy).onnx("fp32")
    model = onnx.load(str(path))
    graph, image = model.graph, model.graph.input[0].name
    graph.initializer.extend([numpy_helper.from_array(np.array(value, np.float32), name) for name, value in
                              (("tiny", 1e-7), ("one", 1.0), ("weight", [[2.0]]))])
    graph.initializer.append(numpy_helper.from_array(np.array([1]), "unsqueeze_axes"))
    graph.node.extend([onnx.helper.make_node("ReduceMean", [image], ["mean"], axes=[1, 2, 3], keepdims=0),
                       onnx.helper.make_node("Mul", ["mean", "tiny"], ["small"]),
                       onnx.helper.make_node("Add", ["small", "one"], ["constant_ish"]),
                       onnx.helper.make_node("Unsqueeze", ["constant_ish", "unsqueeze_axes"], ["column"]),
                       onnx.helper.make_node("MatMul", ["column", "weight"], ["branch"], name="branch")])
    graph.output.append(onnx.helper.make_tensor_value_info("branch", onnx.TensorProto.FLOAT, None))
    onnx.save(model, str(path))
    with pytest.raises(CalibrationError, match="finite-sized bins") as error:
        _quantize(RunDir(run_copy), calibration, method="percentile")
    assert "same for every calibration image" in error.value.hint and "--calib-method minmax" in error.value.hint


def test_keep_fp_is_honoured_and_unknown_names_refused(run, calibration, int8, eval_inputs):
    ranked = layer_sensitivity(run.onnx("fp32"), int8.path, eval_inputs[0][:16], top=3)
    assert len(ranked) == 3 and ranked[0]["added_error"] >= ranked[-1]["added_error"]
    worst = next(row["node"] for row in ranked if row["op_type"] in WEIGHTED_OP_TYPES)
    assert worst in quantizable_nodes(onnx.load(str(run.onnx("fp32"))))

    kept = _quantize(run, calibration, out="model.int8.keep.onnx", keep_fp=[worst])
    assert kept.reused and kept.kept_fp == [worst]
    model = onnx.load(str(kept.path))
    node = next(n for n in model.graph.node if n.name == worst)
    assert node.input[1] in {init.name for init in model.graph.initializer}  # weight feeds it directly
    assert worst not in quantized_node_names(model)

    with pytest.raises(CalibrationError, match="no-such-layer") as error:
        _quantize(run, calibration, out="model.int8.bad.onnx", keep_fp=["no-such-layer"])
    assert "/Conv" in error.value.hint


def test_tensorrt_parser_and_builder_accept_the_int8_model_strongly_typed(int8):
    trt = pytest.importorskip("tensorrt_rtx_bindings")
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(int8.path.read_bytes())
    assert ok, [parser.get_error(i).desc() for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (1, 3, 64, 64), (2, 3, 64, 64), (4, 3, 64, 64))
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is not None


def _activation_scales(path: Path) -> dict[str, float]:
    """Scale of each activation QuantizeLinear (weights are quantized offline: no QuantizeLinear on them)."""
    model = onnx.load(str(path))
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return {node.input[0]: float(constants[node.input[1]]) for node in model.graph.node
            if node.op_type == "QuantizeLinear" and node.input[1] in constants and constants[node.input[1]].size == 1}


def test_entropy_and_percentile_clip_ranges_that_minmax_keeps_whole(run, calibration):
    """The methods really differ: ORT's quantize_static defaults left entropy at 128 histogram bins for 128 target
    bins, which can only choose the full range (entropy == minmax). Clipping methods never widen a range."""
    scales = {method: _activation_scales(_quantize(run, calibration, method=method,
                                                   out=f"model.int8.scales.{method}.onnx").path)
              for method in METHODS}
    assert scales["entropy"].keys() == scales["minmax"].keys()
    for method in ("entropy", "percentile"):
        assert all(scales[method][t] <= scales["minmax"][t] * (1 + 1e-6) for t in scales["minmax"])
        narrower = sum(scales[method][t] < scales["minmax"][t] * 0.95 for t in scales["minmax"])
        assert narrower >= len(scales["minmax"]) // 4, f"{method} clipped only {narrower} tensors"
