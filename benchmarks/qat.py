"""Quantization-aware fine-tuning benchmark: post-training int8 alone, the default `build -p int8` (which fine-tunes
when post-training misses its target), and `train --qat` towards the fp32 model's scores (distill, the default) and
towards the labels, on trained runs.

    python benchmarks/zoo.py --update --models mlgcn msrn        # the trained zoo runs, if not there yet
    python benchmarks/qat.py --runs runs/bench/mlgcn-recipe-quick runs/bench/msrn-recipe-quick --epochs 3

Each run is copied to ``--work`` once per row (the originals are not changed); each copy is exported with its
reference scores, then built as post-training int8 for ONNX Runtime (its accuracy search on held-out training images
included), built with the default command, or fine-tuned once per target from the same checkpoint. Every figure is
ONNX Runtime CPU on the run's eval split, against the fp32 ONNX: ΔmAP and identical label sets at the 0.5 threshold.
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import time
from pathlib import Path

from common import results_header, write_results
from mlic_edge.commands.build import BuildRequest, build
from mlic_edge.commands.train import QatRequest, train_qat
from mlic_edge.export.onnx_export import export_onnx
from mlic_edge.export.reference import write_reference
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


def measure(source: Path, work: Path, epochs: int, targets: list[str]) -> dict:
    with contextlib.redirect_stderr(io.StringIO()):
        base = fresh_copy(source, work, f"{source.name}-ptq")
        started = time.monotonic()
        entry = build(base, BuildRequest(precision="int8", backend="onnxruntime", qat_epochs=0))
    kept = entry["int8"].get("kept_fp") or []
    seconds = time.monotonic() - started
    rows = [accuracy_row("post-training only (build -p int8 --qat-epochs 0), TensorRT's Q/DQ graph",
                         entry["accuracy"], seconds, kept_fp=len(kept), held_out=held_out(entry))]
    if entry["accuracy"].get("cpu_graph"):
        cpu = entry["int8"].get("cpu_graph") or {}
        rows.append(accuracy_row("post-training only, ONNX Runtime's CPU graph", entry["accuracy"]["cpu_graph"],
                                 seconds, kept_fp=len(cpu.get("kept_fp") or []), held_out=held_out({"int8": cpu})))
    print(rows[0], flush=True)
    with contextlib.redirect_stderr(io.StringIO()):
        default = fresh_copy(source, work, f"{source.name}-default")
        started = time.monotonic()
        entry = build(default, BuildRequest(precision="int8", backend="onnxruntime", qat_epochs=epochs))
    source_graph = "fine-tuned" if entry["int8"].get("source") == "qat" else "post-training"
    rows.append(accuracy_row(f"the default command (build -p int8): {source_graph}", entry["accuracy"],
                             time.monotonic() - started, kept_fp=len(entry["int8"].get("kept_fp") or []),
                             held_out=held_out(entry)))
    print(rows[-1], flush=True)
    for target in targets:
        with contextlib.redirect_stderr(io.StringIO()):
            run = fresh_copy(source, work, f"{source.name}-{target}")
            started = time.monotonic()
            section = train_qat(QatRequest(run=run.path, epochs=epochs, target=target))
        rows.append(accuracy_row(f"train --qat --qat-target {target} (every training image)", section["accuracy"],
                                 time.monotonic() - started, kept_fp=0, lr=section["lr"]))
        print(rows[-1], flush=True)
    spec = base.spec()
    return {"run": str(source), "model": spec.model, "backbone": spec.backbone, "img_size": spec.img_size,
            "rows": rows}


def held_out(entry: dict) -> dict | None:
    """The accuracy search's last step on the held-out training images (None where it did not run)."""
    search = (entry.get("int8") or {}).get("accuracy_target")
    if not search:
        return None
    step = search["steps"][-1]
    return {"images": search["images"], "delta_mAP_points": step["delta_mAP_points"],
            "labelset_agreement": step["labelset_agreement"], "met": search["met"]}


def markdown(result: dict) -> str:
    lines = [f"# Quantization-aware fine-tuning ({result['date']}, {result['machine']})", "",
             f"Post-training int8 alone (its accuracy search may keep layers in float); the default `build -p int8`, "
             f"which fine-tunes {result['epochs']} epochs with quantization-aware distillation when post-training "
             "misses the target on the held-out training images (left out of that fine-tuning); and `train --qat` "
             f"for {result['epochs']} epochs at its default rate (1 % of the run's recipe lr) on every training "
             "image. ONNX Runtime CPU on each run's eval split, against its fp32 ONNX; the held-out column is what "
             "the build judged by (|ΔmAP| ≤ 0.5, ≥ 97 % identical plus one standard error). Command: `"
             + result["command"] + "`.", ""]
    for model in result["models"]:
        lines += [f"## {model['model']} ({model['backbone']}, {model['img_size']} px; {model['run']})", "",
                  "| int8 graph | layers in float | ΔmAP (pts) | identical label sets | held-out: ΔmAP / identical "
                  "(target) | eval images | s |",
                  "|---|---|---|---|---|---|---|"]
        for row in model["rows"]:
            held = row.get("held_out")
            held_text = (f"{held['delta_mAP_points']:+.2f} / {held['labelset_agreement'] * 100:.1f} % "
                         f"({'met' if held['met'] else 'missed'})" if held else "-")
            lines.append(f"| {row['graph']} | {row['kept_fp']} | {row['delta_mAP_points']:+.2f} | "
                         f"{row['labelset_agreement'] * 100:.1f} % | {held_text} | {row['images']} | "
                         f"{row['seconds']} |")
        images = model["rows"][0]["images"]
        lines += ["", f"One image is {100 / images:.2f} % of {images}; the standard error of an agreement near 97 % "
                      f"is {100 * (0.97 * 0.03 / images) ** 0.5:.1f} points.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="trained run directories")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (the build's and train --qat's)")
    parser.add_argument("--targets", nargs="*", default=list(QAT_TARGETS), choices=QAT_TARGETS,
                        help="train --qat targets to run beside the builds")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-qat"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    result = {**results_header("qat.py"), "epochs": args.epochs,
              "models": [measure(source, args.work, args.epochs, args.targets) for source in args.runs]}
    write_results(args.out, "qat", result, markdown)


if __name__ == "__main__":
    main()
