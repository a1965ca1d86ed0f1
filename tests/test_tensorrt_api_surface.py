"""The engine builder against the real API surface of every TensorRT it claims to support (8.6, 10.3, 11.4, TensorRT
for RTX 1.7): fakes built from NVIDIA's own bindings (``tests/api_surfaces/``) fail on any attribute, call or
argument the real version lacks, so each build path below proves the builder's calls exist there."""

from __future__ import annotations

import json
import operator
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlic_edge.errors import BuildError
from mlic_edge.runtime.engines.gpu import GpuInfo
from mlic_edge.runtime.engines import BuildOptions, TensorRT, build_engine, plan_build
from trt_surface import SURFACES, SUPPORTED, FakeTensorRT, load_surface, surface_names

ORIN = GpuInfo(name="NVIDIA Jetson AGX Orin Developer Kit", compute_capability="8.7", memory_mb=None, source="test")
RTX_4090 = GpuInfo(name="NVIDIA GeForce RTX 4090", compute_capability="8.9", memory_mb=24564, source="test")
LAYERS = ("conv0", "relu0", "pool0", "topk_head")  # the fake network; DLA takes all but the last


def fake_builder(version: str, *, dla_cores: int = 2, parse_ok: bool = True) -> tuple[TensorRT, FakeTensorRT]:
    """A TensorRT module of ``version``'s real surface whose builder parses a one-input network and 'builds' it."""
    module = FakeTensorRT(load_surface(version))
    state: dict = {"flags": [], "profiles": []}

    def tensor(name, shape):
        made = module.ITensor()
        made.name, = (name,)
        vars(made)["_values"].update(name=name, shape=shape, dtype=module.DataType.FLOAT)
        return made

    def layer(name):
        made = module.ILayer()
        vars(made)["_values"]["name"] = name
        return made

    network_parts = {"inputs": [tensor("images", (-1, 3, 8, 8))], "outputs": [tensor("scores", (-1, 4))],
                     "layers": [layer(name) for name in LAYERS]}
    module.implement("INetworkDefinition", num_inputs=len(network_parts["inputs"]),
                     num_outputs=len(network_parts["outputs"]), num_layers=len(LAYERS),
                     get_input=lambda network, index: network_parts["inputs"][index],
                     get_output=lambda network, index: network_parts["outputs"][index],
                     get_layer=lambda network, index: network_parts["layers"][index])

    def parse_from_file(parser, path):
        state["parsed"] = path
        return parse_ok

    def parser_error(parser, index):
        error = module.ParserError()
        surface = load_surface(version)["members"]["ParserError"]["members"]
        implementation = {"desc": lambda self: "No importer registered for op: Frobnicate", "node": lambda self: 0}
        if "node_name" in surface:
            implementation.update(node_name=lambda self: "frob_7", node_operator=lambda self: "Frobnicate")
        module.implement("ParserError", **implementation)
        return error

    module.implement("OnnxParser", __init__=lambda parser, network, logger: None, parse_from_file=parse_from_file,
                     num_errors=0 if parse_ok else 1, get_error=parser_error)
    module.implement("IOptimizationProfile",
                     set_shape=lambda profile, name, low, opt, high: state["profiles"].append((name, low, opt, high)))

    def create_timing_cache(config, serialized):
        cache = module.ITimingCache()
        vars(cache)["_values"]["stored"] = bytes(serialized)
        return cache

    config_api = dict(set_flag=lambda config, flag: state["flags"].append(flag.name),
                      add_optimization_profile=lambda config, profile: 0,
                      set_memory_pool_limit=lambda config, pool, size: state.update(workspace=(pool.name, size)),
                      create_timing_cache=create_timing_cache, set_timing_cache=lambda config, cache, ignore: True,
                      can_run_on_DLA=lambda config, layer: layer.name != "topk_head",
                      DLA_core=-1, default_device_type=module.DeviceType.GPU, hardware_compatibility_level=None,
                      progress_monitor=None)
    config_members = load_surface(version)["members"]["IBuilderConfig"]["members"]
    if "set_compute_capability" in config_members:
        config_api.update(num_compute_capabilities=0,
                          set_compute_capability=lambda config, capability, index: state.setdefault(
                              "targets", []).append(capability.name))
    if "hardware_compatibility_level" not in config_members:
        del config_api["hardware_compatibility_level"]
    if "progress_monitor" not in config_members:
        del config_api["progress_monitor"]
    module.implement("IBuilderConfig", **config_api)
    module.implement("ITimingCache", serialize=lambda cache: b"timing-cache")

    def build_serialized_network(builder, network, config):
        monitor = config.progress_monitor if "progress_monitor" in config_members else None
        if monitor is not None:
            monitor.phase_start("Building engine", None, 2)
            for step in range(2):
                if not monitor.step_complete("Building engine", step):
                    return None
            monitor.phase_finish("Building engine")
        state["config"] = config
        return b"plan:" + ",".join(state["flags"]).encode()

    module.implement("Builder", __init__=lambda builder, logger: None, num_DLA_cores=dla_cores,
                     create_network=lambda builder, flags=0: state.update(network_flags=flags) or
                     module.INetworkDefinition(),
                     create_builder_config=lambda builder: module.IBuilderConfig(),
                     create_optimization_profile=lambda builder: module.IOptimizationProfile(),
                     build_serialized_network=build_serialized_network)
    module.state = state
    backend = "tensorrt-rtx" if version.startswith("rtx") else "tensorrt"
    return TensorRT.from_module(module, backend), module


def tiny_model(tmp_path: Path, precision: str = "fp32") -> Path:
    from test_tensorrt_build import tiny_onnx

    return tiny_onnx(tmp_path / (f"model.{precision}.onnx" if precision != "fp32" else "model.onnx"), precision)


def _gpu(version: str) -> GpuInfo | None:
    return None if version.startswith("rtx") else ORIN


# --- every supported version, every path the builder has --------------------------------------------------------
@pytest.mark.parametrize("version", surface_names())
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_on_each_real_surface(version, precision, tmp_path):
    trt, module = fake_builder(version)
    progress = []
    result = build_engine(trt, tiny_model(tmp_path, precision), tmp_path,
                          BuildOptions(precision=precision, workspace_mb=256, batch=(1, 2, 4)),
                          gpu=_gpu(version), on_progress=lambda *event: progress.append(event))
    manifest = result.manifest
    assert result.engine_path.read_bytes().startswith(b"plan:")
    assert module.state["profiles"] == [("images", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))]
    assert module.state["workspace"] == ("WORKSPACE", 256 << 20)
    assert manifest["inputs"] == [{"name": "images", "shape": [-1, 3, 8, 8], "dtype": "float"}]
    assert set(module.state["flags"]) == set(manifest["builder_flags"])
    if trt.caps.progress_monitor:
        assert ("Building engine", 2, 2) in progress
    if version.startswith("rtx"):
        assert "REQUIRE_USER_ALLOCATION" in manifest["builder_flags"]  # graph capture needs it on RTX


@pytest.mark.parametrize("version", [name for name in surface_names() if not name.startswith("rtx")])
def test_dla_build_has_a_fixed_batch_and_counts_layers_on_each_surface(version, tmp_path):
    trt, module = fake_builder(version)
    result = build_engine(trt, tiny_model(tmp_path, "fp16"), tmp_path, BuildOptions(precision="fp16", dla_core=1),
                          gpu=ORIN)
    assert module.state["profiles"] == [("images", (1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8))]
    assert result.manifest["batch"] == {"min": 1, "opt": 1, "max": 1}
    assert result.manifest["dla_layers"] == {"dla": 3, "gpu": 1, "gpu_layers": ["topk_head"]}
    config = module.state["config"]
    assert config.DLA_core == 1 and config.default_device_type == module.DeviceType.DLA
    assert "GPU_FALLBACK" in module.state["flags"]


# What create_network must get on each version, written from NVIDIA's docs rather than from plan_build: 8.6's ONNX
# parser refuses a network made without EXPLICIT_BATCH; 10.x types strictly only with STRONGLY_TYPED (else TensorRT
# may pick other precisions without a word), except on DLA, which 10.x documents with the precision flags; 11.x and
# TensorRT for RTX removed EXPLICIT_BATCH, and their bit 0 is STRONGLY_TYPED (10.x's EXPLICIT_BATCH bit).
NETWORK_FLAGS = {("8.6", "gpu"): {"EXPLICIT_BATCH"}, ("8.6", "dla"): {"EXPLICIT_BATCH"},
                 ("10.3", "gpu"): {"STRONGLY_TYPED"}, ("10.3", "dla"): set(),
                 ("11.4", "gpu"): {"STRONGLY_TYPED"}, ("11.4", "dla"): {"STRONGLY_TYPED"},
                 ("rtx-1.7", "gpu"): {"STRONGLY_TYPED"}}


@pytest.mark.parametrize("version, device", list(NETWORK_FLAGS))
def test_network_is_created_with_the_flags_each_version_needs(version, device, tmp_path):
    trt, module = fake_builder(version)
    result = build_engine(trt, tiny_model(tmp_path, "fp16"), tmp_path,
                          BuildOptions(precision="fp16", dla_core=0 if device == "dla" else None), gpu=_gpu(version))
    bits = load_surface(version)["members"]["NetworkDefinitionCreationFlag"]["values"]
    flags = module.state["network_flags"]
    named = {name for name, bit in bits.items() if flags >> bit & 1}
    assert flags == sum(1 << bits[name] for name in named), f"bits {flags:#b} that {version} has no flag for"
    assert named == NETWORK_FLAGS[version, device]
    assert result.manifest["strongly_typed"] == ("STRONGLY_TYPED" in named)  # the manifest says what was built


def test_dla_refuses_a_batch_range_before_any_work(tmp_path):
    trt, module = fake_builder("10.3")
    with pytest.raises(BuildError) as caught:
        build_engine(trt, tiny_model(tmp_path, "fp16"), tmp_path,
                     BuildOptions(precision="fp16", dla_core=0, batch=(1, 1, 8)), gpu=ORIN)
    assert "DLA runs one batch size" in caught.value.message and "--batch-range 1,1,1" in caught.value.hint
    assert "parsed" not in module.state and "\n" not in str(caught.value)


@pytest.mark.parametrize("version, usable", [("8.6", ["ampere+"]), ("10.3", ["ampere+"]),
                                             ("11.4", ["ampere+", "same-compute-capability"])])
def test_hardware_compatibility_levels_follow_the_real_enum(version, usable, tmp_path):
    trt, module = fake_builder(version)
    assert list(trt.caps.hardware_compatibility_levels) == usable
    for level in usable:
        result = build_engine(trt, tiny_model(tmp_path), tmp_path, BuildOptions(hardware_compatibility=level),
                              gpu=ORIN)
        assert module.state["config"].hardware_compatibility_level.name == plan_build(
            trt.caps, BuildOptions(hardware_compatibility=level)).hardware_compatibility
        assert result.manifest["hardware_compatibility"] == level
    if "same-compute-capability" not in usable:  # 10.9 added it: refused in one line before parsing
        trt, module = fake_builder(version)
        with pytest.raises(BuildError) as caught:
            build_engine(trt, tiny_model(tmp_path), tmp_path,
                         BuildOptions(hardware_compatibility="same-compute-capability"), gpu=ORIN)
        assert "needs TensorRT 10.9" in caught.value.message and caught.value.hint == "usable here: ampere+"
        assert "parsed" not in module.state


@pytest.mark.parametrize("version", ["8.6", "10.3", "11.4"])
def test_version_compatible_build_on_each_surface(version, tmp_path):
    trt, module = fake_builder(version)
    result = build_engine(trt, tiny_model(tmp_path), tmp_path, BuildOptions(version_compatible=True), gpu=ORIN)
    assert "VERSION_COMPATIBLE" in module.state["flags"] and result.manifest["version_compatible"]


def test_rtx_targets_named_compute_capabilities(tmp_path):
    trt, module = fake_builder("rtx-1.7")
    build_engine(trt, tiny_model(tmp_path), tmp_path, BuildOptions(compute_capabilities=("7.5", "8.9")))
    assert module.state["targets"] == ["SM75", "SM89"]


@pytest.mark.parametrize("version", surface_names())
def test_parse_errors_name_the_node_on_each_surface(version, tmp_path):
    trt, _ = fake_builder(version, parse_ok=False)
    with pytest.raises(BuildError) as caught:
        build_engine(trt, tiny_model(tmp_path), tmp_path, BuildOptions(), gpu=_gpu(version))
    assert "node 'frob_7' (Frobnicate)" in caught.value.message or "node 'conv0' (Conv)" in caught.value.message
    assert "No importer registered" in caught.value.message


# --- the fakes themselves ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", surface_names())
def test_fakes_expose_exactly_the_real_surface(version):
    surface = load_surface(version)
    module = FakeTensorRT(surface)
    for name, entry in surface["members"].items():
        if entry["kind"] != "class":
            continue
        cls = getattr(module, name)
        public = {attribute for attribute in vars(cls) if not attribute.startswith("_")}
        assert public <= set(entry["members"]), f"{name} has {public - set(entry['members'])}"
    with pytest.raises(AssertionError, match="does not have"):
        module.implement("Runtime", not_a_tensorrt_method=lambda self: None)
    runtime = module.Runtime.__new__(module.Runtime)
    with pytest.raises(AttributeError):
        runtime.no_such_property = 1  # the real pybind11 class has no __dict__ for it either
    with pytest.raises(AttributeError):
        module.Runtime.num_DLA_cores.__set__(runtime, 3)  # read-only in every version
    with pytest.raises(TypeError):
        module.nptype(module.DataType.FP8)  # no numpy type, as the real nptype says


@pytest.mark.parametrize("version", surface_names())
def test_callbacks_override_methods_the_real_base_classes_call(version):
    """TensorRT calls the logger's and progress monitor's methods by their real names: an override under another
    name would never be called."""
    from mlic_edge.runtime.engines.builder import _progress_monitor, recording_logger

    module = FakeTensorRT(load_surface(version))
    overrides = [(recording_logger(module), "ILogger")]
    if hasattr(module, "IProgressMonitor"):
        overrides.append((_progress_monitor(module, lambda *event: None), "IProgressMonitor"))
    for instance, base in overrides:
        real = {name for name, entry in load_surface(version)["members"][base]["members"].items()
                if entry["kind"] == "method" and name != "__init__"}
        defined = {name for klass in type(instance).__mro__[:-1] if klass.__name__ != base for name in vars(klass)
                   if not name.startswith("_") and callable(vars(klass)[name])}
        assert real <= defined, f"{base} methods not overridden: {real - defined}"


def test_a_call_the_real_binding_rejects_is_rejected():
    module = FakeTensorRT(load_surface("10.3"))
    module.implement("IBuilderConfig", set_flag=lambda config, flag: None)
    config = module.IBuilderConfig()
    config.set_flag(module.BuilderFlag.FP16)
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.set_flag(1 << 4)  # an int where pybind11 wants the enum
    with pytest.raises(TypeError):
        config.set_flag(module.BuilderFlag.FP16, True)
    assert not hasattr(FakeTensorRT(load_surface("11.4")).BuilderFlag, "FP16")


def outcomes(probes: dict, taken=lambda result: result) -> dict:
    """Each probe's result (through ``taken``), or the name of the exception it raised."""
    found = {}
    for probe, run in probes.items():
        try:
            found[probe] = taken(run())
        except Exception as error:
            found[probe] = type(error).__name__
    return found


def enum_behaviour(module) -> dict:
    """What the code may do with an enum (DeviceType), each outcome a value or the exception's name."""
    device_type = module.DeviceType
    gpu, dla = device_type.GPU, device_type.DLA
    probes = {"== int": lambda: gpu == 0, "!= int": lambda: gpu != 0, "int == ": lambda: 1 == dla,
              "== itself": lambda: gpu == device_type.GPU, "== other member": lambda: gpu == dla,
              "== made from its value": lambda: device_type(1) == dla, "from a float": lambda: device_type(1.0),
              "from a bool": lambda: device_type(True) == dla, "unnamed value": lambda: device_type(5).name,
              "hash": lambda: hash(dla), "int()": lambda: int(dla), "index": lambda: operator.index(dla),
              "found under its int": lambda: {1: "x"}.get(dla), "is an int": lambda: isinstance(dla, int),
              "truth of 0": lambda: bool(gpu), "repr": lambda: repr(dla), "str": lambda: str(dla),
              "name": lambda: dla.name, "value": lambda: dla.value, "shift": lambda: 1 << dla,
              "order": lambda: gpu < dla, "subscript": lambda: device_type["GPU"], "iterate": lambda: list(device_type),
              "members": lambda: sorted(device_type.__members__)}
    return outcomes(probes)


REAL_ENUM = {"== int": False, "!= int": True, "int == ": False, "== itself": True, "== other member": False,
             "== made from its value": True, "from a float": "TypeError", "from a bool": True, "unnamed value": "???",
             "hash": 1, "int()": 1, "index": 1, "found under its int": None, "is an int": False, "truth of 0": True,
             "repr": "<DeviceType.DLA: 1>", "str": "DeviceType.DLA", "name": "DLA", "value": 1, "shift": "TypeError",
             "order": "TypeError", "subscript": "TypeError", "iterate": "TypeError", "members": ["DLA", "GPU"]}


@pytest.mark.parametrize("version", surface_names())
def test_fake_enums_behave_as_the_real_pybind11_enums(version):
    """An enum never equals an int (``get_tensor_mode(name) == 1`` finds no input on the real bindings)."""
    assert enum_behaviour(FakeTensorRT(load_surface(version))) == REAL_ENUM


def test_real_enums_behave_as_the_fakes_assume():
    real = pytest.importorskip("tensorrt_rtx_bindings")
    assert enum_behaviour(real) == REAL_ENUM


def typed_writes(module, config, runtime) -> dict:
    """Writes and constructions the real setters and constructors take or refuse (TypeError), by what they pass."""
    probes = {"bool property = int": lambda: setattr(runtime, "engine_host_code_allowed", 2),
              "bool property = float": lambda: setattr(runtime, "engine_host_code_allowed", 0.5),
              "bool property = enum": lambda: setattr(runtime, "engine_host_code_allowed", module.DeviceType.DLA),
              "bool property = str": lambda: setattr(runtime, "engine_host_code_allowed", "yes"),
              "enum property = int": lambda: setattr(config, "default_device_type", 1),
              "enum property = enum": lambda: setattr(config, "default_device_type", module.DeviceType.DLA),
              "int property = float": lambda: setattr(config, "DLA_core", 1.0),
              "int property = int": lambda: setattr(config, "DLA_core", 1),
              "int property = bool": lambda: setattr(config, "DLA_core", True),
              "int property = numpy int": lambda: setattr(config, "DLA_core", np.int64(1)),
              "int property = numpy float32": lambda: setattr(config, "DLA_core", np.float32(1)),
              "int property = numpy float64": lambda: setattr(config, "DLA_core", np.float64(1)),
              "int property = enum": lambda: setattr(config, "DLA_core", module.DeviceType.DLA),
              "int property = str": lambda: setattr(config, "DLA_core", "1"),
              "enum argument = int": lambda: config.set_flag(1),
              "Dims2(float)": lambda: module.Dims2(7.0), "Dims2(float, int)": lambda: module.Dims2(7.0, 8),
              "Dims2(tuple of floats)": lambda: module.Dims2((7.0, 8.0)), "Dims2(int, int)": lambda: module.Dims2(7, 8),
              "nptype(int)": lambda: module.nptype(0), "nptype(FLOAT)": lambda: module.nptype(module.DataType.FLOAT)}
    return outcomes(probes, taken=lambda result: "taken")


REAL_WRITES = {"bool property = int": "taken", "bool property = float": "taken", "bool property = enum": "TypeError",
               "bool property = str": "TypeError", "enum property = int": "TypeError", "enum property = enum": "taken",
               "int property = float": "TypeError", "int property = int": "taken", "int property = bool": "taken",
               "int property = numpy int": "taken", "int property = numpy float32": "taken",
               "int property = numpy float64": "TypeError", "int property = enum": "taken",
               "int property = str": "TypeError", "enum argument = int": "TypeError",
               "Dims2(float)": "TypeError", "Dims2(float, int)": "TypeError", "Dims2(tuple of floats)": "TypeError",
               "Dims2(int, int)": "taken", "nptype(int)": "TypeError", "nptype(FLOAT)": "taken"}


@pytest.mark.parametrize("version", surface_names())
def test_fake_setters_and_constructors_check_types_as_the_real_ones(version):
    """``config.default_device_type = 1`` and ``config.DLA_core = float(core)`` are TypeErrors on the real bindings."""
    module = FakeTensorRT(load_surface(version))
    module.implement("IBuilderConfig", set_flag=lambda config, flag: None)
    assert typed_writes(module, module.IBuilderConfig(), module.Runtime.__new__(module.Runtime)) == REAL_WRITES
    write_only = module.Builder.__new__(module.Builder)
    with pytest.raises(AttributeError):
        write_only.gpu_allocator  # a property without a getter in every version


def test_real_setters_and_constructors_check_types_as_the_fakes_assume():
    real = pytest.importorskip("tensorrt_rtx_bindings")
    logger = real.Logger(real.Logger.ERROR)
    assert typed_writes(real, real.Builder(logger).create_builder_config(), real.Runtime(logger)) == REAL_WRITES


def test_surfaces_record_the_api_facts_the_code_relies_on():
    """What the defects of issue 10 hinged on, as the real bindings have it."""
    levels = {name: set(load_surface(name)["members"]["HardwareCompatibilityLevel"]["values"]) for name in SUPPORTED}
    assert "SAME_COMPUTE_CAPABILITY" not in levels["10.3"] | levels["8.6"]
    assert "SAME_COMPUTE_CAPABILITY" in levels["11.4"]
    for name in SUPPORTED:
        runtime = load_surface(name)["members"]["Runtime"]["members"]
        assert runtime["engine_host_code_allowed"]["writable"] and runtime["DLA_core"]["writable"]
        assert load_surface(name)["nptype"]["BF16" if name != "8.6" else "FP8"] is None
    assert "REQUIRE_USER_ALLOCATION" in load_surface("rtx-1.7")["members"]["BuilderFlag"]["values"]
    assert FakeTensorRT(load_surface("10.3")).BuilderFlag.STRIP_PLAN.name == "WEIGHTLESS"  # an alias's printed name
    assert "num_bindings" not in load_surface("10.3")["members"]["ICudaEngine"]["members"]


def test_recorded_rtx_surface_matches_the_installed_bindings(tmp_path):
    """The surface files are regenerated, not hand-edited: the installed TensorRT for RTX introspects the same."""
    pytest.importorskip("tensorrt_rtx_bindings")
    import importlib.metadata

    recorded = load_surface("rtx-1.7")
    installed = importlib.metadata.version("tensorrt-rtx-cu13-bindings")
    if installed != recorded["version"]:
        pytest.skip(f"installed TensorRT for RTX {installed}, recorded {recorded['version']}")
    frontend = tmp_path / "tensorrt_rtx"  # what the tensorrt-rtx meta package installs over the bindings
    frontend.mkdir()
    (frontend / "__init__.py").write_text("from tensorrt_rtx_bindings import *\n"
                                          "from tensorrt_rtx_bindings import __version__\n")
    completed = subprocess.run([sys.executable, str(SURFACES / "dump_tensorrt_api.py"), "--introspect",
                                str(tmp_path), "tensorrt_rtx"], capture_output=True, text=True, check=True)
    live = json.loads(completed.stdout)
    assert live["members"] == recorded["members"] and live["nptype"] == recorded["nptype"]


def test_build_refuses_an_option_this_tensorrt_lacks_before_making_any_onnx(run_copy):
    """`mlic-edge build -p fp16 -b tensorrt-rtx --hardware-compatibility ampere+`: one line before fp16 work."""
    pytest.importorskip("tensorrt_rtx_bindings")
    from mlic_edge.rundir import RunDir
    from mlic_edge.commands.build import BuildRequest, build

    run = RunDir(run_copy)
    with pytest.raises(BuildError, match="cannot build hardware-compatible engines"):
        build(run, BuildRequest(precision="fp16", backend="tensorrt-rtx", hardware_compatibility="ampere+"))
    assert not run.onnx("fp16").exists()


def test_build_report_says_where_dla_layers_run():
    from mlic_edge.commands.build import build_markdown

    manifest = {"device": "dla:1", "dla_layers": {"dla": 3, "gpu": 1, "gpu_layers": ["topk_head"]}}
    entry = {"precision": "fp16", "backend": "tensorrt", "onnx": {"fp16": {"size_bytes": 1000}}, "seconds": 1.0,
             "fp16": {"kept_fp32": []}, "engine": {"size_bytes": 2000, "manifest": manifest}}
    text = build_markdown({"builds": {"fp16-tensorrt": entry}})
    assert "3 layers on dla:1, 1 on the GPU (topk_head)" in text
