"""What the CPU offers ONNX Runtime's int8 and fp16 kernels (read from /proc/cpuinfo), and latency timed in turns."""

from __future__ import annotations

import platform

import numpy as np
import pytest

X86_VNNI = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_int8 amx_tile\n"
X86_AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimdhp asimddp\n"


@pytest.mark.parametrize("machine, text, dot, fp16, reduce_range", [
    ("x86_64", X86_VNNI, ["avx512_vnni", "amx_int8"], False, False),
    ("x86_64", X86_AVX2, [], False, True),
    ("aarch64", ARM, ["asimddp"], True, False),
    ("x86_64", "", [], False, True),
])
def test_cpu_features_name_the_int8_dot_product_and_when_weights_need_reduce_range(
        tmp_path, monkeypatch, machine, text, dot, fp16, reduce_range):
    from mlic_edge.runtime.inference.backends.onnxruntime_backend import cpu_features, describe_cpu

    monkeypatch.setattr(platform, "machine", lambda: machine)
    (tmp_path / "cpuinfo").write_text(text)
    features = cpu_features(tmp_path / "cpuinfo")
    assert features == {"machine": machine, "int8_dot_product": dot, "fp16_arithmetic": fp16,
                        "int8_reduce_range": reduce_range}
    assert ("without" in describe_cpu(features)) is not bool(dot)
    assert cpu_features(tmp_path / "missing")["int8_dot_product"] == []


def test_interleaved_latency_times_every_backend_in_turns():
    from mlic_edge.runtime.inference.latency import interleaved_latency
    from mlic_edge.runtime.inference.backends.base import Backend, BackendInfo
    from mlic_edge.spec import ModelSpec

    calls = []

    class Recording(Backend):
        def __init__(self, name: str) -> None:
            self.name = name
            self.info = BackendInfo(name, "cpu", "fp32", "0")

        def infer(self, batch: np.ndarray) -> np.ndarray:
            calls.append((self.name, len(batch)))
            return np.zeros((len(batch), 2), np.float32)

    spec = ModelSpec(["a", "b"], 8, [0.5] * 3, [0.25] * 3)
    result = interleaved_latency({"x": Recording("x"), "y": Recording("y")}, spec, (1, 4), rounds=3, warmup=1)
    assert set(result) == {"x", "y"} and all(set(by_batch) == {1, 4} for by_batch in result.values())
    assert all(ms >= 0 for by_batch in result.values() for ms in by_batch.values())
    timed = calls[4:]  # after one warm-up per backend and batch
    assert timed == [("x", 1), ("y", 1), ("x", 4), ("y", 4)] * 3
