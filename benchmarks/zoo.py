"""Zoo benchmark: every model and every loss, one budget, one small backbone, synthetic long-tailed data.

    python benchmarks/zoo.py --out benchmarks/results            # writes zoo.json and zoo.md there

Not a test: nothing is asserted. It reports what it saw (mAP, head/middle/tail mAP, parameters, ONNX Runtime CPU
latency at batch 1) with the machine it ran on, beside what the papers claim on VOC/COCO.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from common import machine as describe_machine, onnx_latency_ms
from mlic_edge import metrics
from mlic_edge.data import open_dataset
from mlic_edge.data.synth import SynthConfig, generate
from mlic_edge.export.onnx_export import export_onnx
from mlic_edge.models import list_models
from mlic_edge.rundir import RunDir
from mlic_edge.train.evaluate import predict_scores
from mlic_edge.models.checkpoint import load_model
from mlic_edge.train.trainer import TrainConfig, train

# What each paper reports (mAP %, its own backbone and input size), for context only.
PAPER_CLAIMS = {
    "baseline": "ResNet-101 GMP: VOC 93.0, COCO 81.9 (ML-GCN's table)",
    "mlgcn": "VOC 94.0, COCO 83.0 (ResNet-101, 448)",
    "mlgat": "VOC 94.3, COCO (4k-sample) 69.2",
    "semdep": "VOC 90.4 (DenseNet-121)",
    "q2l": "COCO 87.0 (448) / 88.4 (576), VOC 96.0 (ResNeSt)",
    "msrn": "VOC 94.9 (96.0 with COCO pre-training), COCO 83.4",
}
LOSS_CLAIMS = {"dbl": "VOC-MLT 78.94 / COCO-MLT 53.55 (DBL README)", "dab": "VOC-MLT 79.19 / COCO-MLT 53.71 (seed 002)"}


def evaluate_run(run: RunDir, data: str, img_size: int) -> dict:
    meta = run.read()
    eval_set = open_dataset(data, role="eval")
    scores = predict_scores(load_model(run.checkpoint), eval_set, img_size, meta["mean"], meta["std"])
    counts = np.asarray(meta["dataset"]["train_class_counts"])
    report = metrics.evaluate(scores.scores, scores.targets(eval_set), eval_set.names, class_counts=counts)
    return {"mAP": report["mAP"], "head": report["groups"]["head"], "middle": report["groups"]["middle"],
            "tail": report["groups"]["tail"], "OF1": report["OF1"], "CF1": report["CF1"]}


def one(name: str, loss: str, data: str, out: Path, args, model_options=None, sampler="random") -> dict:
    run = RunDir(out / f"{name}-{loss}")
    started = time.monotonic()
    train(TrainConfig(model=name, data=data, out=run.path, backbone=args.backbone, epochs=args.epochs,
                      img_size=args.img_size, batch_size=32, optimizer="adamw", lr=args.lr, warmup_epochs=0.5,
                      crop_scale=0.8, loss=loss, sampler=sampler, workers=2, seed=0,
                      model_options=model_options or {}))
    train_s = time.monotonic() - started
    row = {"model": name, "loss": loss, "sampler": sampler, "train_s": round(train_s, 1),
           **evaluate_run(run, data, args.img_size)}
    exported = export_onnx(run, check_images=8)
    row["onnx_max_abs_diff"] = exported.max_abs_diff
    row["params_M"] = round(sum(p.numel() for p in load_model(run.checkpoint).parameters()) / 1e6, 2)
    row["ort_cpu_ms"] = round(onnx_latency_ms(exported.path, args.img_size), 2)
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict], key: str, claims: dict) -> list[str]:
    def pct(v):
        return "-" if v is None else f"{v * 100:.1f}"

    lines = [f"| {key} | mAP | head | middle | tail | CF1 | OF1 | params (M) | ORT CPU ms | train s | paper reports |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        label = r[key] + (f" ({r['sampler']})" if r.get("sampler", "random") != "random" else "")
        lines.append(f"| {label} | {pct(r['mAP'])} | {pct(r['head'])} | {pct(r['middle'])} | {pct(r['tail'])} | "
                     f"{pct(r['CF1'])} | {pct(r['OF1'])} | {r['params_M']} | {r['ort_cpu_ms']} | {r['train_s']} | "
                     f"{claims.get(r[key], '')} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench"))
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--img-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--losses", nargs="*", default=["bce", "softmargin", "focal", "asl", "dbl", "dab"])
    args = parser.parse_args()

    data_dir = args.work / "data"
    generate(data_dir, SynthConfig(classes=args.classes, images=args.images, size=args.img_size, seed=0,
                                   long_tail=True))
    data = f"voc:{data_dir}"
    names = args.models or [entry.name for entry in list_models()]
    model_rows = [one(name, "bce", data, args.work, args) for name in names]
    loss_rows = [one("baseline", loss, data, args.work, args, sampler="class-aware" if loss == "dbl" else "random")
                 for loss in args.losses]

    machine = describe_machine()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine, "date": time.strftime("%Y-%m-%d"), "settings": {k: str(v) for k, v in
                                                                                  vars(args).items()},
              "models": model_rows, "losses": loss_rows}
    (args.out / "zoo.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Zoo benchmark ({result['date']}, {machine})", "",
             f"Synthetic long-tailed data: {args.classes} classes, {args.images} images at {args.img_size} px "
             f"(`mlic-edge data synth --long-tail`); backbone `{args.backbone}` from scratch, {args.epochs} epochs, "
             f"AdamW lr {args.lr}, batch 32, same for every row. head/middle/tail: > 100 / 20–100 / < 20 training "
             "images. ORT CPU ms: ONNX Runtime fp32, batch 1, median of 50. Command: "
             f"`python benchmarks/zoo.py --epochs {args.epochs} --images {args.images}`.", "",
             "## Models (BCE loss)", ""] + table(model_rows, "model", PAPER_CLAIMS) + [
             "", "## Losses (baseline model)", ""] + table(loss_rows, "loss", LOSS_CLAIMS) + [""]
    (args.out / "zoo.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
