"""Pipeline benchmark: what the `mlic-edge run` pipeline buys over the loop a user would write, and how much of the
backend's throughput it keeps.

    python benchmarks/pipeline.py --out benchmarks/results            # writes pipeline.json and pipeline.md

For each model and batch size, `mlic-edge bench`'s measurement (runtime/checks/bench.py): interleaved rounds of the
backend alone (random input, like trtexec), the whole pipeline over a generated 640x480 video (decode, preprocess,
batch, infer, postprocess on threads) and the naive loop over the same video (decode → preprocess → infer → JSON,
one after another, ONNX Runtime and OpenCV with their default threads). Each thread setting (`--threads`: the
runtime's policy, or a fixed count of inference threads) is one bench. Weights are random (pretrained=False):
throughput does not depend on them. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import machine, make_run, notes_section
from mlic_edge.io import write_json
from mlic_edge.rundir import installed_versions
from mlic_edge.runtime.inference.backends import create_backend
from mlic_edge.runtime.checks.bench import run_bench
from mlic_edge.spec import ModelSpec

CASES = {"resnet18": (1, 8), "mobilenetv3_large_100": (1, 8), "resnet50": (8,)}  # the targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-pipeline"))
    parser.add_argument("--models", nargs="*", default=list(CASES))
    parser.add_argument("--iterations", type=int, default=50, help="backend-alone inferences per batch, all rounds")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", default="policy,1", help="comma-separated: policy, or an inference thread count")
    args = parser.parse_args()
    settings = [None if part == "policy" else int(part) for part in args.threads.split(",")]

    started = time.monotonic()
    reports = []
    for backbone in args.models:
        run = make_run(args.work, backbone, 224)
        spec = ModelSpec.from_run(run.read())
        for threads in settings:
            with create_backend("onnxruntime", run, "fp32", "cpu", threads=threads) as backend, \
                    create_backend("onnxruntime", run, "fp32", "cpu", threads=0) as naive:
                report = run_bench(backend, spec, list(CASES.get(backbone, (1, 8))), iterations=args.iterations,
                                   warmup=5, video_frames=args.frames, rounds=args.rounds, naive_backend=naive)
            report["model"] = f"baseline {backbone} 224px"
            reports.append(report)
            for row in report["results"]:
                print(f"{backbone} batch {row['batch']} {backend.thread_budget.describe()}: alone "
                      f"{row['backend_alone']['images_per_s']:.1f}, pipeline {row['pipeline']['images_per_s']:.1f}, "
                      f"naive {row['naive_loop']['images_per_s']:.1f} img/s; pipeline/naive "
                      f"{row['pipeline_over_naive']:.2f}, pipeline/alone {row['ratio']:.2f}", flush=True)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "command": "python benchmarks/pipeline.py " + " ".join(sys.argv[1:]), "versions": installed_versions(),
              "settings": {k: str(v) for k, v in vars(args).items()}, "reports": reports,
              "minutes": (time.monotonic() - started) / 60}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "pipeline.json", result)
    (args.out / "pipeline.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    first = result["reports"][0]
    lines = [f"# Pipeline benchmark ({result['date']}, {result['machine']})", "",
             f"Command: `{result['command'].strip()}`. Backend: ONNX Runtime {result['versions'].get('onnxruntime')} "
             f"CPUExecutionProvider, fp32, 224 px. Pipeline and naive loop: {first['video']['frames']} frames of a "
             f"generated {first['video']['size'][0]}x{first['video']['size'][1]} MP4. Each figure is the median "
             f"of {first['rounds']} interleaved rounds (backend alone, pipeline, naive loop in turn), ± half the "
             "range of the rounds. The naive loop runs ONNX Runtime and OpenCV with their default threads; "
             "threads says what the pipeline's backend had.", "",
             "| model | batch | threads | alone img/s | pipeline img/s | naive loop img/s | pipeline / naive | "
             "pipeline / alone | feed ms/frame | inference ms/img |", "|---|---|---|---|---|---|---|---|---|---|"]

    def rate(entry: dict) -> str:
        return f"{entry['images_per_s']:.1f} ±{entry['images_per_s_spread']['relative_spread'] * 50:.0f} %"

    for report in result["reports"]:
        threads = report["threads"]
        setting = f"{threads['inference']} ({threads['chosen_by']})"
        for row in report["results"]:
            stages = row["pipeline"]["stages_ms"]
            feed = sum(stages[name]["mean_ms"] for name in ("decode", "preprocess", "postprocess") if name in stages)
            lines.append(f"| {report['model']} | {row['batch']} | {setting} | {rate(row['backend_alone'])} | "
                         f"{rate(row['pipeline'])} | {rate(row['naive_loop'])} | {row['pipeline_over_naive']:.2f} | "
                         f"{row['ratio']:.2f} | {feed:.2f} | {stages['inference']['mean_ms']:.2f} |")
    lines += notes_section(result.get("notes", []))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
