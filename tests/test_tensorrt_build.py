"""TensorRT builder: flags per TensorRT API, real TensorRT-for-RTX builds, manifests, refusals, GPU detection."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlic_edge.errors import BackendError, BuildError
from mlic_edge.io import read_json, sha256_file
from mlic_edge.runtime.engines.gpu import GpuInfo, detect_gpu, jetson_gpu_from_model, parse_nvidia_smi
from mlic_edge.runtime.engines import (BuildOptions, TensorRT, available_tensorrt_backends, build_engine,
                                        capabilities, check_manifest, engine_target_name, find_engines,
                                        load_tensorrt, plan_build, read_manifest)
from trt_surface import FakeTensorRT, load_surface

REBUILD = "mlic-edge build --run runs/x --precision fp32"
RTX_4090 = GpuInfo(name="NVIDIA GeForce RTX 4090", compute_capability="8.9", memory_mb=24564, source="test")
ORIN = GpuInfo(name="NVIDIA Jetson AGX Orin Developer Kit", compute_capability="8.7", memory_mb=None, source="test")
H100 = GpuInfo(name="NVIDIA H100 80GB HBM3", compute_capability="9.0", memory_mb=81559, source="test")
T4 = GpuInfo(name="Tesla T4", compute_capability="7.5", memory_mb=15360, source="test")


# --- fake TensorRT modules: the real API surface of each supported version (tests/trt_surface.py) ---------------
def fake_tensorrt(version: str, surface: str) -> FakeTensorRT:
    return FakeTensorRT(load_surface(surface), version=version)


TRT86 = fake_tensorrt("8.6.1", "8.6")
TRT10 = fake_tensorrt("10.3.0.26", "10.3")
TRT11 = fake_tensorrt("11.4.0.106", "11.4")


@pytest.fixture(scope="module")
def rtx() -> TensorRT:
    try:
        return load_tensorrt("tensorrt-rtx")
    except BackendError as error:
        pytest.skip(f"TensorRT for RTX is not installed: {error}")


def fakes() -> dict[str, SimpleNamespace]:
    return {"8.6": TRT86, "10": TRT10, "11": TRT11}


def module_for(version: str):
    if version == "rtx":
        return load_tensorrt("tensorrt-rtx").module if "tensorrt-rtx" in available_tensorrt_backends() else None
    return fakes()[version]


# --- capabilities and flag selection -------------------------------------------------------------------------
def test_capabilities_follow_the_api_present(rtx):
    caps86, caps10, caps11, caps_rtx = (capabilities(TRT86), capabilities(TRT10), capabilities(TRT11),
                                        capabilities(rtx.module))
    assert (caps86.strongly_typed, caps86.precision_flags, caps86.explicit_batch_flag) == (False, True, True)
    assert not caps86.progress_monitor and caps86.dla and caps86.version_compatible
    assert (caps10.strongly_typed, caps10.precision_flags, caps10.progress_monitor) == (True, True, True)
    assert (caps11.strongly_typed, caps11.precision_flags, caps11.explicit_batch_flag) == (True, False, False)
    assert caps_rtx.strongly_typed and not caps_rtx.precision_flags and caps_rtx.compute_capability_targets
    assert not (caps_rtx.dla or caps_rtx.version_compatible or caps_rtx.hardware_compatibility)
    assert caps_rtx.timing_cache and caps_rtx.progress_monitor and caps_rtx.named_tensors
    assert not any(asdict(capabilities(SimpleNamespace())).values())  # an empty module can do nothing


@pytest.mark.parametrize("version, precision, dla, strongly_typed, network_flags, builder_flags", [
    ("8.6", "fp32", False, False, ["EXPLICIT_BATCH"], []),
    ("8.6", "fp16", False, False, ["EXPLICIT_BATCH"], ["FP16"]),
    ("8.6", "int8", False, False, ["EXPLICIT_BATCH"], ["INT8"]),
    ("8.6", "fp16", True, False, ["EXPLICIT_BATCH"], ["FP16", "GPU_FALLBACK"]),
    ("8.6", "int8", True, False, ["EXPLICIT_BATCH"], ["INT8", "FP16", "GPU_FALLBACK"]),
    ("10", "fp32", False, True, ["STRONGLY_TYPED"], []),
    ("10", "fp16", False, True, ["STRONGLY_TYPED"], []),
    ("10", "int8", False, True, ["STRONGLY_TYPED"], []),
    ("10", "fp16", True, False, [], ["FP16", "GPU_FALLBACK"]),
    ("10", "int8", True, False, [], ["INT8", "FP16", "GPU_FALLBACK"]),
    ("11", "fp32", False, True, ["STRONGLY_TYPED"], []),
    ("11", "fp16", False, True, ["STRONGLY_TYPED"], []),
    ("11", "int8", False, True, ["STRONGLY_TYPED"], []),
    ("11", "fp16", True, True, ["STRONGLY_TYPED"], ["GPU_FALLBACK"]),
    ("11", "int8", True, True, ["STRONGLY_TYPED"], ["GPU_FALLBACK"]),
    ("rtx", "fp32", False, True, ["STRONGLY_TYPED"], ["REQUIRE_USER_ALLOCATION"]),
    ("rtx", "fp16", False, True, ["STRONGLY_TYPED"], ["REQUIRE_USER_ALLOCATION"]),
    ("rtx", "int8", False, True, ["STRONGLY_TYPED"], ["REQUIRE_USER_ALLOCATION"]),
])
def test_flag_selection(version, precision, dla, strongly_typed, network_flags, builder_flags):
    module = module_for(version)
    if module is None:
        pytest.skip("TensorRT for RTX is not installed")
    plan = plan_build(capabilities(module), BuildOptions(precision=precision, dla_core=0 if dla else None))
    assert (plan.strongly_typed, plan.network_flags, plan.builder_flags) == (strongly_typed, network_flags,
                                                                             builder_flags)
    assert plan.device == ("dla:0" if dla else "gpu")
    # the plan only names flags this API has
    assert all(hasattr(module.NetworkDefinitionCreationFlag, name) for name in plan.network_flags)
    assert all(hasattr(module.BuilderFlag, name) for name in plan.builder_flags)


def test_compatibility_options_where_the_api_has_them():
    plan = plan_build(capabilities(TRT10), BuildOptions(precision="fp16", version_compatible=True,
                                                       hardware_compatibility="ampere+"))
    assert "VERSION_COMPATIBLE" in plan.builder_flags and plan.hardware_compatibility == "AMPERE_PLUS"
    plan = plan_build(capabilities(TRT11), BuildOptions(hardware_compatibility="same-compute-capability"))
    assert plan.hardware_compatibility == "SAME_COMPUTE_CAPABILITY"
    for older in (TRT86, TRT10):  # SAME_COMPUTE_CAPABILITY appeared in TensorRT 10.9
        with pytest.raises(BuildError, match="needs TensorRT 10.9 or later"):
            plan_build(capabilities(older), BuildOptions(hardware_compatibility="same-compute-capability"))


@pytest.mark.parametrize("version, options, says", [
    ("rtx", BuildOptions(precision="fp16", dla_core=0), "cannot build for DLA"),
    ("10", BuildOptions(precision="fp32", dla_core=0), "DLA runs fp16 or int8"),
    ("10", BuildOptions(precision="fp16", dla_core=0, version_compatible=True), "DLA engines cannot be"),
    ("rtx", BuildOptions(version_compatible=True), "cannot build version-compatible"),
    ("rtx", BuildOptions(hardware_compatibility="ampere+"), "--compute-capability"),
    ("10", BuildOptions(hardware_compatibility="turing+"), "unknown hardware compatibility"),
    ("10", BuildOptions(compute_capabilities=("8.6",)), "only TensorRT for RTX"),
    ("rtx", BuildOptions(compute_capabilities=("sm86",)), "not MAJOR.MINOR"),
    ("11", BuildOptions(batch=(4, 2, 8)), "min <= opt <= max"),
    ("11", BuildOptions(precision="int4"), "unknown precision"),
    ("11", BuildOptions(workspace_mb=0), "not positive"),
])
def test_impossible_asks_are_refused(version, options, says):
    module = module_for(version)
    if module is None:
        pytest.skip("TensorRT for RTX is not installed")
    with pytest.raises(BuildError) as caught:
        plan_build(capabilities(module), options)
    assert says in str(caught.value) and caught.value.hint


# --- the TensorRT in hand ------------------------------------------------------------------------------------
def test_missing_tensorrt_says_how_to_get_it():
    if "tensorrt" in available_tensorrt_backends():
        pytest.skip("full TensorRT is installed here")
    with pytest.raises(BackendError) as caught:
        load_tensorrt("tensorrt")
    text = str(caught.value)
    assert "not installed" in text and "JetPack" in text and "pip install" in text
    assert "--backend onnxruntime" in text and "auto" in text
    with pytest.raises(BackendError, match="unknown TensorRT backend"):
        load_tensorrt("tensorflow")


def test_importing_the_package_imports_no_tensorrt_onnx_or_torch():
    from import_checks import packages_loaded_by

    loaded = packages_loaded_by("mlic_edge.runtime.engines")
    assert not {"tensorrt_rtx_bindings", "tensorrt_rtx", "tensorrt", "onnx", "onnxruntime", "torch"} & loaded


# --- real builds with TensorRT for RTX (ahead of time, no GPU) ---------------------------------------------
def tiny_onnx(path: Path, precision: str = "fp32", broken: bool = False) -> Path:
    """A 3→4 channel conv on 8×8 images, dynamic batch: fp32, fp16 (fp32 IO, casts inside) or int8 (Q/DQ)."""
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes, initializers = [], []
    conv_input, conv_weight, conv_output = "x", "w", "y"
    if precision == "fp16":
        initializers.append(numpy_helper.from_array(weights.astype(np.float16), "w"))
        nodes.append(helper.make_node("Cast", ["x"], ["x16"], name="cast_in", to=TensorProto.FLOAT16))
        conv_input, conv_output = "x16", "y16"
    elif precision == "int8":
        scale = np.float32(np.abs(weights).max() / 127)
        initializers += [numpy_helper.from_array(np.round(weights / scale).astype(np.int8), "w_q"),
                         numpy_helper.from_array(np.array(scale, np.float32), "w_scale"),
                         numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
                         numpy_helper.from_array(np.array(0, np.int8), "zero")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "x_scale", "zero"], ["x_q"], name="quant_x"),
                  helper.make_node("DequantizeLinear", ["x_q", "x_scale", "zero"], ["x_dq"], name="dequant_x"),
                  helper.make_node("DequantizeLinear", ["w_q", "w_scale", "zero"], ["w_dq"], name="dequant_w")]
        conv_input, conv_weight = "x_dq", "w_dq"
    else:
        initializers.append(numpy_helper.from_array(weights, "w"))
    nodes.append(helper.make_node("Conv", [conv_input, conv_weight], [conv_output], name="conv0", pads=[1, 1, 1, 1]))
    if precision == "fp16":
        nodes.append(helper.make_node("Cast", ["y16"], ["y"], name="cast_out", to=TensorProto.FLOAT))
    output = "y"
    if broken:
        nodes.append(helper.make_node("Frobnicate", ["y"], ["z"], name="frob_7", domain="com.example"))
        output = "z"
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", 4, 8, 8])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    for key, value in {"precision": precision, "labels": json.dumps(["a", "b", "c", "d"]), "img_size": "8",
                       "mean": "[0.5, 0.5, 0.5]", "std": "[0.25, 0.25, 0.25]"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def tiny_build(rtx, tmp_path_factory):
    """One fp32 ahead-of-time build of the tiny model, shared by the manifest checks."""
    run = tmp_path_factory.mktemp("tiny_run")
    onnx_path = tiny_onnx(run / "model.onnx")
    return build_engine(rtx, onnx_path, run, BuildOptions(batch=(1, 2, 4))), onnx_path


def test_build_trained_model_plain_plan_and_manifest(rtx, run_copy):
    onnx_path = run_copy / "model.onnx"
    run_json = read_json(run_copy / "run.json")
    progress: list[tuple[str, int, int]] = []
    first = build_engine(rtx, onnx_path, run_copy, BuildOptions(precision="fp32"),
                         on_progress=lambda *event: progress.append(event))
    engine, manifest = first.engine_path, first.manifest
    short_version = ".".join(rtx.version.split(".")[:3])
    assert engine == run_copy / "engines" / f"aot-all-rtx{short_version}" / "model.fp32.engine"
    assert first.manifest_path == engine.with_suffix(".json") and first.manifest_path.is_file()
    head = engine.read_bytes()[:16]
    assert head[:1] not in (b"{", b"[") and not head.startswith(b"\xef\xbb\xbf")  # no JSON or text prepended
    assert first.size_bytes == engine.stat().st_size == manifest["engine_bytes"]
    assert manifest["engine_sha256"] == sha256_file(engine)
    assert read_manifest(first.manifest_path) == manifest
    assert manifest["backend"] == "tensorrt-rtx" and manifest["tensorrt_version"] == rtx.version
    assert manifest["gpu"] is None and manifest["compute_capabilities"] is None  # builder's default targets
    assert manifest["precision"] == "fp32" and manifest["batch"] == {"min": 1, "opt": 1, "max": 8}
    assert manifest["inputs"] == [{"name": "images", "shape": [-1, 3, 64, 64], "dtype": "float"}]
    assert manifest["outputs"] == [{"name": "scores", "shape": [-1, 4], "dtype": "float"}]
    assert manifest["onnx"] == {"file": "model.onnx", "sha256": sha256_file(onnx_path)}
    assert manifest["labels"] == run_json["labels"]
    assert manifest["preprocessing"]["img_size"] == 64 and len(manifest["preprocessing"]["mean"]) == 3
    assert manifest["strongly_typed"] and manifest["network_flags"] == ["STRONGLY_TYPED"]
    for key in ("options", "build_seconds", "mlic_edge_version", "created", "notes", "tensorrt_warnings"):
        assert key in manifest
    assert any(phase == "Building engine" for phase, _, _ in progress)
    cache = engine.parent / "timing.cache"
    assert cache.is_file() and not first.timing_cache_reused
    second = build_engine(rtx, onnx_path, run_copy, BuildOptions(precision="fp32"))
    assert second.timing_cache_reused and second.engine_path == engine
    assert find_engines(run_copy) == [first.manifest_path]
    check_manifest(second.manifest, trt=rtx, gpu=RTX_4090, onnx_path=onnx_path, rebuild_command=REBUILD,
                   engine_path=engine)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_build_mixed_and_quantized_onnx(rtx, tmp_path, precision):
    onnx_path = tiny_onnx(tmp_path / f"model.{precision}.onnx", precision)
    result = build_engine(rtx, onnx_path, tmp_path, BuildOptions(precision=precision, batch=(1, 1, 2),
                                                                 compute_capabilities=("8.6", "8.9")))
    manifest = result.manifest
    assert result.engine_path.name == f"model.{precision}.engine" and result.engine_path.parent.name.startswith(
        "aot-sm86-sm89-rtx")
    assert manifest["precision"] == precision and manifest["strongly_typed"]
    assert manifest["builder_flags"] == ["REQUIRE_USER_ALLOCATION"]  # NVIDIA's builder accepts it: graph capture
    assert manifest["compute_capabilities"] == ["8.6", "8.9"]
    assert manifest["inputs"][0]["dtype"] == manifest["outputs"][0]["dtype"] == "float"  # fp32 IO


def test_precision_must_match_the_onnx(rtx, tmp_path):
    onnx_path = tiny_onnx(tmp_path / "model.onnx")
    with pytest.raises(BuildError, match="is the fp32 model, not fp16"):
        build_engine(rtx, onnx_path, tmp_path, BuildOptions(precision="fp16"))


def test_unparsable_onnx_names_the_node_and_writes_nothing(rtx, tmp_path):
    onnx_path = tiny_onnx(tmp_path / "model.onnx", broken=True)
    with pytest.raises(BuildError) as caught:
        build_engine(rtx, onnx_path, tmp_path, BuildOptions())
    text = str(caught.value)
    assert "could not parse model.onnx" in text and "node 'frob_7' (Frobnicate)" in text
    assert "\n" not in text
    assert not [path for path in (tmp_path / "engines").rglob("*") if path.is_file()]


def test_failing_progress_callback_cancels_and_writes_nothing(rtx, tmp_path):
    onnx_path = tiny_onnx(tmp_path / "model.onnx")

    def explode(phase: str, done: int, total: int) -> None:
        if phase != "Parsing ONNX":
            raise KeyError("progress display broke")

    with pytest.raises(KeyError, match="progress display broke"):
        build_engine(rtx, onnx_path, tmp_path, BuildOptions(), on_progress=explode)
    assert not [path for path in (tmp_path / "engines").rglob("*") if path.is_file()]


def test_output_folder_that_cannot_be_made_is_refused_before_parsing(rtx, tmp_path):
    onnx_path = tiny_onnx(tmp_path / "model.onnx", broken=True)  # parsing would fail: it must not be reached
    (tmp_path / "engines").write_text("a file where the engines folder should be")
    with pytest.raises(BuildError, match="cannot write engines to .*engines"):
        build_engine(rtx, onnx_path, tmp_path, BuildOptions())


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_run_folder_is_refused_before_parsing(rtx, tmp_path):
    onnx_path = tiny_onnx(tmp_path / "model.onnx", broken=True)
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(BuildError, match="cannot write engines to"):
            build_engine(rtx, onnx_path, run, BuildOptions())
    finally:
        run.chmod(stat.S_IRWXU)


# --- manifests: refusals and acceptance ----------------------------------------------------------------------
def test_check_manifest_accepts_a_matching_engine(rtx, tiny_build):
    result, onnx_path = tiny_build
    check_manifest(result.manifest, trt=rtx, gpu=RTX_4090, onnx_path=onnx_path, rebuild_command=REBUILD,
                   engine_path=result.engine_path)


def _refusal(manifest, *, trt, gpu, onnx_path, engine_path=None) -> str:
    with pytest.raises(BuildError) as caught:
        check_manifest(manifest, trt=trt, gpu=gpu, onnx_path=onnx_path, rebuild_command=REBUILD,
                       engine_path=engine_path)
    text = str(caught.value)
    assert "\n" not in text
    return text


def test_check_manifest_refuses_another_tensorrt(rtx, tiny_build):
    result, onnx_path = tiny_build
    text = _refusal({**result.manifest, "tensorrt_version": "1.6.0.1"}, trt=rtx, gpu=RTX_4090, onnx_path=onnx_path)
    assert "built with TensorRT for RTX 1.6.0.1" in text and f"rebuild: {REBUILD}" in text
    text = _refusal({**result.manifest, "backend": "tensorrt"}, trt=rtx, gpu=RTX_4090, onnx_path=onnx_path)
    assert "built with TensorRT, not TensorRT for RTX" in text and REBUILD in text


def test_check_manifest_refuses_a_changed_or_missing_onnx(rtx, tiny_build, tmp_path):
    result, onnx_path = tiny_build
    changed = tmp_path / "model.onnx"
    shutil.copy(onnx_path, changed)
    model = onnx.load(str(changed))
    model.doc_string = "re-exported"
    onnx.save(model, str(changed))
    text = _refusal(result.manifest, trt=rtx, gpu=RTX_4090, onnx_path=changed)
    assert "the ONNX changed" in text and REBUILD in text
    text = _refusal(result.manifest, trt=rtx, gpu=RTX_4090, onnx_path=tmp_path / "gone.onnx")
    assert "which is missing" in text and REBUILD in text


def test_check_manifest_refuses_a_replaced_engine(rtx, tiny_build, tmp_path):
    result, onnx_path = tiny_build
    fake_engine = tmp_path / "model.fp32.engine"
    fake_engine.write_bytes(b"not the engine")
    text = _refusal(result.manifest, trt=rtx, gpu=RTX_4090, onnx_path=onnx_path, engine_path=fake_engine)
    assert "does not match its manifest" in text and REBUILD in text


def test_check_manifest_refuses_another_gpu(rtx, tiny_build):
    result, onnx_path = tiny_build
    for_sm86 = {**result.manifest, "compute_capabilities": ["8.6"]}
    text = _refusal(for_sm86, trt=rtx, gpu=H100, onnx_path=onnx_path)
    assert "compute capability 8.6" in text and "9.0" in text and REBUILD in text
    check_manifest(for_sm86, trt=rtx, gpu=replace(RTX_4090, compute_capability="8.6"), onnx_path=onnx_path,
                   rebuild_command=REBUILD)
    assert "none was found" in _refusal(result.manifest, trt=rtx, gpu=None, onnx_path=onnx_path)

    trt10 = TensorRT.from_module(TRT10, "tensorrt")
    on_orin = {**result.manifest, "backend": "tensorrt", "tensorrt_version": TRT10.__version__,
               "compute_capabilities": None,
               "gpu": {"name": ORIN.name, "compute_capability": "8.7", "memory_mb": None, "source": "test"}}
    check_manifest(on_orin, trt=trt10, gpu=ORIN, onnx_path=onnx_path, rebuild_command=REBUILD)
    text = _refusal(on_orin, trt=trt10, gpu=H100, onnx_path=onnx_path)
    assert "built for NVIDIA Jetson AGX Orin" in text and "NVIDIA H100" in text and REBUILD in text
    ampere_plus = {**on_orin, "hardware_compatibility": "ampere+"}
    check_manifest(ampere_plus, trt=trt10, gpu=H100, onnx_path=onnx_path, rebuild_command=REBUILD)
    assert "Ampere or newer" in _refusal(ampere_plus, trt=trt10, gpu=T4, onnx_path=onnx_path)


def test_version_compatible_engines_run_on_later_versions_of_the_same_major(tiny_build):
    result, onnx_path = tiny_build
    manifest = {**result.manifest, "backend": "tensorrt", "tensorrt_version": "10.3.0.26", "compute_capabilities": None,
                "gpu": {"name": H100.name, "compute_capability": "9.0"}, "version_compatible": True}
    later = TensorRT.from_module(fake_tensorrt("10.8.0.1", "10.3"), "tensorrt")
    check_manifest(manifest, trt=later, gpu=H100, onnx_path=onnx_path, rebuild_command=REBUILD)
    assert "10.3.0.26" in _refusal({**manifest, "version_compatible": False}, trt=later, gpu=H100,
                                   onnx_path=onnx_path)
    assert "this is 11.4.0.106" in _refusal(manifest, trt=TensorRT.from_module(TRT11, "tensorrt"), gpu=H100,
                                          onnx_path=onnx_path)


def test_read_manifest_refuses_garbage(tmp_path):
    bad = tmp_path / "model.fp32.json"
    bad.write_text("{not json")
    with pytest.raises(BuildError, match="not valid JSON"):
        read_manifest(bad)
    bad.write_text('{"engine": "x"}')
    with pytest.raises(BuildError, match="not a format-1"):
        read_manifest(bad)


def test_engine_target_names():
    trt10 = TensorRT.from_module(TRT10, "tensorrt")
    assert engine_target_name(trt10, H100) == "nvidia-h100-80gb-hbm3-trt10.3.0"
    assert engine_target_name(trt10, ORIN) == "nvidia-jetson-agx-orin-developer-kit-trt10.3.0"
    with pytest.raises(BuildError, match="no NVIDIA GPU found"):
        engine_target_name(trt10, None)
    rtx_fake = TensorRT(module=None, backend="tensorrt-rtx", version="1.7.1.116",
                        caps=replace(capabilities(TRT11), compute_capability_targets=True))
    assert engine_target_name(rtx_fake, None) == "aot-all-rtx1.7.1"
    assert engine_target_name(rtx_fake, None, ("8.6",)) == "aot-sm86-rtx1.7.1"
    assert engine_target_name(rtx_fake, RTX_4090) == "nvidia-geforce-rtx-4090-rtx1.7.1"


# --- GPU detection -------------------------------------------------------------------------------------------
def test_detect_gpu_finds_nothing_here_quickly():
    started = time.perf_counter()
    found = detect_gpu()
    assert time.perf_counter() - started < 10
    nothing_here = (shutil.which("nvidia-smi") is None and not Path("/dev/nvidia0").exists()
                    and not Path("/proc/device-tree/model").exists())
    if nothing_here:
        assert found is None
    else:
        assert found is None or isinstance(found, GpuInfo)


def test_detect_gpu_from_a_faked_nvidia_smi(tmp_path):
    script = tmp_path / "nvidia-smi"
    script.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 9.0, 81559'\necho 'NVIDIA H100 80GB HBM3, 9.0, 81559'\n")
    script.chmod(0o755)
    found = detect_gpu(nvidia_smi=str(script), jetson_model_file=tmp_path / "absent", use_python_bindings=False)
    assert found == GpuInfo(name="NVIDIA H100 80GB HBM3", compute_capability="9.0", memory_mb=81559,
                            source="nvidia-smi")
    assert parse_nvidia_smi("Tesla T4, 7.5, 15360 MiB\n").memory_mb == 15360
    assert parse_nvidia_smi("Orin (nvgpu), [N/A], [N/A]\n") is None
    assert parse_nvidia_smi("") is None
    failing = tmp_path / "failing-smi"
    failing.write_text("#!/bin/sh\nexit 9\n")
    failing.chmod(0o755)
    assert detect_gpu(nvidia_smi=str(failing), jetson_model_file=tmp_path / "absent", use_python_bindings=False) is None


def test_detect_gpu_from_a_faked_jetson_device_tree(tmp_path):
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    found = detect_gpu(nvidia_smi=None, jetson_model_file=model, use_python_bindings=False)
    assert found is not None and found.compute_capability == "8.7" and found.source == "device-tree"
    assert jetson_gpu_from_model("NVIDIA Jetson Orin Nano Developer Kit").compute_capability == "8.7"
    assert jetson_gpu_from_model("NVIDIA Jetson Xavier NX Developer Kit").compute_capability == "7.2"
    assert jetson_gpu_from_model("NVIDIA Jetson Nano Developer Kit").compute_capability == "5.3"
    assert jetson_gpu_from_model("Raspberry Pi 4 Model B Rev 1.4") is None
