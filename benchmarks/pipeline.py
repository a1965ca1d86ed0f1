"""Pipeline benchmark: how much of the backend's throughput the whole `mlic-edge run` pipeline keeps.

    python benchmarks/pipeline.py --out benchmarks/results            # writes pipeline.json and pipeline.md

For each model, the backend alone (random input, warm-up, timed inferences, like trtexec) and the whole pipeline
over a generated 640x480 video (decode, preprocess, batch, infer, postprocess on threads), at the same batch sizes,
side by side in one process — what `mlic-edge bench` prints. Target: pipeline >= 90 % of backend alone on files.
Weights are random (pretrained=False): throughput does not depend on them. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from pathlib import Path

import torch

from common import machine
from mlic_edge.export.onnx_export import write_onnx
from mlic_edge.io import write_json
from mlic_edge.models import create_model
from mlic_edge.rundir import RunDir, installed_versions
from mlic_edge.runtime.inference.backends import create_backend
from mlic_edge.runtime.checks.bench import run_bench
from mlic_edge.spec import ModelSpec

MODELS = (("resnet18", 224), ("resnet50", 224), ("mobilenetv3_large_100", 224))
LABELS = [f"class{i}" for i in range(20)]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def make_run(work: Path, backbone: str, img_size: int) -> RunDir:
    run = RunDir(work / backbone)
    if not run.onnx().is_file():
        meta = {"model": "baseline", "backbone": backbone, "labels": LABELS, "img_size": img_size, "mean": MEAN,
                "std": STD}
        run.path.mkdir(parents=True, exist_ok=True)
        run.update(**meta)
        model = create_model("baseline", len(LABELS), backbone=backbone).eval()
        with contextlib.redirect_stderr(io.StringIO()):
            write_onnx(model.for_export(), torch.zeros(2, 3, img_size, img_size), run.onnx(), meta)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-pipeline"))
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--frames", type=int, default=320)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    started = time.monotonic()
    reports = []
    for backbone, img_size in MODELS:
        run = make_run(args.work, backbone, img_size)
        with create_backend("onnxruntime", run, "fp32", "cpu") as backend:
            report = run_bench(backend, ModelSpec.from_run(run.read()), batches, iterations=args.iterations,
                               warmup=5, video_frames=args.frames)
        report["model"] = f"baseline {backbone} {img_size}px"
        reports.append(report)
        for row in report["results"]:
            print(f"{backbone} batch {row['batch']}: alone {row['backend_alone']['images_per_s']:.1f} img/s, "
                  f"pipeline {row['pipeline']['images_per_s']:.1f} img/s, ratio {row['ratio'] * 100:.1f} %",
                  flush=True)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/pipeline.py",
              "versions": installed_versions(), "settings": {k: str(v) for k, v in vars(args).items()},
              "reports": reports, "minutes": (time.monotonic() - started) / 60}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "pipeline.json", result)
    (args.out / "pipeline.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    first = result["reports"][0]
    lines = [f"# Pipeline benchmark ({result['date']}, {result['machine']})", "",
             f"Command: `{result['command']}`. Backend: ONNX Runtime {result['versions'].get('onnxruntime')} "
             f"CPUExecutionProvider, fp32. Pipeline: {first['video']['frames']} frames of a generated "
             f"{first['video']['size'][0]}x{first['video']['size'][1]} MP4 (decode, preprocess, batch, infer, "
             "postprocess on threads, no output written). Backend alone: one random batch, warm-up, then "
             f"{first['iterations']} timed inferences. Same process, measured one after the other.", "",
             "| model | batch | alone img/s | pipeline img/s | pipeline / alone | decode + preprocess ms/frame "
             "| inference ms/img in the pipeline |", "|---|---|---|---|---|---|---|"]
    for report in result["reports"]:
        for row in report["results"]:
            stages = row["pipeline"]["stages_ms"]
            feed = stages["decode"]["mean_ms"] + stages["preprocess"]["mean_ms"]
            lines.append(f"| {report['model']} | {row['batch']} | {row['backend_alone']['images_per_s']:.1f} | "
                         f"{row['pipeline']['images_per_s']:.1f} | {row['ratio'] * 100:.1f} % | {feed:.2f} | "
                         f"{stages['inference']['mean_ms']:.2f} |")
    lines += ["", "On this machine ONNX Runtime uses both CPU cores for inference, so decoding and preprocessing are "
              "not free: they take CPU time from the backend. The pipeline keeps >= 90 % where inference dominates "
              "(resnet50) and falls short where a 640x480 decode + preprocess costs a large share of a fast model's "
              "inference (mobilenetv3). With a GPU backend, inference leaves the CPU to decoding, which then overlaps "
              "(not measured here: no GPU was lent to this task)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
