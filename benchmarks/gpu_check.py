"""GPU check: the CUDA layer and the pipeline's host overhead on a real NVIDIA GPU, in one prepared run (minutes).

    python benchmarks/gpu_check.py --out benchmarks/results      # writes gpu_check.json (and prints it)

1. `mlic-edge doctor --json`, as a user would run it on that machine.
2. The CUDA layer (runtime/inference/cuda.py) through cuda-python: pinned host and device buffers, async copies both ways
   checked byte for byte, CUDA events timing them, a CUDA graph of the copies captured and replayed, resources
   released in order. Bandwidth is the median (and spread) of --bandwidth-cycles warm cycles after one cold one; then
   --cycles open/copy/graph/close cycles, with cudaMemGetInfo before and after (device memory that does not come back)
   and the layer's own count of live pinned buffers, streams, events and graphs (all must be back to none).
3. The pipeline's host overhead per frame with the PyTorch CUDA reference (baseline resnet18, random weights) at
   batch 1 and 8, fp32 and fp16: the backend alone vs the whole `mlic-edge run` pipeline over a generated video,
   measured side by side in this process; overhead = pipeline ms/frame - backend-alone ms/frame.
4. The multi-stream benchmark (benchmarks/multistream.py) with the same PyTorch CUDA reference: one stream (pipeline vs
   sequential loop vs 1/max(stage)) and 4 streams batched across streams in one run vs batch 1 (4 single-stream
   processes sharing the GPU, and the 4 streams one after another): total frames/s and per-stream fairness.
No TensorRT figure comes from this script: it runs no engine (the lent data-centre GPUs have no TensorRT, and
TensorRT for RTX refuses compute capability 9.0).

The results file is rewritten after every step, so a run cut short leaves what it measured. Exit status: 0 when every
step ran and every check held; 1 when a step failed or timed out, a round trip gave back other bytes, a timing was not
positive or something leaked (``failures`` in the file lists them); 2 with no GPU here and nothing else failed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

BANDWIDTH_BYTES = 64 << 20  # large enough that per-copy latency is a small part of the time
LEAK_CYCLE_BYTES = 1 << 20
LEAK_TOLERANCE_BYTES = 2 << 20  # the driver's own bookkeeping may move by a page or two
DOCTOR_TIMEOUT_S = 120
EXIT_FAILED, EXIT_NO_GPU = 1, 2


class CudaStatusError(RuntimeError):
    """A CUDA runtime call this script makes itself (outside the layer) returned an error."""


def doctor_json() -> Any:
    completed = subprocess.run([sys.executable, "-m", "mlic_edge", "doctor", "--json"], capture_output=True,
                               text=True, timeout=DOCTOR_TIMEOUT_S)
    try:
        return json.loads(completed.stdout)
    except json.JSONDecodeError:
        return {"error": "no JSON on stdout", "exit": completed.returncode, "stdout": completed.stdout[-2000:],
                "stderr": completed.stderr[-2000:]}


def checked_cuda_call(runtime: Any, name: str, *args: Any) -> list[Any]:
    """``runtime.<name>(*args)``'s values after its status, which must be cudaSuccess."""
    from mlic_edge.runtime.inference.cuda import _error_name

    status, *values = getattr(runtime, name)(*args)
    if status != runtime.cudaError_t.cudaSuccess:
        raise CudaStatusError(f"{name} returned {_error_name(runtime, status)}")
    return values


def device_memory_free(runtime: Any) -> int:
    free, _total = checked_cuda_call(runtime, "cudaMemGetInfo")
    return int(free)


def synchronize_device(runtime: Any) -> None:
    """Wait for all work and raise on any error it left (an asynchronous fault shows here, not at its call)."""
    checked_cuda_call(runtime, "cudaDeviceSynchronize")
    checked_cuda_call(runtime, "cudaGetLastError")


def import_cudart() -> Any:
    from mlic_edge.runtime.inference.cuda import _import_cudart

    runtime = _import_cudart()
    if runtime is None:
        raise CudaStatusError("cuda-python is not installed: pip install the cuda-python `mlic-edge doctor` names")
    return runtime


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


TIMINGS = ("h2d_ms", "d2h_ms", "graph_ms")


def spread(values: list[float]) -> dict[str, Any]:
    """Median, extremes and (max - min) / median of ``values``; all None without values."""
    if not values:
        return {"median": None, "min": None, "max": None, "spread_percent": None, "n": 0}
    median = statistics.median(values)
    return {"median": median, "min": min(values), "max": max(values),
            "spread_percent": 100 * (max(values) - min(values)) / median if median else None, "n": len(values)}


def valid_timing(ms: Any) -> bool:
    return isinstance(ms, (int, float)) and math.isfinite(ms) and ms > 0


def bandwidth(cycles: list[dict[str, Any]], nbytes: int) -> dict[str, Any]:
    """GB/s each way and the graph's round trip, over the cycles whose event timings are valid."""
    def rates(key: str) -> list[float]:
        return [nbytes / 1e9 / (cycle[key] / 1e3) for cycle in cycles if valid_timing(cycle.get(key))]

    return {"bytes": nbytes, "h2d_gb_s": spread(rates("h2d_ms")), "d2h_gb_s": spread(rates("d2h_ms")),
            "graph_round_trip_ms": spread([cycle["graph_ms"] for cycle in cycles
                                           if valid_timing(cycle.get("graph_ms"))])}


def cuda_layer(cycles: int, bandwidth_cycles: int) -> dict[str, Any]:
    from mlic_edge.runtime.inference.cuda import live_resources

    runtime = import_cudart()
    cold = one_cycle(BANDWIDTH_BYTES, with_graph=True)  # the context and allocator settle; not a bandwidth figure
    warm = [one_cycle(BANDWIDTH_BYTES, with_graph=True) for _ in range(bandwidth_cycles)]
    synchronize_device(runtime)
    memory_before, resources_before = device_memory_free(runtime), live_resources()
    started = time.perf_counter()
    leak_cycles = [one_cycle(LEAK_CYCLE_BYTES, with_graph=True) for _ in range(cycles)]
    seconds = time.perf_counter() - started
    synchronize_device(runtime)
    memory_after, resources_after = device_memory_free(runtime), live_resources()
    every_cycle = [cold, *warm, *leak_cycles]
    return {"device": cold["device"], "cuda": cold["cuda"], "cuda_version": cold["cuda_version"],
            "bandwidth_cycles": bandwidth_cycles, "bandwidth": bandwidth(warm, BANDWIDTH_BYTES),
            "round_trips": len(every_cycle),
            "failed_round_trips": sum(not (cycle["round_trip_ok"] and cycle.get("graph_round_trip_ok", True))
                                      for cycle in every_cycle),
            "invalid_timings": sum(not valid_timing(cycle[key]) for cycle in every_cycle for key in TIMINGS
                                   if key in cycle),
            "cycles": cycles, "seconds_per_cycle": seconds / cycles if cycles else None,
            "device_free_before": memory_before, "device_free_after": memory_after,
            "leaked_bytes": memory_before - memory_after,
            "device_memory_leak": memory_before - memory_after > LEAK_TOLERANCE_BYTES,
            "live_resources_before": resources_before, "live_resources_after": resources_after}


def cuda_layer_failures(report: dict[str, Any]) -> list[str]:
    """What went wrong in ``cuda_layer``'s report, one line each; empty when every check held. Every layer object
    was closed by then, so any resource still live is a leak."""
    failures = []
    if report["failed_round_trips"]:
        failures.append(f"cuda_layer: {report['failed_round_trips']} of {report['round_trips']} round trips (plain "
                        "or graph) gave back other bytes than were sent")
    if report["invalid_timings"]:
        failures.append(f"cuda_layer: {report['invalid_timings']} event timings were not positive and finite")
    if report["device_memory_leak"]:
        failures.append(f"cuda_layer: {report['leaked_bytes']} bytes of device memory not given back after "
                        f"{report['cycles']} cycles")
    if report["live_resources_after"]:
        live = ", ".join(f"{count} {kind}" for kind, count in sorted(report["live_resources_after"].items()))
        failures.append(f"cuda_layer: still live after every cycle was closed: {live}")
    return failures


def reference_run(work: Path, backbone: str = "resnet18", img_size: int = 224) -> Any:
    """``work/<backbone>``: a baseline run of 20 labels, random weights, its PyTorch checkpoint saved."""
    from mlic_edge.models import create_model
    from mlic_edge.models.checkpoint import save_checkpoint
    from mlic_edge.rundir import RunDir

    labels = [f"class{index}" for index in range(20)]
    run = RunDir(work / backbone)
    run.path.mkdir(parents=True, exist_ok=True)
    run.update(model="baseline", backbone=backbone, labels=labels, img_size=img_size, mean=[0.485, 0.456, 0.406],
               std=[0.229, 0.224, 0.225])
    save_checkpoint(run.checkpoint, create_model("baseline", len(labels), backbone=backbone).eval())
    return run


def reference_overhead(work: Path, batches: list[int], frames: int, iterations: int,
                       device: str = "cuda") -> list[dict[str, Any]]:
    import torch

    from mlic_edge.runtime.inference.backends.base import Backend
    from mlic_edge.runtime.inference.backends.torch_backend import TorchBackend
    from mlic_edge.runtime.checks.bench import run_bench
    from mlic_edge.spec import ModelSpec

    run = reference_run(work)

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


MULTISTREAM_STREAMS = 4


def import_benchmark(name: str) -> Any:
    """Another script of benchmarks/ as a module (this one may be loaded from its path, as the tests do)."""
    folder = str(Path(__file__).resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def multistream_reference(work: Path, frames: int, rounds: int, *, streams: int = MULTISTREAM_STREAMS,
                          device: str = "cuda", backbone: str = "resnet18", img_size: int = 224) -> dict[str, Any]:
    """Step 4: benchmarks/multistream.py's measurement with the PyTorch reference on ``device``: one stream, and
    ``streams`` streams batched in one run vs batch 1 (as many single-stream processes; one after another)."""
    from mlic_edge.runtime.checks.bench import make_video

    multistream = import_benchmark("multistream")
    run = reference_run(work, backbone, img_size)
    videos = [make_video(work / f"stream{index}.mp4", frames) for index in range(streams)]
    setting = multistream.Setting(f"torch {device}", "torch", run=str(run.path), device=device)
    return multistream.measure([setting], videos, [streams], rounds)[0]


def run_step(result: dict[str, Any], failures: list[str], key: str, step: Callable[[], Any]) -> Any:
    """``result[key] = step()``; a failure or a subprocess time-out is recorded there and in ``failures`` instead."""
    try:
        result[key] = step()
    except subprocess.TimeoutExpired as timeout:
        command = " ".join(map(str, timeout.cmd)) if isinstance(timeout.cmd, (list, tuple)) else str(timeout.cmd)
        result[key] = {"error": f"timed out after {timeout.timeout:g} s", "command": command, "timed_out": True}
        failures.append(f"{key}: {command} timed out after {timeout.timeout:g} s")
    except Exception as error:  # keep what the other steps measure; say what failed
        result[key] = {"error": f"{type(error).__name__}: {error}"}
        failures.append(f"{key}: {type(error).__name__}: {error}")
    return result[key]


def write_results(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--bandwidth-cycles", type=int, default=10)
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--multistream-frames", type=int, default=120, help="frames per stream, step 4")
    parser.add_argument("--multistream-rounds", type=int, default=3)
    args = parser.parse_args(argv)
    from mlic_edge.rundir import installed_versions
    from mlic_edge.runtime.engines.gpu import detect_gpu, driver_cuda_version

    started = time.monotonic()
    failures: list[str] = []
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/gpu_check.py",
                              "tensorrt": "not measured: no engine runs in this script", "failures": failures}
    gpu = run_step(result, failures, "gpu", lambda: vars(found) if (found := detect_gpu()) else None)
    run_step(result, failures, "driver_cuda", lambda: ".".join(map(str, driver_cuda_version() or ())) or None)
    run_step(result, failures, "versions", installed_versions)
    write_results(args.out, result)
    doctor = run_step(result, failures, "doctor", doctor_json)
    if isinstance(doctor, dict) and doctor.get("error") == "no JSON on stdout":
        failures.append(f"doctor: printed no JSON (exit {doctor['exit']})")
    write_results(args.out, result)
    if not isinstance(gpu, dict) or "error" in gpu:
        result["skipped"] = ("no NVIDIA GPU here: the CUDA layer, the reference overhead and the multi-stream "
                             "comparison were not measured")
        result["multistream"] = {"skipped": f"no NVIDIA GPU here: the PyTorch CUDA reference over "
                                            f"{MULTISTREAM_STREAMS} streams (batch 1 vs batched) was not run"}
        print(f"gpu_check: multistream skipped: {result['multistream']['skipped']}", file=sys.stderr)
    else:
        layer = run_step(result, failures, "cuda_layer", lambda: cuda_layer(args.cycles, args.bandwidth_cycles))
        if "error" not in layer:
            failures.extend(cuda_layer_failures(layer))
        write_results(args.out, result)
        run_step(result, failures, "reference_overhead", lambda: reference_overhead(
            Path(tempfile.mkdtemp(prefix="gpu-check-")), [int(b) for b in args.batches.split(",")], args.frames,
            args.iterations))
        write_results(args.out, result)
        run_step(result, failures, "multistream", lambda: multistream_reference(
            Path(tempfile.mkdtemp(prefix="gpu-check-multistream-")), args.multistream_frames, args.multistream_rounds))
    status = EXIT_FAILED if failures else EXIT_NO_GPU if "skipped" in result else 0
    result.update(exit=status, minutes=(time.monotonic() - started) / 60)
    write_results(args.out, result)
    print(json.dumps(result, indent=1, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
