"""GPU check: the CUDA layer and the pipeline's host overhead on a real NVIDIA GPU, in one prepared run (minutes).

    python benchmarks/gpu_check.py --out benchmarks/results      # writes gpu_check.json (and prints it)

1. `mlic-edge doctor --json`, as a user would run it on that machine.
2. The CUDA layer (runtime/inference/cuda.py) through cuda-python: pinned host and device buffers, async copies both ways
   checked byte for byte, CUDA events timing them, a CUDA graph of the copies captured and replayed, resources
   released in order; then --cycles open/copy/graph/close cycles with cudaMemGetInfo before and after (a leak shows
   as device memory that does not come back).
3. The pipeline's host overhead per frame with the PyTorch CUDA reference (baseline resnet18, random weights) at
   batch 1 and 8, fp32 and fp16: the backend alone vs the whole `mlic-edge run` pipeline over a generated video,
   measured side by side in this process; overhead = pipeline ms/frame - backend-alone ms/frame.
No TensorRT figure comes from this script: it runs no engine (the lent data-centre GPUs have no TensorRT, and
TensorRT for RTX refuses compute capability 9.0). Without a GPU it writes what it could check and exits 2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

COPY_BYTES = 8 << 20
LEAK_TOLERANCE_BYTES = 2 << 20  # the driver's own bookkeeping may move by a page or two


def doctor_json() -> Any:
    completed = subprocess.run([sys.executable, "-m", "mlic_edge", "doctor", "--json"], capture_output=True,
                               text=True, timeout=120)
    try:
        return json.loads(completed.stdout)
    except json.JSONDecodeError:
        return {"exit": completed.returncode, "stdout": completed.stdout[-2000:], "stderr": completed.stderr[-2000:]}


def device_memory_free(runtime: Any) -> int:
    error, free, _total = runtime.cudaMemGetInfo()
    return int(free)


def one_cycle(nbytes: int, *, with_graph: bool) -> dict[str, Any]:
    """Open the CUDA layer, copy ``nbytes`` there and back (plain and as a CUDA graph), check, close."""
    from mlic_edge.runtime.inference.cuda import open_cuda

    pattern = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    with open_cuda(0, graphs=True) as cuda:
        stream = cuda.stream()
        host_in, host_out = cuda.host_buffer(nbytes), cuda.host_buffer(nbytes)
        device = cuda.device_buffer(nbytes)
        start, copied_in, copied_out = cuda.event(), cuda.event(), cuda.event()
        host_in.array[:] = pattern
        cuda.record(start, stream)
        cuda.copy_to_device(device, host_in, nbytes, stream)
        cuda.record(copied_in, stream)
        cuda.copy_to_host(host_out, device, nbytes, stream)
        cuda.record(copied_out, stream)
        cuda.synchronize(stream)
        result = {"h2d_ms": cuda.elapsed_ms(start, copied_in), "d2h_ms": cuda.elapsed_ms(copied_in, copied_out),
                  "round_trip_ok": bool(np.array_equal(host_out.array, pattern)), "cuda": cuda.name,
                  "cuda_version": cuda.version, "device": cuda.device_name}
        if with_graph:
            host_out.array[:] = 0
            graph = cuda.capture(stream, lambda: (cuda.copy_to_device(device, host_in, nbytes, stream),
                                                  cuda.copy_to_host(host_out, device, nbytes, stream)))
            cuda.record(start, stream)
            cuda.launch(graph, stream)
            cuda.record(copied_out, stream)
            cuda.synchronize(stream)
            result.update(graph_ms=cuda.elapsed_ms(start, copied_out),
                          graph_round_trip_ok=bool(np.array_equal(host_out.array, pattern)))
    return result


def cuda_layer(cycles: int) -> dict[str, Any]:
    from mlic_edge.runtime.inference.cuda import _import_cudart

    runtime = _import_cudart()
    first = one_cycle(COPY_BYTES, with_graph=True)
    gigabytes = COPY_BYTES / 1e9
    first.update(h2d_gb_s=gigabytes / (first["h2d_ms"] / 1e3), d2h_gb_s=gigabytes / (first["d2h_ms"] / 1e3))
    one_cycle(COPY_BYTES, with_graph=True)  # the context and allocator settle before the baseline is read
    before = device_memory_free(runtime)
    started = time.perf_counter()
    failures = sum(not (cycle["round_trip_ok"] and cycle["graph_round_trip_ok"])
                   for cycle in (one_cycle(1 << 20, with_graph=True) for _ in range(cycles)))
    seconds = time.perf_counter() - started
    after = device_memory_free(runtime)
    return {"first_cycle": first, "cycles": cycles, "failed_round_trips": failures,
            "seconds_per_cycle": seconds / cycles, "device_free_before": before, "device_free_after": after,
            "leaked_bytes": before - after, "leak": before - after > LEAK_TOLERANCE_BYTES}


def reference_overhead(work: Path, batches: list[int], frames: int, iterations: int,
                       device: str = "cuda") -> list[dict[str, Any]]:
    import torch

    from mlic_edge.models import create_model
    from mlic_edge.models.checkpoint import save_checkpoint
    from mlic_edge.rundir import RunDir
    from mlic_edge.runtime.inference.backends.base import Backend
    from mlic_edge.runtime.inference.backends.torch_backend import TorchBackend
    from mlic_edge.runtime.checks.bench import run_bench
    from mlic_edge.spec import ModelSpec

    labels = [f"class{index}" for index in range(20)]
    run = RunDir(work / "resnet18")
    run.path.mkdir(parents=True, exist_ok=True)
    run.update(model="baseline", backbone="resnet18", labels=labels, img_size=224, mean=[0.485, 0.456, 0.406],
               std=[0.229, 0.224, 0.225])
    save_checkpoint(run.checkpoint, create_model("baseline", len(labels), backbone="resnet18").eval())

    class HalfReference(Backend):
        """The reference in fp16 on the GPU: weights and input in half, scores back in fp32."""

        def __init__(self, fp32: TorchBackend) -> None:
            from dataclasses import replace

            self.graph = fp32.graph.half()
            self.info = replace(fp32.info, precision="fp16")

        def infer(self, batch: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                tensor = torch.from_numpy(np.ascontiguousarray(batch)).to(device).half()
                return self.graph(tensor).float().cpu().numpy()

    rows = []
    spec = ModelSpec.from_run(run.read())
    for precision in ("fp32", "fp16"):
        backend = TorchBackend(run.checkpoint, device=device)
        if precision == "fp16":
            backend = HalfReference(backend)
        report = run_bench(backend, spec, batches, iterations=iterations, warmup=10, video_frames=frames)
        for row in report["results"]:
            alone_ms = 1e3 / row["backend_alone"]["images_per_s"]
            pipeline_ms = 1e3 / row["pipeline"]["images_per_s"] if row["pipeline"]["images_per_s"] else None
            rows.append({"precision": precision, "batch": row["batch"], "alone_ms_per_frame": alone_ms,
                         "pipeline_ms_per_frame": pipeline_ms,
                         "host_overhead_ms_per_frame": pipeline_ms - alone_ms if pipeline_ms else None,
                         "pipeline_over_alone": row["ratio"], "stages_ms": row["pipeline"].get("stages_ms"),
                         "backend": report["backend"]})
        backend.close()
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args(argv)
    from mlic_edge.rundir import installed_versions
    from mlic_edge.runtime.engines.gpu import detect_gpu, driver_cuda_version

    started = time.monotonic()
    gpu = detect_gpu()
    driver = driver_cuda_version()
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/gpu_check.py",
                              "gpu": gpu.__dict__ if gpu else None,
                              "driver_cuda": f"{driver[0]}.{driver[1]}" if driver else None,
                              "versions": installed_versions(), "doctor": doctor_json(),
                              "tensorrt": "not measured: no engine runs in this script"}
    status = 0
    if gpu is None:
        result["skipped"] = "no NVIDIA GPU here: the CUDA layer and the reference overhead were not measured"
        status = 2
    else:
        for key, step in (("cuda_layer", lambda: cuda_layer(args.cycles)),
                          ("reference_overhead", lambda: reference_overhead(
                              Path(tempfile.mkdtemp(prefix="gpu-check-")), [int(b) for b in args.batches.split(",")],
                              args.frames, args.iterations))):
            try:
                result[key] = step()
            except Exception as error:  # keep what the other step measured; say what failed
                result[key] = {"error": f"{type(error).__name__}: {error}"}
                status = 1
    result["minutes"] = (time.monotonic() - started) / 60
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(result, indent=1, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
