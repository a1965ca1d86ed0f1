"""Serving configs: Triton repositories checked against Triton's own ModelConfig protobuf, nvinfer configs against
the Gst-nvinfer property table, and both against the ONNX / engine they serve."""

from __future__ import annotations

import configparser
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mlic_edge.errors import BackendError, BuildError, DataError, MlicError, RunDirError
from mlic_edge.io import read_json, sha256_file, write_json
from mlic_edge.rundir import RunDir
from mlic_edge.runtime.deployment.serving_configs import (MUXER_PUSH_TIMEOUT_US, deepstream_app_name,
                                                          nvinfer_normalisation, write_deepstream_config,
                                                          write_triton_repository)
from mlic_edge.runtime.engines.manifest import MANIFEST_FORMAT
from tests.cli_helpers import assert_one_line_error, invoke

# Gst-nvinfer [property] keys and their value types: the CONFIG_GROUP_INFER_* keys of gstnvinfer_property_parser.h
# (DeepStream 6.x sources) and the "Gst-nvinfer Property" table of
# https://docs.nvidia.com/metropolis/deepstream/dev-guide/text/DS_plugin_gst-nvinfer.html.
# int / bool / float: one number; ints / floats / strings: ';'-separated lists; path: a file, relative to the config.
NVINFER_PROPERTIES = {
    "gie-unique-id": "int", "process-mode": "int", "interval": "int", "labelfile-path": "path", "gpu-id": "int",
    "secondary-reinfer-interval": "int", "output-tensor-meta": "bool", "enable-dla": "bool", "use-dla-core": "int",
    "batch-size": "int", "tensor-meta-pool-size": "int", "network-mode": "int", "model-engine-file": "path",
    "int8-calib-file": "path", "workspace-size": "int", "output-blob-names": "strings", "is-classifier": "bool",
    "network-type": "int", "force-implicit-batch-dim": "bool", "infer-dims": "ints", "output-io-formats": "strings",
    "layer-device-precision": "strings", "model-color-format": "int", "net-scale-factor": "float",
    "offsets": "floats", "mean-file": "path", "maintain-aspect-ratio": "bool", "symmetric-padding": "bool",
    "scaling-filter": "int", "scaling-compute-hw": "int", "network-input-order": "int",
    "input-tensor-from-meta": "bool", "custom-lib-path": "path", "parse-bbox-func-name": "string",
    "parse-bbox-instance-mask-func-name": "string", "engine-create-func-name": "string",
    "parse-classifier-func-name": "string", "custom-network-config": "path", "model-file": "path",
    "proto-file": "path", "uff-file": "path", "uff-input-order": "int", "uff-input-dims": "ints",
    "uff-input-blob-name": "string", "tlt-encoded-model": "path", "tlt-model-key": "string", "onnx-file": "path",
    "num-detected-classes": "int", "enable-dbscan": "bool", "cluster-mode": "int", "classifier-type": "string",
    "classifier-threshold": "float", "classifier-async-mode": "bool", "segmentation-threshold": "float",
    "segmentation-output-order": "int", "output-instance-mask": "bool", "input-object-min-width": "int",
    "input-object-min-height": "int", "input-object-max-width": "int", "input-object-max-height": "int",
    "operate-on-gie-id": "int", "operate-on-class-ids": "ints", "filter-out-class-ids": "ints",
}
NVINFER_RANGES = {"network-mode": {0, 1, 2}, "network-type": {0, 1, 2, 3, 100}, "process-mode": {1, 2},
                  "model-color-format": {0, 1, 2}}


# --- fixtures --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine_run(trained_run, tmp_path_factory) -> RunDir:
    """A copy of the trained run with a fp32 TensorRT-for-RTX engine for batch 1..8 (built once per module)."""
    from mlic_edge.runtime.engines import BuildOptions, build_engine, load_tensorrt

    try:
        trt = load_tensorrt("tensorrt-rtx")
    except BackendError as error:
        pytest.skip(f"TensorRT for RTX is not installed: {error}")
    run = RunDir(tmp_path_factory.mktemp("serving") / "baseline")
    shutil.copytree(trained_run, run.path)
    build_engine(trt, run.onnx("fp32"), run.path, BuildOptions(precision="fp32", batch=(1, 4, 8)))
    return run


def engine_of(run: RunDir) -> Path:
    return next((run.path / "engines").glob("*/model.fp32.engine"))


def stand_in_engine(run: RunDir, batch: tuple[int, int, int]) -> Path:
    """A fp32 "engine" of ``run`` with an mlic-edge manifest of this batch profile: what the configs read of an
    engine (no TensorRT here to build one)."""
    engine = run.path / "engines" / "orin-trt10.3.0" / "model.fp32.engine"
    engine.parent.mkdir(parents=True)
    engine.write_bytes(b"plan")
    write_json(engine.with_suffix(".json"), {
        "format": MANIFEST_FORMAT, "engine": engine.name, "backend": "tensorrt", "precision": "fp32",
        "batch": dict(zip(("min", "opt", "max"), batch)), "onnx": {"sha256": sha256_file(run.onnx())},
        "inputs": [{"name": "images", "dtype": "float32", "shape": [-1, 3, 64, 64]}],
        "outputs": [{"name": "scores", "dtype": "float32", "shape": [-1, 4]}]})
    return engine


def triton_config(model_dir: Path):
    """Parse config.pbtxt into Triton's inference.ModelConfig: a parse error is a schema violation."""
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                           reason="pip install 'tritonclient[grpc]' for Triton's config schema")
    from google.protobuf import text_format

    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def deepstream_app_groups(config_path: Path) -> dict[str, dict[str, str]]:
    """The deepstream-app groups written beside an nvinfer config (a GLib key file), by group."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str
    parser.read_string((config_path.parent / deepstream_app_name(config_path.stem.rsplit("_", 1)[1])).read_text())
    return {group: dict(parser[group]) for group in parser.sections()}


def nvinfer_properties(config_path: Path) -> dict[str, str]:
    """Parse an nvinfer config (GLib key file) and check every key, type and range against the property table."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # GLib keys are case-sensitive
    parser.read_string(config_path.read_text())
    assert parser.sections() == ["property"]
    properties = dict(parser["property"])
    for key, value in properties.items():
        kind = NVINFER_PROPERTIES.get(key)
        assert kind is not None, f"{key} is not a Gst-nvinfer property"
        if kind in ("int", "bool"):
            number = int(value)
            assert kind == "int" or number in (0, 1), f"{key}={value} is not a boolean"
            assert number in NVINFER_RANGES.get(key, {number}), f"{key}={value} is out of range"
        elif kind == "float":
            float(value)
        elif kind in ("ints", "floats"):
            items = value.rstrip(";").split(";")
            assert items and all(items), f"{key}={value} has an empty item"
            [int(item) if kind == "ints" else float(item) for item in items]
        elif kind == "path":
            assert (config_path.parent / value).is_file(), f"{key}={value} does not exist beside the config"
        else:
            assert value.strip() == value and value, f"{key} is empty or padded"
    return properties


def onnx_input_shape(path: Path) -> list:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (model_input,), (model_output,) = session.get_inputs(), session.get_outputs()
    return [model_input.name, model_input.shape[1:], model_output.name, model_output.shape[1:], session]


# --- Triton ----------------------------------------------------------------------------------------------------
def test_triton_onnx_repository_matches_schema_and_model(trained_run, tmp_path):
    run = RunDir(trained_run)
    labels = run.read()["labels"]
    model_dir = write_triton_repository(run, tmp_path / "repo")

    assert model_dir == tmp_path / "repo" / "baseline_fp32_onnx"
    config = triton_config(model_dir)
    assert config.name == model_dir.name and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8
    (model_input,), (model_output,) = config.input, config.output
    assert list(model_input.dims) == [3, 64, 64] and list(model_output.dims) == [4]
    assert model_input.data_type == model_output.data_type == 11  # TYPE_FP32
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 0  # batches of what queued while it was busy
    assert [(group.kind, group.count) for group in config.instance_group] == [(1, 1)]  # KIND_GPU
    assert model_output.label_filename == "labels.txt"
    assert (model_dir / "labels.txt").read_text().splitlines() == labels
    assert {key: config.parameters[key].string_value for key in ("mlic_edge.img_size", "mlic_edge.resize")} == {
        "mlic_edge.img_size": "64", "mlic_edge.resize": run.read().get("resize", "warp")}
    assert json.loads(config.parameters["mlic_edge.std"].string_value) == run.read()["std"]

    served = model_dir / "1" / "model.onnx"
    assert served.read_bytes() == run.onnx().read_bytes()
    input_name, input_dims, output_name, output_dims, session = onnx_input_shape(served)
    assert (input_name, input_dims) == (model_input.name, list(model_input.dims))
    assert (output_name, output_dims) == (model_output.name, list(model_output.dims))
    scores = session.run(None, {input_name: np.zeros((config.max_batch_size, 3, 64, 64), np.float32)})[0]
    assert scores.shape == (8, 4)


def test_triton_cpu_instances_name_and_replacement(trained_run, tmp_path):
    run = RunDir(trained_run)
    out = tmp_path / "repo"
    write_triton_repository(run, out, model_name="shapes", device="cpu", instances=2, max_batch_size=2)
    model_dir = write_triton_repository(run, out, model_name="shapes", device="cpu", instances=3, max_batch_size=2)

    config = triton_config(model_dir)
    assert [(group.kind, group.count) for group in config.instance_group] == [(2, 3)]  # KIND_CPU
    assert config.max_batch_size == 2 and list(config.dynamic_batching.preferred_batch_size) == []
    assert sorted(path.name for path in out.iterdir()) == ["shapes"]  # nothing staged or old left behind
    with pytest.raises(BuildError, match="GPU only"):
        write_triton_repository(run, out, platform="tensorrt", device="cpu")
    with pytest.raises(BuildError, match="platform tensorrt only"):
        write_triton_repository(run, out, engine=out / "model.engine")
    with pytest.raises(BuildError, match="model name"):
        write_triton_repository(run, out, model_name="no spaces/please")


def test_triton_tensorrt_repository_serves_the_engine(engine_run, tmp_path):
    model_dir = write_triton_repository(engine_run, tmp_path / "repo", platform="tensorrt", max_batch_size=32)

    config = triton_config(model_dir)
    assert config.platform == "tensorrt_plan"
    assert config.max_batch_size == 8  # the engine's profile, not the 32 asked for
    assert list(config.input[0].dims) == [3, 64, 64] and list(config.output[0].dims) == [4]
    assert (config.input[0].name, config.output[0].name) == ("images", "scores")
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert (model_dir / "1" / "model.plan").read_bytes() == engine_of(engine_run).read_bytes()


def test_triton_batches_a_frame_from_each_stream(trained_run, tmp_path):
    run = RunDir(trained_run)
    four = triton_config(write_triton_repository(run, tmp_path / "repo", streams=4, batch_timeout_ms=2.5))
    assert (four.max_batch_size, list(four.dynamic_batching.preferred_batch_size)) == (8, [4])
    assert four.dynamic_batching.max_queue_delay_microseconds == 2500
    many = triton_config(write_triton_repository(run, tmp_path / "repo", model_name="many", streams=12))
    assert (many.max_batch_size, list(many.dynamic_batching.preferred_batch_size)) == (12, [12])
    assert many.dynamic_batching.max_queue_delay_microseconds == 0
    with pytest.raises(BuildError, match="--max-batch 4 is below --streams 8") as refused:
        write_triton_repository(run, tmp_path / "repo", max_batch_size=4, streams=8)
    assert "--max-batch 8 or more" in refused.value.hint
    for flag, given in (("--streams", {"streams": 0}), ("--batch-timeout", {"batch_timeout_ms": -1.0})):
        with pytest.raises(MlicError, match=flag):
            write_triton_repository(run, tmp_path / "repo", **given)


def test_triton_refuses_more_streams_than_the_engine_profile(run_copy, tmp_path):
    run = RunDir(run_copy)
    stand_in_engine(run, (1, 2, 2))
    config = triton_config(write_triton_repository(run, tmp_path / "repo", platform="tensorrt", streams=2))
    assert (config.max_batch_size, list(config.dynamic_batching.preferred_batch_size)) == (2, [2])
    with pytest.raises(BuildError) as refused:
        write_triton_repository(run, tmp_path / "repo", model_name="four", platform="tensorrt", streams=4)
    assert str(refused.value).count("\n") == 0
    assert "--streams 4 is outside model.fp32.engine's batch range 1..2" in refused.value.message
    assert f"mlic-edge build --run {run.path} --precision fp32 --backend tensorrt --batch-range 1,4,4" in (
        refused.value.hint)
    assert not (tmp_path / "repo" / "four").exists()


def test_triton_refuses_missing_inputs_clearly(run_copy, tmp_path):
    run = RunDir(run_copy)
    out = tmp_path / "repo"
    with pytest.raises(RunDirError) as missing_onnx:
        write_triton_repository(run, out, precision="fp16")
    assert f"mlic-edge build --run {run.path} --precision fp16" in missing_onnx.value.hint
    with pytest.raises(BuildError) as missing_engine:
        write_triton_repository(run, out, platform="tensorrt")
    assert "no fp32 TensorRT engine" in missing_engine.value.message
    assert f"mlic-edge build --run {run.path} --precision fp32 --backend tensorrt" in missing_engine.value.hint
    run.onnx().unlink()
    with pytest.raises(RunDirError, match="model.onnx is missing") as missing_fp32:
        write_triton_repository(run, out)
    assert "mlic-edge export" in missing_fp32.value.hint
    assert not out.exists()


def test_triton_refuses_an_engine_from_another_onnx(engine_run, tmp_path):
    run = RunDir(tmp_path / "run")
    shutil.copytree(engine_run.path, run.path)
    manifest_path = engine_of(run).with_suffix(".json")
    manifest = read_json(manifest_path)
    write_json(manifest_path, {**manifest, "onnx": {**manifest["onnx"], "sha256": "0" * 64}})
    with pytest.raises(BuildError, match="another version of model.onnx"):
        write_triton_repository(run, tmp_path / "repo", platform="tensorrt")


def test_unwritable_out_is_refused_before_writing(trained_run, tmp_path):
    run = RunDir(trained_run)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(BuildError, match="cannot write to"):
        write_triton_repository(run, blocker / "repo")
    with pytest.raises(BuildError, match="cannot write to"):
        write_deepstream_config(run, blocker / "ds")
    assert blocker.read_text() == "not a folder"


def test_labels_a_labels_file_cannot_carry_are_refused(run_copy, tmp_path):
    run = RunDir(run_copy)
    run.update(labels=["cat", "dog;puppy", "bird", "fish"])
    with pytest.raises(DataError, match="dog;puppy"):
        write_deepstream_config(run, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


# --- DeepStream ------------------------------------------------------------------------------------------------
def test_deepstream_secondary_config_is_valid_nvinfer(trained_run, tmp_path):
    run = RunDir(trained_run)
    meta = run.read()
    config_path = write_deepstream_config(run, tmp_path / "ds", gie_unique_id=3, operate_on_gie_id=1,
                                          batch_size=4)
    properties = nvinfer_properties(config_path)

    assert config_path.name == "config_infer_secondary.txt"
    assert {key: properties[key] for key in ("network-type", "process-mode", "network-mode", "gie-unique-id",
                                             "operate-on-gie-id", "batch-size", "model-color-format",
                                             "output-tensor-meta")} == {
        "network-type": "1", "process-mode": "2", "network-mode": "0", "gie-unique-id": "3",
        "operate-on-gie-id": "1", "batch-size": "4", "model-color-format": "0", "output-tensor-meta": "1"}
    assert "model-engine-file" not in properties  # nvinfer builds its engine from the ONNX on the device
    onnx_file = config_path.parent / properties["onnx-file"]
    assert onnx_file.read_bytes() == run.onnx().read_bytes()
    _, input_dims, output_name, _, _ = onnx_input_shape(onnx_file)
    assert [int(size) for size in properties["infer-dims"].split(";")] == input_dims
    assert properties["output-blob-names"] == output_name
    label_lines = (config_path.parent / properties["labelfile-path"]).read_text().splitlines()
    assert [line.split(";") for line in label_lines] == [meta["labels"]]  # one output layer: one line
    assert float(properties["net-scale-factor"]) == pytest.approx(1 / (255 * np.mean(meta["std"])))
    assert [float(value) for value in properties["offsets"].split(";")] == pytest.approx(
        [255 * value for value in meta["mean"]])
    assert "WARNING" in config_path.read_text() and "net-scale-factor" in config_path.read_text()


def test_deepstream_primary_fp16_config(run_copy, tmp_path):
    run = RunDir(run_copy)
    shutil.copyfile(run.onnx("fp32"), run.onnx("fp16"))  # stands in for the mixed-precision export here
    config_path = write_deepstream_config(run, tmp_path / "ds", precision="fp16", mode="primary",
                                          gie_unique_id=1)
    properties = nvinfer_properties(config_path)
    assert config_path.name == "config_infer_primary.txt"
    assert (properties["process-mode"], properties["network-mode"], properties["onnx-file"]) == (
        "1", "2", "model.fp16.onnx")
    assert "operate-on-gie-id" not in properties
    with pytest.raises(RunDirError, match="model.int8.onnx is missing"):
        write_deepstream_config(run, tmp_path / "ds", precision="int8")


def test_deepstream_config_with_engine(engine_run, tmp_path):
    engine = engine_of(engine_run)
    config_path = write_deepstream_config(engine_run, tmp_path / "ds", engine=engine, batch_size=8)
    properties = nvinfer_properties(config_path)
    assert (config_path.parent / properties["model-engine-file"]).read_bytes() == engine.read_bytes()
    with pytest.raises(BuildError, match="batch range 1..8"):
        write_deepstream_config(engine_run, tmp_path / "ds2", engine=engine, batch_size=16)
    other = tmp_path / "other" / "model.fp16.engine"
    other.parent.mkdir()
    shutil.copyfile(engine, other)
    write_json(other.with_suffix(".json"), {**read_json(engine.with_suffix(".json")), "precision": "fp16"})
    with pytest.raises(BuildError, match="fp16 engine, not fp32"):
        write_deepstream_config(engine_run, tmp_path / "ds3", engine=other)


def test_deepstream_primary_batches_the_streams(trained_run, tmp_path):
    run = RunDir(trained_run)
    config_path = write_deepstream_config(run, tmp_path / "ds", mode="primary", gie_unique_id=1, streams=4,
                                          batch_timeout_ms=5)
    assert nvinfer_properties(config_path)["batch-size"] == "4"
    groups = deepstream_app_groups(config_path)
    assert list(groups) == ["streammux", "primary-gie"]
    assert groups["streammux"] == {"gpu-id": "0", "batch-size": "4", "batched-push-timeout": "5000", "width": "64",
                                   "height": "64", "enable-padding": "0"}  # the model's input: frames scaled once
    assert groups["primary-gie"] == {"enable": "1", "gpu-id": "0", "batch-size": "4", "gie-unique-id": "1",
                                     "config-file": config_path.name}
    assert "nvstreammux name=m gpu-id=0 batch-size=4 batched-push-timeout=5000" in (
        config_path.parent / deepstream_app_name("primary")).read_text()
    with pytest.raises(BuildError, match="--batch-size 2 differs from --streams 4") as refused:
        write_deepstream_config(run, tmp_path / "ds2", mode="primary", streams=4, batch_size=2)
    assert "leave --batch-size out" in refused.value.hint and not (tmp_path / "ds2").exists()


def test_deepstream_secondary_batches_objects_of_the_streams(trained_run, tmp_path):
    run = RunDir(trained_run)
    config_path = write_deepstream_config(run, tmp_path / "ds", streams=3)
    groups = deepstream_app_groups(config_path)
    assert nvinfer_properties(config_path)["batch-size"] == groups["secondary-gie0"]["batch-size"] == "3"
    assert groups["secondary-gie0"]["operate-on-gie-id"] == "1" and groups["secondary-gie0"]["gie-unique-id"] == "2"
    # --batch-timeout 0 (run's no wait) has no nvstreammux equivalent: the samples' timeout instead
    assert groups["streammux"]["batched-push-timeout"] == str(MUXER_PUSH_TIMEOUT_US) == "40000"
    assert (groups["streammux"]["batch-size"], groups["streammux"]["width"]) == ("3", "1920")  # the detector's
    objects = write_deepstream_config(run, tmp_path / "ds", streams=3, batch_size=16)
    assert nvinfer_properties(objects)["batch-size"] == deepstream_app_groups(objects)["secondary-gie0"]["batch-size"]
    assert deepstream_app_groups(objects)["streammux"]["batch-size"] == "3"


def test_deepstream_refuses_an_engine_profile_below_the_streams(run_copy, tmp_path, capsys):
    engine = stand_in_engine(RunDir(run_copy), (1, 2, 2))
    result = invoke(capsys, "export", "deepstream", tmp_path / "ds", "--run", run_copy, "--mode", "primary",
                    "--engine", engine, "--streams", "4")
    assert_one_line_error(result, "batch size (--streams, --batch-size) 4 is outside model.fp32.engine's batch range "
                                  "1..2", "--batch-range 1,4,4")
    assert not (tmp_path / "ds").exists()
    result = invoke(capsys, "export", "deepstream", tmp_path / "ds", "--run", run_copy, "--mode", "primary",
                    "--engine", engine, "--streams", "2", "--batch-timeout", "10")
    assert result.code == 0, result.err
    assert deepstream_app_groups(tmp_path / "ds" / "config_infer_primary.txt")["streammux"][
        "batched-push-timeout"] == "10000"


def test_nvinfer_normalisation_error_is_what_the_config_says(trained_run, tmp_path):
    """Preprocess like nvinfer (one scale) and exactly; the scores move by little, and the bound holds."""
    import onnxruntime as ort

    from mlic_edge.data import open_dataset
    from mlic_edge.data.images import read_image, resize_image

    run = RunDir(trained_run)
    meta = run.read()
    properties = nvinfer_properties(write_deepstream_config(run, tmp_path / "ds"))
    scale = float(properties["net-scale-factor"])
    offsets = np.array([float(value) for value in properties["offsets"].split(";")], np.float32)[:, None, None]
    mean, std = np.array(meta["mean"])[:, None, None], np.array(meta["std"])[:, None, None]
    dataset = open_dataset(meta["dataset"]["spec"], role="eval", split=meta["dataset"].get("eval_split"))
    size = meta["img_size"]
    rgb = np.stack([resize_image(read_image(path), size, size, meta.get("resize", "warp"))[:, :, ::-1]
                    .transpose(2, 0, 1).astype(np.float32) for path in dataset.image_paths[:32]])
    exact = ((rgb / 255 - mean) / std).astype(np.float32)
    nvinfer = (scale * (rgb - offsets)).astype(np.float32)

    bound = nvinfer_normalisation(meta["mean"], meta["std"])
    assert np.abs(nvinfer - exact).max() <= bound.max_abs_error + 1e-4
    session = ort.InferenceSession(str(run.onnx()), providers=["CPUExecutionProvider"])
    score_change = np.abs(session.run(None, {"images": nvinfer})[0] - session.run(None, {"images": exact})[0])
    assert score_change.max() < 0.05
