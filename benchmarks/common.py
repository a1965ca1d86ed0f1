"""What the benchmark scripts share: ONNX Runtime CPU latency, the description of the machine they ran on, and how
their results are written."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from mlic_edge.rundir import RunDir
from mlic_edge.runtime.inference.backends.onnxruntime_backend import OnnxRuntimeBackend

BENCH_LABELS = [f"class{i}" for i in range(20)]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def make_run(work: Path, backbone: str, img_size: int) -> RunDir:
    """``work/<backbone>``: a baseline run of 20 labels with random weights (pretrained=False) exported to ONNX,
    made once; latency does not depend on the weights."""
    import contextlib
    import io

    import torch

    from mlic_edge.export.onnx_export import write_onnx
    from mlic_edge.models import create_model

    run = RunDir(work / backbone)
    if not run.onnx().is_file():
        meta = {"model": "baseline", "backbone": backbone, "labels": BENCH_LABELS, "img_size": img_size,
                "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        run.path.mkdir(parents=True, exist_ok=True)
        run.update(**meta)
        model = create_model("baseline", len(BENCH_LABELS), backbone=backbone).eval()
        with contextlib.redirect_stderr(io.StringIO()):
            write_onnx(model.for_export(), torch.zeros(2, 3, img_size, img_size), run.onnx(), meta)
    return run


def onnx_latency_ms(path: Path, img_size: int, batch: int = 1, runs: int = 50, warmup: int = 5) -> float:
    """Median wall time (ms) of one ONNX Runtime CPU inference of ``batch`` images, after ``warmup`` runs."""
    with OnnxRuntimeBackend(path) as backend:
        images = np.random.default_rng(0).standard_normal((batch, 3, img_size, img_size)).astype(np.float32)
        for _ in range(warmup):
            backend.infer(images)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            backend.infer(images)
            times.append((time.perf_counter() - started) * 1e3)
    return float(np.median(times))


def machine() -> str:
    """'x86_64 (AMD EPYC 7B13), 2 cores, CPU only (no GPU)': the CPU model from /proc/cpuinfo where there is one."""
    try:
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                      if line.startswith("model name")), "")
    except OSError:
        model = ""
    name = platform.processor() or platform.machine()
    return f"{name}{f' ({model})' if model else ''}, {os.cpu_count()} cores, CPU only (no GPU)"


def results_header(script: str) -> dict:
    """The machine, the date and the command line a result was produced by."""
    return {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
            "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:])}


def write_results(out: Path, name: str, result: dict, markdown: Callable[[dict], str]) -> None:
    """``<out>/<name>.json`` and ``<out>/<name>.md``; the markdown is printed too."""
    from mlic_edge.io import write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", result)
    (out / f"{name}.md").write_text(markdown(result))
    print(markdown(result))


def notes_section(notes: list[str], heading: str = "Notes") -> list[str]:
    """A results file's closing section, one bullet per note; nothing without notes."""
    return ["", f"## {heading}", ""] + [f"- {note}" for note in notes] if notes else []
