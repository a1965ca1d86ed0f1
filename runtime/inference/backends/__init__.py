"""Backends by name; ``auto`` picks the first that can run here and says which (never a silent fallback)."""

from __future__ import annotations

from pathlib import Path

from mlic_edge.errors import BackendError, MlicError
from mlic_edge.rundir import RunDir
from mlic_edge.runtime.inference.backends.base import Backend, BackendInfo
from mlic_edge.spec import BACKENDS, ENGINE_BACKENDS, INT8_GRAPHS, PRECISIONS, rebuild_command, require_choice



def resolve_auto(device: str = "auto", run: RunDir | None = None, precision: str = "fp32") -> tuple[str, str]:
    """(backend, device) that ``--backend auto`` would use on this machine: a TensorRT engine of the run that fits
    this TensorRT, GPU and ONNX (with pycuda or cuda-python to feed it), else ONNX Runtime on CUDA, else on the CPU.
    An engine that is there but does not fit is named with the reason, so the choice is never silent."""
    from mlic_edge.runtime.inference.backends.onnxruntime_backend import available_devices

    if run is not None and device in ("auto", "cuda") and run.engine_manifests(precision):
        engine_backend = _usable_engine_backend(run, precision)  # the engines modules load only when there is one
        if engine_backend is not None:
            return engine_backend, "cuda"
    if device in ("auto", "cuda") and "cuda" in available_devices():
        return "onnxruntime", "cuda"
    if device in ("auto", "cpu"):
        return "onnxruntime", "cpu"
    raise BackendError(f"no backend here can run on {device!r}", hint="use --device cpu")


def _usable_engine_backend(run: RunDir, precision: str) -> str | None:
    import importlib.util

    from mlic_edge.console import info
    from mlic_edge.runtime.engines.api import available_tensorrt_backends

    if not any(importlib.util.find_spec(module) for module in ("pycuda", "cuda")):
        info(f"--backend auto: the run has a {precision} engine, but neither pycuda nor cuda-python is installed "
             "to run it")
        return None
    for name in available_tensorrt_backends():
        try:
            find_engine(run, name, precision)
            return name
        except MlicError as error:
            if "engine in" not in error.message:  # an engine is there but does not fit: say why it is not used
                info(f"--backend auto: not using the {name} engine: {error.message}")
    return None


def find_engine(run: RunDir, backend: str, precision: str) -> Path:
    """The engine of ``backend`` and ``precision`` in the run that fits this TensorRT, GPU and ONNX, or a one-line
    refusal saying why and how to rebuild (TensorRT missing: how to get it, and what ``auto`` would use)."""
    from mlic_edge.runtime.engines.gpu import detect_gpu
    from mlic_edge.runtime.engines.api import load_tensorrt
    from mlic_edge.runtime.engines.manifest import check_manifest, read_manifest

    trt = load_tensorrt(backend)
    rebuild = rebuild_command(run.path, precision, backend)
    manifests = [(path, read_manifest(path)) for path in run.engine_manifests(precision)]
    manifests = [(path, manifest) for path, manifest in manifests if manifest.get("backend") == backend]
    if not manifests:
        raise BackendError(f"no {backend} {precision} engine in {run.engines}", hint=f"build it: {rebuild}")
    gpu = detect_gpu()
    refusals = []
    for path, manifest in manifests:
        try:
            check_manifest(manifest, trt=trt, gpu=gpu, onnx_path=run.onnx(precision), rebuild_command=rebuild,
                           engine_path=path.with_suffix(".engine"))
            return path.with_suffix(".engine")
        except MlicError as error:
            refusals.append(error)
    raise refusals[0]


def create_backend(name: str, run: RunDir, precision: str = "fp32", device: str = "auto",
                   cuda_graph: bool = False, graph: str = "auto", threads: int | None = None,
                   fp16_fallback: bool = False) -> Backend:
    """Open backend ``name`` for the run's ``precision``; ``cuda_graph`` (TensorRT only) replays a captured CUDA
    graph per batch size instead of enqueueing copies and execution each time. ``graph`` (ONNX Runtime, int8):
    ``tensorrt`` (model.int8.onnx), ``cpu`` (model.int8.cpu.onnx) or ``auto`` (the CPU graph on the CPU where
    it was built, else the TensorRT one, saying so). ``threads`` (``--threads``): the inference threads; by default
    the thread budget's (runtime/inference/threads.py), which the backend carries as ``thread_budget``.
    ``fp16_fallback``: fp16 asked of ONNX Runtime on a CPU without fp16 arithmetic runs the fp32 graph (said)."""
    from mlic_edge.runtime.inference.threads import available_cores, plan_threads

    require_choice("backend", name, BACKENDS, BackendError)
    require_choice("precision", precision, PRECISIONS, BackendError)
    if graph != "auto":
        require_choice("int8 graph", graph, INT8_GRAPHS, BackendError)
        if precision != "int8":
            raise BackendError(f"graph {graph!r} is an int8 graph, not {precision}", hint="use --precision int8")
    if name == "auto":
        name, device = resolve_auto(device, run, precision)
    if name != "torch" and run.onnx(precision).is_file():
        from mlic_edge.export.lineage import check_onnx

        check_onnx(run, precision)  # the ONNX (and so the engine built from it) is this run's current model
    if name in ENGINE_BACKENDS:
        from mlic_edge.runtime.inference.backends.tensorrt_backend import open_tensorrt_backend

        if device == "cpu":
            raise BackendError(f"{name} runs engines on an NVIDIA GPU, not --device cpu",
                               hint="use --backend onnxruntime --device cpu")
        engine = find_engine(run, name, precision)
        index = int(device.partition(":")[2] or 0) if device.startswith("cuda") else 0
        backend = open_tensorrt_backend(run, name, precision, engine, device=index, cuda_graph=cuda_graph)
        backend.thread_budget = plan_threads(available_cores(), "cuda", threads)
        return backend
    if cuda_graph:
        raise BackendError(f"--cuda-graph is for TensorRT engines, not {name}", hint="use --backend tensorrt, or drop "
                                                                                   "--cuda-graph")
    if name == "torch":
        from mlic_edge.runtime.inference.backends.torch_backend import TorchBackend

        if precision != "fp32":
            raise BackendError("the torch backend is the fp32 reference", hint="use --precision fp32")
        spec = run.spec()
        device = "cuda" if device == "cuda" else "cpu"
        budget = plan_threads(available_cores(), device, threads)
        backend = TorchBackend(run.require(run.checkpoint, "mlic-edge train"), device=device,
                               normalization=(spec.mean, spec.std), threads=budget.inference)
        backend.thread_budget = budget
        return backend
    from mlic_edge.runtime.inference.backends.onnxruntime_backend import OnnxRuntimeBackend, available_devices

    if device == "auto":
        device = "cpu" if graph == "cpu" or "cuda" not in available_devices() else "cuda"
    asked, budget = precision, plan_threads(available_cores(), device, threads)
    if precision == "int8":
        graph = _int8_graph(run, device, graph)
    elif precision == "fp16" and device == "cpu" and _fp16_on_cpu(run, budget.inference, fp16_fallback):
        precision = "fp32"
    onnx_path = run.onnx(precision, "cpu" if graph == "cpu" else None)
    onnx_path = run.require(onnx_path, f"mlic-edge export --run {run.path}" if precision == "fp32" else
                            rebuild_command(run.path, precision, "onnxruntime"))
    if graph == "cpu":
        from mlic_edge.export.lineage import check_onnx

        check_onnx(run, precision, path=onnx_path)
    backend = OnnxRuntimeBackend(onnx_path, device=device, precision=precision,
                                 graph=graph if precision == "int8" else None, threads=budget.inference,
                                 spinning=budget.spinning)
    if precision != asked:
        backend.info.details["asked_precision"] = asked  # reports say fp32 ran, and that fp16 was asked
    backend.thread_budget = budget
    return backend


def _int8_graph(run: RunDir, device: str, graph: str) -> str:
    """The int8 graph ONNX Runtime runs on ``device``: ``graph`` when named; on the CPU the CPU graph where the run
    has it, else TensorRT's, with a line saying it runs near fp32 speed there and how to make the CPU graph."""
    from mlic_edge.console import info

    if graph != "auto":
        return graph
    if device != "cpu":
        return "tensorrt"
    if run.onnx("int8", "cpu").is_file():
        return "cpu"
    info(f"int8 on ONNX Runtime's CPU: {run.onnx('int8').name} is the Q/DQ graph shaped for TensorRT, which the CPU "
         f"kernels mostly run in float (about fp32 speed); make the CPU graph: "
         f"{rebuild_command(run.path, 'int8', 'onnxruntime')}")
    return "tensorrt"


FP16_CHECK_ROUNDS = 5  # batch-1 inferences of fp16 and fp32 timed in turns to measure what fp16 costs on a CPU
_FP16_FACTORS: dict[tuple, float] = {}  # (the two graphs' path, mtime, size; threads) -> fp16 / fp32 time, per process


def _fp16_on_cpu(run: RunDir, threads: int, fallback: bool) -> bool:
    """fp16 through ONNX Runtime's CPU provider runs its ops in fp32 behind inserted casts where the CPU has no fp16
    arithmetic the kernels use (x86 CPUs, even with AVX-512 FP16), so it is no faster than fp32 (precision benchmark:
    1.18x at batch 1 on an AVX2 EPYC, 0.92x on an AVX-512 FP16 Xeon). Said with the factor measured now (both graphs,
    batch 1, timed in turns); returns True when the caller should run fp32 instead (``fallback``)."""
    from mlic_edge.console import info
    from mlic_edge.runtime.inference.backends.onnxruntime_backend import OnnxRuntimeBackend, cpu_features
    from mlic_edge.runtime.inference.latency import interleaved_latency
    from mlic_edge.spec import ModelSpec

    if cpu_features()["fp16_arithmetic"] or not run.onnx("fp16").is_file():
        return False
    graphs = tuple((str(path), path.stat().st_mtime_ns, path.stat().st_size) for path in (run.onnx("fp16"), run.onnx()))
    measured = (graphs, threads) in _FP16_FACTORS
    if not measured:
        with OnnxRuntimeBackend(run.onnx("fp16"), threads=threads) as fp16, \
                OnnxRuntimeBackend(run.onnx(), threads=threads) as fp32:
            medians = interleaved_latency({"fp16": fp16, "fp32": fp32}, ModelSpec.from_run(run.spec()), (1,),
                                          rounds=FP16_CHECK_ROUNDS, warmup=1)
        _FP16_FACTORS[(graphs, threads)] = medians["fp16"][1] / medians["fp32"][1]
    factor = _FP16_FACTORS[(graphs, threads)]
    said = (f"fp16 on ONNX Runtime's CPU: no speed-up on this CPU (it has no fp16 arithmetic the kernels use; fp16 "
            f"ops run as fp32 behind casts): {'measured earlier in this process' if measured else 'measured now'}, "
            f"fp16 takes {factor:.2f}x the fp32 time at batch 1")
    if fallback:
        info(f"{said}; running fp32 instead (--fp16-fallback)")
        return True
    info(f"{said}; --fp16-fallback runs fp32 instead, and the int8 CPU graph is the faster choice "
         f"({rebuild_command(run.path, 'int8', 'onnxruntime')})")
    return False


__all__ = ["BACKENDS", "PRECISIONS", "Backend", "BackendInfo", "create_backend", "resolve_auto"]
