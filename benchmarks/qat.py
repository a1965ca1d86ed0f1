"""Quantization-aware fine-tuning benchmark: post-training int8 (the default `build -p int8`) against `train --qat`
towards the fp32 model's scores (distill, the default) and towards the labels, on trained runs.

    python benchmarks/zoo.py --update --models mlgcn msrn        # the trained zoo runs, if not there yet
    python benchmarks/qat.py --runs runs/bench/mlgcn-bce-quick runs/bench/msrn-bce-quick --epochs 3

Each run is copied to ``--work`` first (the originals are not changed); the copy is exported with its reference
scores, built as post-training int8 for ONNX Runtime (its accuracy search on held-out training images included), and
fine-tuned once per target from the same checkpoint. Every figure is ONNX Runtime CPU on the run's eval split,
against the fp32 ONNX: ΔmAP and identical label sets at the 0.5 threshold. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import time
from pathlib import Path

from common import machine
from mlic_edge.commands.build import BuildRequest, build
from mlic_edge.commands.train import QatRequest, train_qat
from mlic_edge.export.onnx_export import export_onnx
from mlic_edge.export.reference import write_reference
from mlic_edge.io import write_json
from mlic_edge.rundir import RunDir
from mlic_edge.train.config import QAT_TARGETS

RUN_FILES = ("checkpoint.pt", "run.json", "label_graph.npz")


def fresh_copy(source: Path, work: Path, name: str) -> RunDir:
    """The trained run's checkpoint and record, exported afresh with its reference scores."""
    run = RunDir(work / name)
    shutil.rmtree(run.path, ignore_errors=True)
    run.path.mkdir(parents=True)
    for file in RUN_FILES:
        if (source / file).is_file():
            shutil.copy2(source / file, run.path / file)
    export_onnx(run, check_images=8)
    write_reference(run)
    return run


def accuracy_row(what: str, accuracy: dict, seconds: float, **extra) -> dict:
    return {"graph": what, "mAP_fp32": accuracy["mAP_fp32"], "mAP_int8": accuracy["mAP_int8"],
            "delta_mAP_points": accuracy["delta_mAP_vs_fp32"] * 100,
            "labelset_agreement": accuracy["labelset_agreement_vs_fp32"], "images": accuracy["images"],
            "seconds": round(seconds, 1), **extra}


def measure(source: Path, work: Path, epochs: int) -> dict:
    with contextlib.redirect_stderr(io.StringIO()):
        base = fresh_copy(source, work, f"{source.name}-base")
        started = time.monotonic()
        entry = build(base, BuildRequest(precision="int8", backend="onnxruntime"))
    kept = entry["int8"].get("kept_fp") or []
    seconds = time.monotonic() - started
    rows = [accuracy_row("post-training (build -p int8), TensorRT's Q/DQ graph", entry["accuracy"], seconds,
                         kept_fp=len(kept))]
    if entry["accuracy"].get("cpu_graph"):
        cpu_kept = (entry["int8"].get("cpu_graph") or {}).get("kept_fp") or []
        rows.append(accuracy_row("post-training (build -p int8), ONNX Runtime's CPU graph",
                                 entry["accuracy"]["cpu_graph"], seconds, kept_fp=len(cpu_kept)))
    for target in QAT_TARGETS:
        with contextlib.redirect_stderr(io.StringIO()):
            run = fresh_copy(source, work, f"{source.name}-{target}")
            started = time.monotonic()
            section = train_qat(QatRequest(run=run.path, epochs=epochs, target=target))
        rows.append(accuracy_row(f"train --qat --qat-target {target}", section["accuracy"],
                                 time.monotonic() - started, kept_fp=0, lr=section["lr"]))
        print(rows[-1], flush=True)
    spec = base.spec()
    return {"run": str(source), "model": spec.model, "backbone": spec.backbone, "img_size": spec.img_size,
            "rows": rows}


def markdown(result: dict) -> str:
    lines = [f"# Quantization-aware fine-tuning ({result['date']}, {result['machine']})", "",
             f"`train --qat` for {result['epochs']} epochs at its default rate (1 % of the run's recipe lr), against "
             "the default post-training build (its accuracy search may keep layers in float). ONNX Runtime CPU on "
             "each run's eval split, against its fp32 ONNX. Command: `" + result["command"] + "`.", ""]
    for model in result["models"]:
        lines += [f"## {model['model']} ({model['backbone']}, {model['img_size']} px; {model['run']})", "",
                  "| int8 graph | layers in float | ΔmAP (pts) | identical label sets | images | s |",
                  "|---|---|---|---|---|---|"]
        for row in model["rows"]:
            lines.append(f"| {row['graph']} | {row['kept_fp']} | {row['delta_mAP_points']:+.2f} | "
                         f"{row['labelset_agreement'] * 100:.1f} % | {row['images']} | {row['seconds']} |")
        images = model["rows"][0]["images"]
        lines += ["", f"One image is {100 / images:.2f} % of {images}; the standard error of an agreement near 97 % "
                      f"is {100 * (0.97 * 0.03 / images) ** 0.5:.1f} points.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="trained run directories")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-qat"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "epochs": args.epochs,
              "command": "python benchmarks/qat.py " + " ".join(sys.argv[1:]),
              "models": [measure(source, args.work, args.epochs) for source in args.runs]}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "qat.json", result)
    (args.out / "qat.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
