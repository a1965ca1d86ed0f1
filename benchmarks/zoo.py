"""Zoo benchmark: every model and every loss, one budget, one small backbone, synthetic long-tailed data.

    python benchmarks/zoo.py --out benchmarks/results            # writes zoo.json and zoo.md there

Every row trains with its model's ``--recipe quick`` (12 epochs at 96 px, from scratch) and changes only the backbone
and, in the loss table, the loss (and DBL's sampler); ``--paper-recipe q2l`` adds rows trained with those models'
paper recipes at the same input size and epochs.

Not a test: nothing is asserted. It reports what it saw (mAP, head/middle/tail mAP, parameters, ONNX Runtime CPU
latency at batch 1) with the machine it ran on, beside what the papers claim on VOC/COCO.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from common import machine as describe_machine, onnx_latency_ms
from mlic_edge import metrics
from mlic_edge.data import open_dataset
from mlic_edge.data.synth import SynthConfig, generate
from mlic_edge.export.onnx_export import export_onnx
from mlic_edge.models import list_models
from mlic_edge.models.recipe import QUICK
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


def one(name: str, loss: str | None, data: str, out: Path, args, recipe: str = "quick", sampler="random") -> dict:
    run = RunDir(out / (f"{name}-{loss or 'recipe'}-{recipe}" + (f"-seed{args.seed}" if args.seed else "")))
    started = time.monotonic()
    epochs = args.epochs or QUICK.epochs  # paper recipes run for the quick one's epochs here
    train(TrainConfig(model=name, data=data, out=run.path, recipe=recipe, backbone=args.backbone, epochs=epochs,
                      img_size=args.img_size, loss=loss, sampler=sampler, lr=args.lr, workers=2, seed=args.seed,
                      val_fraction=args.val_fraction, overwrite=True, pretrained=False))
    train_s = time.monotonic() - started
    meta = run.read()
    used = meta["recipe"]
    row = {"model": name, "loss": used["loss"], "sampler": sampler, "recipe": recipe, "seed": args.seed,
           "date": time.strftime("%Y-%m-%d"),
           "recipe_summary": f"{recipe}: {used['optimizer']} {used['lr']:g} {used['schedule']}"
                             + (f", wd {used['weight_decay']:g}" if used["weight_decay"] != QUICK.weight_decay else "")
                             + (f", {used['loss']}" if used["loss"] != "bce" else "")
                             + (f", EMA {used['ema_decay']:g}" if used["ema_decay"] else "")
                             + (f", {'+'.join(used['augment'])}" if used["augment"] else "")
                             + (", frozen BN+stem" if used["frozen_bn"] and used["frozen_stem"] else "")
                             + (f", stages {used['stages']}" if used.get("stages", "none") != "none" else ""),
           "epochs": used["epochs"], "best_weights": meta["train"]["best_weights"], "train_s": round(train_s, 1),
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

    lines = [f"| {key} | recipe | measured | mAP | head | middle | tail | CF1 | OF1 | params (M) | ORT CPU ms | "
             "train s | paper reports |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        label = (r[key] + (f" ({r['sampler']})" if r.get("sampler", "random") != "random" else "")
                 + (f" (seed {r['seed']})" if r.get("seed") else ""))
        lines.append(f"| {label} | {r['recipe_summary']} | {r['date']} | {pct(r['mAP'])} | {pct(r['head'])} | "
                     f"{pct(r['middle'])} | {pct(r['tail'])} | "
                     f"{pct(r['CF1'])} | {pct(r['OF1'])} | {r['params_M']} | {r['ort_cpu_ms']} | {r['train_s']} | "
                     f"{claims.get(r[key], '')} |")
    return lines


def merged(previous: dict, update: dict) -> dict:
    """``previous`` results with the rows ``update`` re-measured put in place of theirs (or added)."""
    def key(row: dict) -> tuple:
        return row["model"], row["recipe"], row["loss"], row["sampler"], row.get("seed", 0)

    result = dict(previous)
    for table_name in ("models", "losses"):
        fresh = {key(row): row for row in update[table_name]}
        rows = [fresh.pop(key(row), row) for row in previous[table_name]]
        result[table_name] = rows + list(fresh.values())
    rows = [f"{row['model']} ({row['recipe']}, {row['loss']}" + (f", seed {row['seed']})" if row.get("seed") else ")")
            for name in ("models", "losses")
            for row in update[name]]
    command = "python benchmarks/zoo.py " + " ".join(sys.argv[1:])
    if rows:
        result["updates"] = previous.get("updates", []) + [{"date": update["date"], "rows": rows, "command": command}]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench"))
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--img-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=None, help="default: the quick recipe's")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--seed", type=int, default=0, help="training seed of every row (rows of another seed than 0 "
                        "are kept beside the seed-0 rows and labelled)")
    parser.add_argument("--val-fraction", type=float, default=TrainConfig.val_fraction,
                        help="share of the training split held out before training (the int8 build judges on it)")
    parser.add_argument("--lr", type=float, default=None, help="override every row's recipe lr (for trials; each row "
                        "records the lr it used)")
    parser.add_argument("--losses", nargs="*", default=["bce", "softmargin", "focal", "asl", "dbl", "dab"])
    parser.add_argument("--paper-recipe", nargs="*", default=["q2l"], help="models also trained with their paper's "
                        "recipe (same input size and epochs)")
    parser.add_argument("--update", action="store_true", help="train only the --models / --losses / --paper-recipe "
                        "named (none by default) and replace their rows in OUT/zoo.json, keeping the others")
    args = parser.parse_args()
    if args.update:
        given = set(sys.argv)
        args.models = args.models or []
        args.losses = args.losses if "--losses" in given else []
        args.paper_recipe = args.paper_recipe if "--paper-recipe" in given else []

    data_dir = args.work / "data"
    generate(data_dir, SynthConfig(classes=args.classes, images=args.images, size=args.img_size, seed=0,
                                   long_tail=True))
    data = f"voc:{data_dir}"
    eval_targets = open_dataset(data, role="eval").targets
    # Expected AP of random scores: each class's prevalence among its scored (not ignored, -1) images.
    chance_map = float(((eval_targets == 1).sum(axis=0) / (eval_targets >= 0).sum(axis=0)).mean())
    names = args.models if args.update else args.models or [entry.name for entry in list_models()]
    model_rows = [one(name, None, data, args.work, args) for name in names]  # each with its quick recipe's loss
    model_rows += [one(name, None, data, args.work, args, recipe="paper") for name in args.paper_recipe]
    loss_rows = [one("baseline", loss, data, args.work, args, sampler="class-aware" if loss == "dbl" else "random")
                 for loss in args.losses]

    machine = describe_machine()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine, "date": time.strftime("%Y-%m-%d"), "settings": {k: str(v) for k, v in
                                                                                  vars(args).items()},
              "chance_mAP": chance_map, "models": model_rows, "losses": loss_rows, "updates": []}
    if args.update:
        result = merged(json.loads((args.out / "zoo.json").read_text()), result)
        model_rows, loss_rows = result["models"], result["losses"]
    (args.out / "zoo.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Zoo benchmark ({result['date']}, {machine})", "",
             f"Synthetic long-tailed data: {args.classes} classes, {args.images} images at {args.img_size} px "
             f"(`mlic-edge data synth --long-tail`); backbone `{args.backbone}` from scratch, "
             f"{args.epochs or QUICK.epochs} epochs, batch 32 for every row; each row's recipe is its model's "
             "`--recipe quick` unless it says paper (then the paper's optimizer, schedule, EMA, augmentations and "
             f"freezing at the same input size and epochs). Chance (random scores): {chance_map * 100:.1f} mAP. "
             "head/middle/tail: > 100 / 20–100 / < 20 training images. ORT CPU ms: ONNX Runtime fp32, batch 1, "
             f"median of 50. Command: `python benchmarks/zoo.py --images {args.images}`."]
    lines += [f"Rows re-measured on {update['date']} with `{update['command']}`: {', '.join(update['rows'])}."
              for update in result["updates"]]
    lines += ["", "## Models", ""] + table(model_rows, "model", PAPER_CLAIMS)
    lines += ["", "## Losses (baseline model)", ""] + table(loss_rows, "loss", LOSS_CLAIMS)
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in result["notes"]]
    lines += [""]
    (args.out / "zoo.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
