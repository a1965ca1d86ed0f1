"""`mlic-edge bench` as a library: the backend alone (like trtexec), the whole pipeline and a naive loop, measured in
interleaved rounds."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable

from mlic_edge.errors import MlicError
from mlic_edge.io import write_json
from mlic_edge.rundir import RunDir
from mlic_edge.spec import DEFAULT_BACKEND, DEFAULT_DEVICE, DEFAULT_PRECISION


@dataclass(frozen=True)
class BenchRequest:
    backend: str = DEFAULT_BACKEND
    precision: str = DEFAULT_PRECISION
    device: str = DEFAULT_DEVICE
    batches: tuple[int, ...] = (1,)
    iterations: int = 200
    warmup: int = 20
    frames: int = 300  # of the generated video the pipeline runs over
    cuda_graph: bool = False
    rounds: int = 5  # interleaved rounds of backend alone, pipeline and naive loop
    threads: int | None = None  # inference threads; None: the thread budget's policy, 0: the libraries' defaults
    fp16_fallback: bool = False  # fp16 on a CPU backend without fp16 arithmetic runs fp32 instead


def bench(run: RunDir, request: BenchRequest = BenchRequest(),
          progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The report (also written to reports/bench.json)."""
    from mlic_edge.runtime.checks.bench import run_bench
    from mlic_edge.runtime.checks.parity import scored_onnx
    from mlic_edge.runtime.deployment.deploy_report import write_deploy_report
    from mlic_edge.runtime.inference.backends import create_backend
    from mlic_edge.spec import ModelSpec

    if (not request.batches or min(request.batches) < 1 or request.iterations < 1 or request.warmup < 0
            or request.frames < 1 or request.rounds < 1 or (request.threads or 0) < 0):
        raise MlicError(f"--batch {','.join(map(str, request.batches))!r}, --iterations, --warmup, --frames, "
                        "--rounds and --threads must be positive", hint="for example --batch 1,4,8 --rounds 5")
    spec = ModelSpec.from_run(run.spec())
    run.require_writable(reports_only=True)
    say = progress or (lambda message: None)
    with ExitStack() as stack:
        engine = stack.enter_context(create_backend(request.backend, run, request.precision, request.device,
                                                    cuda_graph=request.cuda_graph, threads=request.threads,
                                                    fp16_fallback=request.fp16_fallback))
        naive = engine
        if engine.info.backend == "onnxruntime" and engine.info.device == "cpu" and engine.thread_budget.inference:
            # a loop written without the pipeline runs ONNX Runtime with its default threads (one per core)
            naive = stack.enter_context(create_backend(engine.info.backend, run, engine.info.precision, "cpu",
                                                       threads=0))
        say(f"bench: {engine.info.describe()}; {engine.thread_budget.describe()}" if engine.thread_budget
            else f"bench: {engine.info.describe()}")
        report = run_bench(engine, spec, list(request.batches), iterations=request.iterations,
                           warmup=request.warmup, video_frames=request.frames, rounds=request.rounds,
                           naive_backend=naive, progress=say)
        report["onnx"] = scored_onnx(engine)
    report["run"] = str(run.path)
    write_json(run.reports / "bench.json", report)
    write_deploy_report(run)
    return report


def bench_table(report: dict[str, Any]) -> Any:
    """The rich table ``bench`` prints (runtime/checks/bench.py)."""
    from mlic_edge.runtime.checks.bench import bench_table as table

    return table(report)
