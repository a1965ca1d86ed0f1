"""``mlic-edge demo`` as a library: the whole path on an embedded default, in minutes on a laptop CPU."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlic_edge.console import console, info, show
from mlic_edge.spec import rebuild_command


def _machine() -> str:
    """'2 CPU cores (x86_64)': what the wall time was measured on."""
    import os
    import platform

    return f"{os.cpu_count()} CPU cores ({platform.machine()})"


@dataclass(frozen=True)
class DemoRequest:
    epochs: int = 12
    backbone: str = "resnet10t"
    classes: int = 6  # of the synthetic dataset
    images: int = 800
    size: int = 96  # image side in pixels, also the model's input


def demo(out: Path, request: DemoRequest = DemoRequest()) -> dict[str, Any]:
    """Synthetic data → a small model trained → export → run over a video → parity, in ``out``; what each step
    measured."""
    from rich.rule import Rule

    from mlic_edge.commands.data import SynthConfig, synth
    from mlic_edge.commands.export import export
    from mlic_edge.commands.parity import ParityRequest, check_parity, parity, parity_table
    from mlic_edge.commands.predict import PredictOutputs, PredictRequest, predict_to_outputs, summary_tables
    from mlic_edge.commands.train import TrainConfig, train, training_summary
    from mlic_edge.rundir import RunDir

    started = time.monotonic()
    data_dir, run = out / "data", RunDir(out / "run")
    config = TrainConfig(model="baseline", data=f"voc:{data_dir}", out=run.path, backbone=request.backbone,
                         recipe="quick", epochs=request.epochs, img_size=request.size, workers=2, seed=0,
                         overwrite=True)
    config.validate()  # before minutes of making data

    console.print(Rule("1/5 synthetic data"))
    synth(data_dir, SynthConfig(classes=request.classes, images=request.images, size=request.size, seed=0,
                                video=True))
    info(f"{request.images} images of {request.classes} classes with co-occurrence rules in {data_dir} (VOC layout) "
         "+ video.mp4")

    console.print(Rule(f"2/5 train baseline ({request.backbone}, {request.epochs} epochs, CPU)"))
    trained = train(config)

    console.print(Rule("3/5 export to ONNX"))
    exported = export(run)
    info(f"{exported['onnx']}: max |PyTorch - ONNX Runtime| = {exported['max_abs_diff']:.2e} on "
         f"{exported['check_images']} real images")

    console.print(Rule("4/5 run over the video (ONNX Runtime)"))
    predictions = out / "video_predictions.jsonl"
    summary = predict_to_outputs(run, str(data_dir / "video.mp4"),
                                 PredictRequest(backend="onnxruntime", device="cpu", top_k=3),
                                 PredictOutputs(out=predictions, save_video=out / "video_labeled.mp4"))
    device = summary["backend"]["device"]
    for table in summary_tables(summary):
        show(table, stderr=True)
    first = json.loads(predictions.read_text().splitlines()[0])
    info(f"frame 0: {', '.join(item['label'] for item in first['labels']) or '(no label over 0.5)'}; "
         f"all frames in {predictions}, labelled video in {out / 'video_labeled.mp4'}")

    console.print(Rule("5/5 parity: ONNX Runtime vs PyTorch on the test split"))
    report = parity(run, ParityRequest(backends=("onnxruntime",), precisions=("fp32",), device="cpu"))
    show(parity_table(report), stderr=True)
    check_parity(report)

    minutes = (time.monotonic() - started) / 60
    import numpy as np  # here: the CLI imports DemoRequest for its defaults, and --help loads no numpy

    with np.load(run.reference) as reference:
        chance = float(np.mean((reference["targets"] == 1).mean(axis=0)))
    console.print(Rule("done"))
    info(f"{training_summary(trained)} (chance on the eval split: {chance * 100:.1f}, the mean label frequency); "
         f"the whole path took {minutes:.1f} min (wall time) on {device}, {_machine()}, "
         f"{datetime.now(timezone.utc):%Y-%m-%d}.")
    info("Try next:")
    for comment, command in (
            ("all metrics: CP, CR, CF1, OP, OR, OF1, top-3", f"mlic-edge eval --run {run.path}"),
            ("label a folder, one JSON line per image", f"mlic-edge run {data_dir}/JPEGImages --run {run.path}"),
            ("label counts, head/middle/tail, co-occurrence heatmap", f"mlic-edge data stats {data_dir}"),
            ("int8 with calibration data, then parity of every precision",
             f"{rebuild_command(run.path, 'int8')} && mlic-edge parity --run {run.path}"),
            ("one archive for a device (ONNX files, calibration, reference)", f"mlic-edge pack --run {run.path}"),
            ("a real dataset (ImageNet weights need network or --pretrained-file)",
             "mlic-edge train --data voc:PATH/VOC2007 --backbone resnet50 --pretrained")):
        console.print(f"  [dim]# {comment}[/dim]\n  {command}", highlight=False, soft_wrap=True)
    return {"train": trained, "parity": report, "latency": summary, "minutes": minutes, "chance_mAP": chance}
