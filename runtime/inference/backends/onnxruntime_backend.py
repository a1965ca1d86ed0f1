"""ONNX Runtime: CPU anywhere, CUDA where onnxruntime-gpu is installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlic_edge.errors import BackendError
from mlic_edge.runtime.inference.backends.base import Backend, BackendInfo

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
    def __init__(self, onnx_path: Path, device: str = "cpu", precision: str = "fp32", threads: int = 0,
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
        self.input_dtype = np.uint8 if self.session.get_inputs()[0].type == "tensor(uint8)" else np.float32
        self.output_name = self.session.get_outputs()[0].name
        self.info = BackendInfo(backend="onnxruntime", device=device, precision=precision, version=ort.__version__,
                                details={"providers": self.session.get_providers(), "model": str(onnx_path),
                                         "intra_op_threads": threads or "default", "spinning": spinning,
                                         **({"graph": graph} if graph else {})})

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, self.input_dtype)})[0]

    def close(self) -> None:
        self.session = None
