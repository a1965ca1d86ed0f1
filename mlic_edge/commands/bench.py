"""`mlic-edge bench` as a library: the backend alone (like trtexec) vs the whole pipeline, side by side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from mlic_edge.errors import MlicError
from mlic_edge.io import write_json
from mlic_edge.rundir import RunDir


@dataclass(frozen=True)
class BenchRequest:
    backend: str = "auto"
    precision: str = "fp32"
    device: str = "auto"
    batches: tuple[int, ...] = (1,)
    iterations: int = 200
    warmup: int = 20
    frames: int = 300  # of the generated video the pipeline runs over
    cuda_graph: bool = False


def bench(run: RunDir, request: BenchRequest = BenchRequest(),
          progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The report (also written to reports/bench.json)."""
    from mlic_edge.runtime.checks.bench import run_bench
    from mlic_edge.runtime.inference.backends import create_backend
    from mlic_edge.spec import ModelSpec

    if (not request.batches or min(request.batches) < 1 or request.iterations < 1 or request.warmup < 0
            or request.frames < 1):
        raise MlicError(f"--batch {','.join(map(str, request.batches))!r}, --iterations, --warmup and --frames must "
                        "be positive", hint="for example --batch 1,4,8 --iterations 200")
    spec = ModelSpec.from_run(run.spec())
    run.require_writable(reports_only=True)
    say = progress or (lambda message: None)
    with create_backend(request.backend, run, request.precision, request.device,
                        cuda_graph=request.cuda_graph) as engine:
        say(f"bench: {engine.info.describe()}")
        report = run_bench(engine, spec, list(request.batches), iterations=request.iterations,
                           warmup=request.warmup, video_frames=request.frames, progress=say)
    report["run"] = str(run.path)
    write_json(run.reports / "bench.json", report)
    return report
