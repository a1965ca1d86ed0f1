"""ONNX Runtime: CPU anywhere, CUDA where onnxruntime-gpu is installed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mlic_edge.errors import BackendError
from mlic_edge.rundir import RunDir
from mlic_edge.runtime.inference.backends.base import Backend, BackendInfo
from mlic_edge.runtime.inference.backends.registry import OpenOptions, package_installed, register_backend
from mlic_edge.spec import DEFAULT_PRECISION, rebuild_command

if TYPE_CHECKING:  # the registry imports this module to list it (every --help): numpy loads when a backend opens
    import numpy as np

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# /proc/cpuinfo flags of the integer dot-product instructions ONNX Runtime's u8 x s8 kernels use, by architecture.
INT8_DOT_FLAGS = {"x86_64": ("avx512_vnni", "avx_vnni", "amx_int8"), "aarch64": ("asimddp", "i8mm")}
FP16_ARITHMETIC_FLAGS = {"aarch64": ("asimdhp",)}


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """What this CPU offers ONNX Runtime's int8 and fp16 kernels: the integer dot-product flags present (VNNI, AMX,
    ARM dot product), fp16 arithmetic, and whether int8 weights need ``reduce_range`` (x86 without VNNI, where
    u8 x s8 products can saturate, as ONNX Runtime's quantization guide says)."""
    import platform

    machine = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
    try:
        flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                          if line.split(":", 1)[0].strip() in ("flags", "Features")), []))
    except OSError:
        flags = set()
    int8_dot = [flag for flag in INT8_DOT_FLAGS.get(machine, ()) if flag in flags]
    return {"machine": machine, "int8_dot_product": int8_dot,
            "fp16_arithmetic": any(flag in flags for flag in FP16_ARITHMETIC_FLAGS.get(machine, ())),
            "int8_reduce_range": machine == "x86_64" and not int8_dot}


def describe_cpu(features: dict) -> str:
    """'x86_64 with avx512_vnni, amx_int8' / 'x86_64 without VNNI'."""
    if features["int8_dot_product"]:
        return f"{features['machine']} with {', '.join(features['int8_dot_product'])}"
    return f"{features['machine']} without " + ("VNNI" if features["machine"] == "x86_64" else "int8 dot product")


def available_devices() -> list[str]:
    import onnxruntime as ort

    present = set(ort.get_available_providers())
    return [device for device, provider in PROVIDERS.items() if provider in present]


class OnnxRuntimeBackend(Backend):
    def __init__(self, onnx_path: Path, device: str = "cpu", precision: str = DEFAULT_PRECISION, threads: int = 0,
                 graph: str | None = None, spinning: bool = True) -> None:
        """``threads``: intra-op threads (0: ONNX Runtime's default, one per core); ``spinning``: whether idle
        intra-op threads spin-wait for work (fast when they own their cores, a thief when the decoder shares them).
        """
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise BackendError("onnxruntime is not installed", hint="pip install onnxruntime") from error
        if device not in PROVIDERS:
            raise BackendError(f"unknown device {device!r} for onnxruntime", hint="use cpu or cuda")
        if device not in available_devices():
            raise BackendError(f"ONNX Runtime here has no {PROVIDERS[device]}",
                               hint="install onnxruntime-gpu for CUDA, or use --device cpu")
        if not Path(onnx_path).is_file():
            raise BackendError(f"{onnx_path} is missing", hint="run `mlic-edge export --run RUN` first")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # the graphs run sequentially; a second pool would only compete
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.log_severity_level = 3
        providers = [PROVIDERS[device]] + (["CPUExecutionProvider"] if device != "cpu" else [])
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        except Exception as error:
            raise BackendError(f"ONNX Runtime could not load {onnx_path}: {str(error).splitlines()[0][:200]}",
                               hint="re-export the model with `mlic-edge export`") from error
        self.input_name = self.session.get_inputs()[0].name
        # float32 NCHW normally; uint8 NHWC frames when the normalisation is folded into the graph
        import numpy as np

        self._contiguous = np.ascontiguousarray
        self.input_dtype = np.uint8 if self.session.get_inputs()[0].type == "tensor(uint8)" else np.float32
        self.output_name = self.session.get_outputs()[0].name
        self.info = BackendInfo(backend="onnxruntime", device=device, precision=precision, version=ort.__version__,
                                details={"providers": self.session.get_providers(), "model": str(onnx_path),
                                         "intra_op_threads": threads or "default", "spinning": spinning,
                                         **({"graph": graph} if graph else {})})

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: self._contiguous(batch, self.input_dtype)})[0]

    def close(self) -> None:
        self.session = None


def _auto_device(run: RunDir | None, precision: str, device: str) -> str | None:
    """CUDA where this ONNX Runtime has it and a GPU may be used, else the CPU where it may be used."""
    if device in ("auto", "cuda") and "cuda" in available_devices():
        return "cuda"
    return "cpu" if device in ("auto", "cpu") else None


def _parity_graphs(run: RunDir, precision: str, asked: bool) -> list[str]:
    """Each precision's ONNX the run holds (by default), both int8 graphs where the CPU one was built."""
    if not asked and not run.onnx(precision).is_file():
        return []
    return ["tensorrt", "cpu"] if precision == "int8" and run.onnx("int8", "cpu").is_file() else ["auto"]


@register_backend(name="onnxruntime", title="ONNX Runtime", installed=package_installed("onnxruntime"),
                  description="the run's ONNX on ONNX Runtime: the CPU anywhere, CUDA where onnxruntime-gpu is "
                              "installed", buildable=True, auto_order=30, auto_device=_auto_device,
                  parity_graphs=_parity_graphs)
def open_onnxruntime(run: RunDir, precision: str, device: str, options: OpenOptions) -> OnnxRuntimeBackend:
    """The precision's graph on ``device`` (auto: CUDA where available, else the CPU); int8 on the CPU takes the CPU
    graph where the run has it, fp16 on a CPU without fp16 arithmetic says what it costs."""
    graph = options.graph
    if device == "auto":
        device = "cpu" if graph == "cpu" or "cuda" not in available_devices() else "cuda"
    asked, budget = precision, options.thread_budget(device)
    if precision == "int8":
        graph = _int8_graph(run, device, graph)
    elif precision == "fp16" and device == "cpu" and _fp16_on_cpu(run, budget.inference, options.fp16_fallback):
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
