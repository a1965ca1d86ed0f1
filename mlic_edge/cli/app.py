"""The ``mlic-edge`` command line. Heavy packages (torch, onnxruntime, TensorRT) are imported inside commands
only, so ``--help`` stays fast and works on a torch-free edge install."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

from mlic_edge.cli.options import (BackendOpt, BatchesOpt, BatchRangeOpt, BuildBackendOpt, DataOpt, DeviceOpt, JsonOpt,
                                   ModelNameOpt, Fp16FallbackOpt, PrecisionOpt, RunOpt, ThreadsOpt, TrustPickleOpt,
                                   batch_timeout_option, precision_option, streams_option)
from mlic_edge.commands.bench import BenchRequest
from mlic_edge.commands.build import BuildRequest
from mlic_edge.commands.demo import DemoRequest
from mlic_edge.commands.evaluate import EvalRequest
from mlic_edge.commands.models import ModelsRequest
from mlic_edge.commands.export import ExportRequest
from mlic_edge.commands.parity import ParityRequest
from mlic_edge.commands.predict import PredictRequest
from mlic_edge.commands.service import ServiceRequest, UninstallRequest
from mlic_edge.commands.serving import DeepStreamRequest, TritonRequest
from mlic_edge.commands.train import QatRequest, TrainConfig
from mlic_edge.errors import EXIT_CHECK_FAILED, EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED, Interrupted, MlicError
from mlic_edge.spec import (CPU_INT8_TARGET_AGREEMENT, CPU_INT8_TARGET_DELTA_POINTS, DEFAULT_LABELSET_FLOOR,
                            DEFAULT_MAX_SCORE_DIFF, DEFAULT_TOLERANCE_POINTS, RESIZE_MODES, parse_key_values,
                            parse_per_precision, per_precision_text, require_seconds, split_items)

EPILOG_STYLE = "markdown"

app = typer.Typer(
    name="mlic-edge",
    help="Multi-label image classifiers from the papers to edge GPUs: train, export, run, check parity.\n\n"
         "Start with: **mlic-edge demo**",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Make and inspect datasets.", no_args_is_help=True, rich_markup_mode="markdown")
app.add_typer(data_app, name="data")

_state = {"debug": False}


def _print_version(value: bool) -> None:
    if value:
        from mlic_edge import __version__

        typer.echo(f"mlic-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _global(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
            version: bool = typer.Option(False, "--version", "-V", callback=_print_version, is_eager=True,
                                         help="Print mlic-edge's version and exit.")) -> None:
    _state["debug"] = debug


def main() -> None:
    """Entry point: errors become one actionable line and a non-zero exit (tracebacks only with --debug)."""
    from mlic_edge.stops import exit_uninterrupted, stop_on_signals

    exit_uninterrupted()
    debug = "--debug" in sys.argv or os.environ.get("MLIC_EDGE_DEBUG") == "1"
    try:
        with stop_on_signals():
            app()
    except Interrupted as stop:
        _stopped(stop, debug)
    except MlicError as error:
        if debug:
            traceback.print_exc()
        _print_error(str(error))
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        _print_error("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as error:  # a bug: still one line, traceback on request
        stop = _interrupted_cause(error)
        if stop is not None:
            _stopped(stop, debug)
        if debug:
            traceback.print_exc()
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        _print_error(f"internal error: {type(error).__name__}: {message} (rerun with --debug for the traceback)")
        sys.exit(EXIT_INTERNAL_ERROR)


def _stopped(stop: Interrupted, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    _print_error(f"stopped by {stop.signal_name}: " + (stop.note or "temporary files removed; what was complete "
                                                                      "before the signal is kept, nothing else"))
    sys.exit(stop.exit_code)


def _interrupted_cause(error: BaseException) -> Interrupted | None:
    """The stop behind ``error``: a signal that lands while C code runs a Python callback (``os.fspath`` calling a
    path's ``__fspath__``, seen under parity) raises Interrupted there, and CPython reports it as a SystemError
    caused by it. The ``with`` blocks unwound all the same, so it is a stop like any other."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, Interrupted):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _print_error(message: str) -> None:
    from rich.markup import escape

    from mlic_edge.console import console

    console.quiet = False  # an error always prints, also from a rank whose progress was silenced
    console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)


def _emit_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _run_dir(run: Optional[Path], model: Optional[str]):
    from mlic_edge.rundir import RunDir

    return RunDir.resolve(run, model)


# --------------------------------------------------------------------------------------------------- data
@data_app.command("synth", epilog="Example: `mlic-edge data synth data/synth --classes 8 --images 800 --long-tail`")
def data_synth(
    out: Path = typer.Argument(..., help="Folder to write (VOC layout)."),
    classes: int = typer.Option(8, "--classes", help="Number of object classes."),
    images: int = typer.Option(800, "--images", help="Number of images (train + test)."),
    size: int = typer.Option(128, "--size", help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same data)."),
    long_tail: bool = typer.Option(False, "--long-tail", help="Pareto class frequencies in the train split."),
    video: bool = typer.Option(False, "--video", help="Also write a short clip (video.mp4)."),
    json_out: bool = JsonOpt,
) -> None:
    """Generate a deterministic synthetic multi-label dataset with label co-occurrence rules."""
    from mlic_edge.commands.data import SynthConfig, synth
    from mlic_edge.console import info, progress_bar

    config = SynthConfig(classes=classes, images=images, size=size, seed=seed, long_tail=long_tail, video=video)
    with progress_bar(transient=True) as progress:
        task = progress.add_task("synth", total=images, status="")
        summary = synth(out, config, progress=lambda done, total: progress.update(task, completed=done, total=total))
    if json_out:
        _emit_json(summary)
    else:
        info(f"wrote {images} images of {classes} classes to {out} (VOC layout)"
             + (" and video.mp4" if video else "") + f"\nnext: mlic-edge data stats {out}")


@data_app.command("stats", epilog="Example: `mlic-edge data stats voc:data/VOC2007 --split test --json`")
def data_stats(
    data: str = typer.Argument(..., help="Dataset path or voc:/coco:/csv: spec."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to read (default: the train split)."),
    heatmap: Optional[Path] = typer.Option(None, "--heatmap", help="Co-occurrence PNG (default: beside the data, "
                                                                  "DATA/cooccurrence_SPLIT.png)."),
    json_out: bool = JsonOpt,
) -> None:
    """Images, labels per image, per-class counts with head/middle/tail groups, co-occurrence heatmap."""
    from mlic_edge.commands.data import StatsRequest, data_stats as describe, stats_table
    from mlic_edge.console import info, show

    stats = describe(data, StatsRequest(split=split, heatmap=heatmap))
    if json_out:
        _emit_json(stats)
        return
    show(stats_table(stats))
    info(f"{stats['images']} images, {stats['labels_per_image']['mean']:.2f} labels per image; "
         f"co-occurrence heatmap: {stats['heatmap']}")


# --------------------------------------------------------------------------------------------------- models
@app.command("models", epilog="Example: `mlic-edge models --json`")
def models_command(
    classes: int = typer.Option(ModelsRequest.classes, "--classes", help="Label count the figures are computed for "
                                "(COCO: 80)."),
    flops: bool = typer.Option(ModelsRequest.flops, "--flops/--no-flops", help="Count forward FLOPs at each default "
                               "size."),
    json_out: bool = JsonOpt,
) -> None:
    """Every model in the zoo: paper, default backbone and input size, parameters, GFLOPs."""
    from rich.table import Table

    from mlic_edge.commands.models import ModelsRequest, list_zoo
    from mlic_edge.console import progress_bar, show

    with progress_bar(transient=True) as progress:  # only where the cache holds no listing for these versions
        task = progress.add_task("building models to count them (once: cached for the next listing)", total=None,
                                 status="")
        rows = list_zoo(ModelsRequest(classes=classes, flops=flops),
                        progress=lambda name, done, total: progress.update(task, status=name, completed=done,
                                                                           total=total))
    if json_out:
        _emit_json(rows)
        return
    table = Table(title=f"mlic-edge model zoo ({classes} labels)", title_justify="left")
    for column in ("model", "paper", "backbone", "size", "params (M)", "GFLOPs"):
        table.add_column(column, justify="right" if column in ("size", "params (M)", "GFLOPs") else "left")
    for row in rows:
        table.add_row(row["name"], row["paper"], row["default_backbone"], str(row["default_img_size"]),
                      f"{row['params_inference_M']:.1f}", f"{row['GFLOPs']:.1f}" if "GFLOPs" in row else "-")
    table.caption = "params: the exported graph (train-only parts removed); GFLOPs: one forward pass, 2 per MAC"
    show(table)


# --------------------------------------------------------------------------------------------------- train
@app.command(epilog="Examples: `mlic-edge train --data data/synth --recipe quick`, "
                    "`mlic-edge train --model q2l --data coco:COCO2014 --pretrained` (the paper's recipe), "
                    "`mlic-edge train --model baseline --data voc:VOCdevkit/VOC2007 --pretrained --resume`, "
                    "`mlic-edge train --qat --run runs/baseline --epochs 2` (int8 quantization-aware fine-tuning)")
def train(
    model: str = typer.Option("baseline", "--model", "-m", help="Registered model name."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Dataset: a path or voc:/coco:/csv: spec "
                                       "(--qat fine-tunes on the run's own)."),
    recipe: str = typer.Option(TrainConfig.recipe, "--recipe", help="paper (the model's paper's training, see "
                               "`mlic-edge models --json`) or quick (from scratch, small data, minutes on a CPU). "
                               "Every option below left out comes from it."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Any timm model (default: the model's)."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    img_size: Optional[int] = typer.Option(None, "--img-size", help="Input side in pixels."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (the backbone's is scaled as the "
                                       "recipe says)."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="sgd or adamw."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="cosine, step (after a linear warm-up) or "
                                           "onecycle."),
    warmup_epochs: Optional[float] = typer.Option(None, "--warmup-epochs"),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay"),
    grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help="Max gradient norm (0: off)."),
    ema_decay: Optional[float] = typer.Option(None, "--ema-decay", help="EMA of the weights (timm ModelEmaV3), "
                                              "evaluated beside them; the better is kept (0: off)."),
    loss: Optional[str] = typer.Option(None, "--loss", help="bce, softmargin, focal, asl, dbl or dab."),
    loss_kwargs: list[str] = typer.Option([], "--loss-kwargs", help="Loss hyperparameter KEY=VALUE (repeatable), "
                                                                     "e.g. --loss-kwargs gamma_neg=4."),
    model_kwargs: list[str] = typer.Option([], "--model-kwargs", help="Model hyperparameter KEY=VALUE "
                                                                       "(repeatable), e.g. batchformer=false."),
    sampler: str = typer.Option(TrainConfig.sampler, "--sampler", help="random or class-aware (DBL's sampler)."),
    stages: Optional[str] = typer.Option(None, "--stages", help="How a method trained in stages (semdep: backbone, "
                                         "attention, dependency, joint) goes through them: none (end to end), "
                                         "sequential (in turn, epochs split evenly) or concurrent (at once, "
                                         "gradients stopped between them); default: the recipe's (semdep: paper "
                                         "sequential, quick concurrent)."),
    label_vectors: Optional[Path] = typer.Option(None, "--label-vectors", help="Label word vectors for graph "
                                                 "models: GloVe text, .npy + names, .npz or pickle."),
    trust_pickle: bool = TrustPickleOpt,
    resize: str = typer.Option(TrainConfig.resize, "--resize", help="Evaluation resize, used identically by export, "
                               f"parity and the runtime: {', '.join(RESIZE_MODES)}."),
    crop_scale: Optional[float] = typer.Option(None, "--crop-scale", help="Smallest share of the image area a "
                                     "random crop keeps (multi-label: small crops cut labels out)."),
    pretrained: Optional[bool] = typer.Option(TrainConfig.pretrained, "--pretrained/--no-pretrained",
                                              help="Start from the backbone's ImageNet weights (default: the "
                                              "recipe's: paper yes, quick no), from the local Hugging Face cache "
                                              "or downloaded; without network and cache it stops at once."),
    pretrained_file: Optional[Path] = typer.Option(TrainConfig.pretrained_file, "--pretrained-file",
                                                   help="The backbone's ImageNet weights from a file: a timm or "
                                                   "torchvision checkpoint (.pth/.pt) or .safetensors."),
    train_split: Optional[str] = typer.Option(None, "--train-split"),
    eval_split: Optional[str] = typer.Option(None, "--eval-split"),
    val_fraction: float = typer.Option(TrainConfig.val_fraction, "--val-fraction", help="Share of the training "
                                       "split held out before training (chosen from --seed, recorded in run.json): "
                                       "the best epoch, and build's int8 accuracy target, are judged on it; 0: the "
                                       "best epoch is chosen on the eval split."),
    difficult: str = typer.Option(TrainConfig.difficult, "--difficult",
                                  help="VOC difficult objects: ignore, positive, negative."),
    workers: int = typer.Option(TrainConfig.workers, "--workers", help="Data-loading processes."),
    device: str = DeviceOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: runs/MODEL)."),
    resume: bool = typer.Option(TrainConfig.resume, "--resume", help="Continue the run in --out from its last epoch."),
    overwrite: bool = typer.Option(TrainConfig.overwrite, "--overwrite", help="Train afresh into a run that was "
                                   "exported: its old model, exports and reports move to previous/TIME/."),
    seed: int = typer.Option(TrainConfig.seed, "--seed"),
    sync_bn: bool = typer.Option(TrainConfig.sync_bn, "--sync-bn", help="SyncBatchNorm across torchrun's processes "
                                 "(CUDA only)."),
    accumulate: int = typer.Option(TrainConfig.accumulate, "--accumulate", help="Optimizer step every K batches "
                                   "(a K times larger effective batch)."),
    amp: Optional[str] = typer.Option(None, "--amp", help="Mixed precision on CUDA: bf16, fp16 (the CUDA default) or "
                                      "off; CPUs train in float32 (off)."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last", help="NHWC memory "
                                                 "format for the convolutions (default: on CUDA, off on CPUs)."),
    compile_model: bool = typer.Option(TrainConfig.compile, "--compile", help="torch.compile the training step "
                                       "(minutes of compiling first; pays off on long GPU runs)."),
    qat: bool = typer.Option(False, "--qat", help="Quantization-aware fine-tuning of the trained run in --run "
                             "(NVIDIA ModelOpt int8 fake quant, --epochs N at --lr, default the recipe's × 0.01): "
                             "writes its Q/DQ graph as model.int8.onnx, which `build -p int8` then uses."),
    run: Optional[Path] = typer.Option(None, "--run", "-r", help="--qat: the trained run directory."),
    calib_images: int = typer.Option(QatRequest.calib_images, "--calib-images", help="--qat: training images the "
                                     "int8 ranges are calibrated on before fine-tuning."),
    calib_method: str = typer.Option(QatRequest.calib_method, "--calib-method", help="--qat: how the activation "
                                     "ranges are calibrated: percentile (as `build`'s default) or minmax."),
    qat_target: str = typer.Option(QatRequest.target, "--qat-target", help="--qat: fine-tune towards the fp32 "
                                   "model's scores (distill: int8 labels agree with fp32's) or the labels (labels: "
                                   "the run's loss)."),
    json_out: bool = JsonOpt,
) -> None:
    """Train a model and write its run directory (checkpoint.pt, run.json, reports/). Under `torchrun
    --nproc-per-node N -m mlic_edge train ...` it runs as DistributedDataParallel (--batch-size is per process).
    With --qat, fine-tune a trained run with int8 fake quantization instead (`mlic-edge train --qat --run DIR
    --epochs N`)."""
    from mlic_edge.commands.train import train as run_training, training_summary
    from mlic_edge.console import info

    if qat:
        if data is not None:
            raise MlicError("--qat fine-tunes on the dataset the run was trained on; --data is not for it",
                            hint="drop --data")
        _train_qat(QatRequest(run=run, epochs=epochs, lr=lr, calib_images=calib_images, calib_method=calib_method,
                              target=qat_target, batch_size=batch_size, workers=workers, device=device, seed=seed),
                   json_out)
        return
    if run is not None:
        raise MlicError("--run is for --qat; training writes the run given with --out",
                        hint="pass --out DIR (or --qat to fine-tune the run in --run)")
    if data is None:
        raise MlicError("train needs --data", hint="pass --data DATA (a path or voc:/coco:/csv: spec)")
    run_path = out or Path("runs") / model
    config = TrainConfig(model=model, data=data, out=run_path, recipe=recipe, backbone=backbone, epochs=epochs,
                         img_size=img_size, batch_size=batch_size, lr=lr, optimizer=optimizer, schedule=schedule,
                         resize=resize, grad_clip=grad_clip, ema_decay=ema_decay,
                         warmup_epochs=warmup_epochs, weight_decay=weight_decay, loss=loss, crop_scale=crop_scale,
                         loss_options=parse_key_values(loss_kwargs, "--loss-kwargs"),
                         model_options=parse_key_values(model_kwargs, "--model-kwargs"), sampler=sampler,
                         stages=stages,
                         label_vectors=str(label_vectors) if label_vectors else None, trust_pickle=trust_pickle,
                         pretrained=pretrained,
                         pretrained_file=str(pretrained_file) if pretrained_file else None,
                         train_split=train_split, eval_split=eval_split, val_fraction=val_fraction, difficult=difficult,
                         workers=workers,
                         seed=seed, resume=resume, overwrite=overwrite, device=device, sync_bn=sync_bn,
                         accumulate=accumulate, amp=amp, channels_last=channels_last, compile=compile_model)
    result = run_training(config)
    if json_out:
        _emit_json(result)
    else:
        info(f"{training_summary(result)}; run: {run_path}\nnext: mlic-edge export --run {run_path}")


def _train_qat(request: QatRequest, json_out: bool) -> None:
    from mlic_edge.commands.train import train_qat

    section = train_qat(request)  # an incomplete request (no --run, no --epochs) is refused there, in one line
    run = request.run
    if json_out:
        _emit_json(section)
    else:
        from mlic_edge.console import info
        from mlic_edge.spec import rebuild_command

        info(f"report: {run / 'reports' / 'qat.md'}\nnext: {rebuild_command(run, 'int8', 'tensorrt')}")


# --------------------------------------------------------------------------------------------------- import
@app.command("import", epilog="Examples: `mlic-edge import ml-gcn voc_checkpoint.pth.tar --out runs/mlgcn-voc --data "
                              "voc:VOCdevkit/VOC2007 --paper-map 94.0`, `mlic-edge import q2l Q2L-R101-448/checkpoint.pkl "
                              "--config Q2L-R101-448/config_new.json --labels coco --out runs/q2l --data coco:COCO2014`, "
                              "`mlic-edge import msrn coco_checkpoint.pth.tar --labels coco --out runs/msrn-coco`; then "
                              "`mlic-edge export`, `build`, `parity` as for a trained run")
def import_command(
    format: str = typer.Argument(..., help="ml-gcn, q2l or msrn: whose released checkpoint this is."),
    checkpoint: Path = typer.Argument(..., help="The checkpoint file as downloaded (e.g. voc_checkpoint.pth.tar)."),
    out: Path = typer.Option(..., "--out", "-o", help="The run directory to write."),
    labels: Optional[str] = typer.Option(None, "--labels", help="voc, coco or a file with one class name per line, "
                                         "in the checkpoint's order (default: from the class count)."),
    word_vectors: Optional[Path] = typer.Option(None, "--word-vectors", help="Label vectors (the official "
                                                "*_glove_word2vec.pkl; default: the shipped GloVe vectors)."),
    adjacency: Optional[Path] = typer.Option(None, "--adjacency", help="The official co-occurrence pickle "
                                             "(*_adj.pkl; default: the shipped VOC/COCO counts)."),
    img_size: Optional[int] = typer.Option(None, "--img-size", help="Input side in pixels (default: the paper's)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Query2Label's config_new.json."),
    data: Optional[str] = DataOpt,
    paper_map: Optional[float] = typer.Option(None, "--paper-map", help="The mAP (percent) the paper reports for "
                                              "this file, kept in run.json beside what eval measures."),
    trust_pickle: bool = TrustPickleOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Move an exported model already in --out to previous/."),
    json_out: bool = JsonOpt,
) -> None:
    """Import a paper's released checkpoint (ML-GCN, Query2Label, MSRN) as a run directory."""
    from mlic_edge.commands.import_official import ImportRequest, import_official
    from mlic_edge.console import info
    from mlic_edge.rundir import RunDir

    summary = import_official(RunDir(out), ImportRequest(
        format=format, checkpoint=checkpoint, labels=labels, word_vectors=word_vectors, adjacency=adjacency,
        img_size=img_size, config=config, data=data, paper_map=paper_map, trust_pickle=trust_pickle,
        overwrite=overwrite))
    if json_out:
        _emit_json(summary)
        return
    for note in summary["notes"]:
        info(note)
    if summary["ignored_tensors"]:
        info(f"not loaded (the official model never uses them): {', '.join(summary['ignored_tensors'])}")
    info(f"imported {format} {checkpoint} ({summary['classes']} classes, {summary['backbone']}, "
         f"{summary['img_size']} px) into {out}\nnext: mlic-edge export --run {out}"
         + ("" if data else " --data DATA"))


# --------------------------------------------------------------------------------------------------- eval
@app.command("eval", epilog="Example: `mlic-edge eval --run runs/baseline --json`")
def evaluate(
    run: Optional[Path] = RunOpt,
    model: Optional[str] = ModelNameOpt,
    data: Optional[str] = DataOpt,
    split: Optional[str] = typer.Option(None, "--split", help="Eval split (default: the run's)."),
    threshold: float = typer.Option(EvalRequest.threshold, "--threshold", help="Score threshold for "
                                    "CP/CR/CF1/OP/OR/OF1."),
    ap_mode: str = typer.Option(EvalRequest.ap_mode, "--ap", help="standard (= scikit-learn) or voc07 (11-point)."),
    batch_size: int = typer.Option(EvalRequest.batch_size, "--batch-size"),
    device: str = DeviceOpt,
    save_scores: Optional[Path] = typer.Option(None, "--save-scores", help="Write scores/targets/labels to .npz."),
    json_out: bool = JsonOpt,
) -> None:
    """Evaluate the PyTorch checkpoint: mAP, CP, CR, CF1, OP, OR, OF1 (+ top-3), head/middle/tail mAP."""
    from mlic_edge.commands.evaluate import EvalRequest, evaluate as run_evaluation
    from mlic_edge.console import show

    report = run_evaluation(_run_dir(run, model), EvalRequest(
        data=data, split=split, threshold=threshold, ap_mode=ap_mode, batch_size=batch_size, device=device,
        save_scores=save_scores))
    if json_out:
        _emit_json(report)
        return
    show(_metrics_table(report))


def _metrics_table(report: dict):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"{report['data']} [{report['split']}], {report['num_images']} images "
                               f"({report['backend']}, {report['device']})"), title_justify="left")
    table.add_column("")
    for column in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"):
        table.add_column(column, justify="right")

    def pct(value):
        return "-" if value is None else f"{value * 100:.2f}"

    keys = ("CP", "CR", "CF1", "OP", "OR", "OF1")
    table.add_row(f"score >= {report['threshold']}", pct(report["mAP"]), *[pct(report[key]) for key in keys])
    for name, value in report.items():
        if name.startswith("top") and isinstance(value, dict):
            table.add_row(f"{name[:3]}-{name[3:]}", "", *[pct(value[key]) for key in keys])
    groups = report.get("groups")
    if groups:
        table.caption = "mAP head/middle/tail: " + " / ".join(pct(groups.get(k)) for k in ("head", "middle", "tail"))
    return table


# --------------------------------------------------------------------------------------------------- export
export_app = typer.Typer(help="Export model.onnx (and reference.npz); `export triton` / `export deepstream` write "
                              "serving configs.", rich_markup_mode="markdown", invoke_without_command=True)
app.add_typer(export_app, name="export")


@export_app.callback(epilog="Examples: `mlic-edge export --run runs/baseline`, "
                            "`mlic-edge export triton -m baseline model_repository/`")
def export(
    ctx: typer.Context,
    run: Optional[Path] = RunOpt,
    model: Optional[str] = ModelNameOpt,
    opset: int = typer.Option(ExportRequest.opset, "--opset", help="ONNX opset (17 = newest TensorRT 8.6 parses)."),
    simplify: bool = typer.Option(ExportRequest.simplify, "--simplify/--no-simplify", help="Run onnxsim."),
    dynamo: bool = typer.Option(ExportRequest.dynamo, "--dynamo/--no-dynamo", help="Use torch.export (opset >= 18)."),
    reference: bool = typer.Option(ExportRequest.reference, "--reference/--no-reference",
                                   help="Write reference.npz (PyTorch scores on the eval split)."),
    uint8_input: bool = typer.Option(ExportRequest.uint8_input, "--uint8-input",
                                     help="Fold the normalisation into the graph: the model takes resized uint8 NHWC "
                                          "BGR frames (they go to the GPU as captured)."),
    data: Optional[str] = DataOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Export model.onnx (dynamic batch, simplified, metadata), check it against PyTorch, write reference.npz.

    With a subcommand (triton, deepstream), write that serving configuration instead."""
    if ctx.invoked_subcommand is not None:
        return
    from mlic_edge.commands.export import ExportRequest, export as run_export
    from mlic_edge.console import info

    run_dir = _run_dir(run, model)
    summary = run_export(run_dir, ExportRequest(opset=opset, simplify=simplify, dynamo=dynamo, reference=reference,
                                                uint8_input=uint8_input, data=data))
    if json_out:
        _emit_json(summary)
    else:
        info(f"wrote {summary['onnx']} (opset {summary['opset']}); max |PyTorch - ONNX Runtime| on "
             f"{summary['check_images']} images: {summary['max_abs_diff']:.2e}\n"
             f"next: mlic-edge parity --run {run_dir.path}")


# --------------------------------------------------------------------------------------------------- build
@app.command(epilog="Examples: `mlic-edge build -m msrn -p int8` (ONNX Runtime: model.int8.onnx for TensorRT and "
                    "model.int8.cpu.onnx for CPUs), "
                    "`mlic-edge build -m msrn -p fp16 -b tensorrt --batch 1,4,8 --workspace 2048`, "
                    "`mlic-edge build -r runs/msrn -p int8 -b tensorrt --dla-core 0` (Jetson DLA, GPU fallback)")
def build(
    run: Optional[Path] = RunOpt,
    model: Optional[str] = ModelNameOpt,
    precision: str = precision_option(what="fp16: mixed, fp32 IO; int8: explicit Q/DQ from calibration data"),
    backend: str = BuildBackendOpt,
    calib_data: Optional[str] = typer.Option(None, "--calib-data", help="Calibration images: a dataset path or "
                                             "voc:/coco:/csv: spec (default: the run's training split)."),
    calib_images: int = typer.Option(BuildRequest.calib_images, "--calib-images",
                                     help="Calibration images to use (every class covered first)."),
    calib_method: str = typer.Option(BuildRequest.calib_method, "--calib-method",
                                     help="percentile (99.999 %), minmax or entropy (KL), for post-training and the "
                                          "fine-tuning's activation ranges; benchmarks/results/precision.md compares "
                                          "them."),
    keep_fp: list[str] = typer.Option([], "--keep-fp", help="Node to keep in higher precision (repeatable; the "
                                      "build report names the most sensitive)."),
    target_delta: float = typer.Option(BuildRequest.target_delta, "--target-delta", help="int8 (TensorRT's Q/DQ "
                                       "graph): largest |ΔmAP| in points against fp32 on the run's validation "
                                       "images; layers are kept in float, then fine-tuned, until it holds."),
    target_agreement: float = typer.Option(BuildRequest.target_agreement, "--target-agreement", help="int8: "
                                           "smallest share of validation images with fp32's label set (asked with "
                                           "two standard errors of margin for the sample)."),
    cpu_target_delta: float = typer.Option(BuildRequest.cpu_target_delta, "--cpu-target-delta", help="int8, "
                                           "ONNX Runtime's CPU graph: largest |ΔmAP| in points."),
    cpu_target_agreement: float = typer.Option(BuildRequest.cpu_target_agreement, "--cpu-target-agreement",
                                               help="int8, ONNX Runtime's CPU graph: smallest share of identical "
                                                    "label sets."),
    max_fp_layers: Optional[int] = typer.Option(None, "--max-fp-layers", help="int8: most layers the accuracy "
                                                "search keeps in float (default: 30 % of the quantized ones; 0: "
                                                "none, the target is only measured; --qat-epochs still applies)."),
    judge_mix: str = typer.Option(BuildRequest.judge_mix, "--judge-mix", help="int8: eval weighs the validation "
                                  "images that judge the target to the eval split's class mix (its labels only: a "
                                  "long-tailed training split leaves few tail images to judge by); drawn takes "
                                  "them as drawn."),
    qat_epochs: int = typer.Option(BuildRequest.qat_epochs, "--qat-epochs", help="int8: when post-training "
                                   "quantization misses the target, fine-tune this many epochs with quantization-"
                                   "aware distillation (needs the checkpoint, the training data and ModelOpt; 0: "
                                   "never)."),
    batch: Optional[str] = BatchRangeOpt,
    workspace: Optional[int] = typer.Option(None, "--workspace", help="Builder workspace limit in MB."),
    dla_core: Optional[int] = typer.Option(None, "--dla-core", help="Build for this DLA core, GPU fallback "
                                           "(Jetson)."),
    version_compatible: bool = typer.Option(False, "--version-compatible", help="Engine loadable by later "
                                            "TensorRT versions (where supported)."),
    hardware_compatibility: Optional[str] = typer.Option(None, "--hardware-compatibility",
                                                         help="Engine portable across GPUs: ampere+ (TensorRT "
                                                              "8.6+) or same-compute-capability (10.9+); refused "
                                                              "where this TensorRT lacks the level."),
    evaluate: bool = typer.Option(BuildRequest.evaluate, "--evaluate/--no-evaluate",
                                  help="Measure the precision's mAP against fp32 with ONNX Runtime (needs "
                                       "reference.npz and the eval images)."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Unpack this bundle (from `mlic-edge pack`) into "
                                          "--out and build there: the device side of a deployment."),
    bundle_out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where --bundle unpacks (default: "
                                              "runs/NAME)."),
    requantize: bool = typer.Option(False, "--requantize", help="A bundle's run: make the precision's ONNX here "
                                    "from model.onnx instead of deploying the graph the bundle shipped (verified "
                                    "on the workstation; the default, checked by sha256)."),
    json_out: bool = JsonOpt,
) -> None:
    """Make the precision's ONNX (fp16 / int8 with calibration) and a TensorRT engine; report sizes and mAP. On a
    bundle's run, the graphs it shipped are deployed byte for byte (engines are built from them)."""
    from mlic_edge.console import info, progress_bar
    from mlic_edge.commands.build import BuildRequest, build as run_build, parse_batch, unpack_to_build

    request = BuildRequest(precision=precision, backend=backend, calib_data=calib_data, calib_images=calib_images,
                           calib_method=calib_method, keep_fp=list(keep_fp), target_delta=target_delta,
                           target_agreement=target_agreement, cpu_target_delta=cpu_target_delta,
                           cpu_target_agreement=cpu_target_agreement, max_fp_layers=max_fp_layers,
                           judge_mix=judge_mix, qat_epochs=qat_epochs, batch=parse_batch(batch) if batch else None,
                           workspace_mb=workspace, dla_core=dla_core, version_compatible=version_compatible,
                           hardware_compatibility=hardware_compatibility, evaluate=evaluate,
                           requantize=requantize)
    if bundle is not None:
        if run or model:
            raise MlicError("--bundle unpacks into its own run directory", hint="use --out DIR, not --run/--model")
        run_dir = unpack_to_build(bundle, request, bundle_out)
        info(f"unpacked {bundle} into {run_dir.path} (every file's sha256 checked)")
    elif bundle_out is not None:
        raise MlicError("--out is where --bundle unpacks", hint="pass --bundle FILE, or --run DIR to build a run")
    else:
        run_dir = _run_dir(run, model)
    run_dir.read()  # a missing run is one line, before any progress display
    with progress_bar(transient=True) as progress:
        tasks: dict[str, int] = {}

        def advance(what: str, done: int, total: int) -> None:
            step = what.split(":")[0]  # one bar per step (fp16, int8, engine, mAP ...), its text updated
            if step not in tasks:
                tasks[step] = progress.add_task(what, total=total or None, status="")
            progress.update(tasks[step], description=what, completed=done, total=total or None)

        entry = run_build(run_dir, request, progress=advance)
    if json_out:
        _emit_json(entry)
        return
    produced = entry["engine"]["path"] if "engine" in entry else entry["onnx"][precision]["file"]
    accuracy = entry.get("accuracy")
    summary = f"built {run_dir.path / produced} in {entry['seconds']:.1f} s"
    if accuracy:
        summary += (f"; ONNX Runtime mAP {accuracy[f'mAP_{precision}'] * 100:.2f} vs fp32 "
                    f"{accuracy['mAP_fp32'] * 100:.2f} ({accuracy['delta_mAP_vs_fp32'] * 100:+.2f} points)")
    if "int8.cpu" in entry["onnx"]:
        cpu_accuracy = (accuracy or {}).get("cpu_graph")
        summary += f"\nbuilt {run_dir.onnx('int8', 'cpu')} (ONNX Runtime on CPUs)" + (
            f"; mAP {cpu_accuracy['mAP_int8'] * 100:.2f} ({cpu_accuracy['delta_mAP_vs_fp32'] * 100:+.2f} points)"
            if cpu_accuracy else "")
    info(summary + f"\nreport: {run_dir.reports / 'build.md'}\nnext: mlic-edge parity --run {run_dir.path}")


# --------------------------------------------------------------------------------------------------- run
@app.command("run", epilog="Examples: `mlic-edge run camera0 -m baseline --smoothing 0.8 --only-changes`, "
                           "`mlic-edge run photos/ -r runs/baseline --batch 8 --out preds.jsonl --csv preds.csv`, "
                           "`mlic-edge run rtsp://cam.local/stream -m msrn -b tensorrt -p int8 --stats-every 10`, "
                           "`mlic-edge run clip.mp4 -m baseline --save-video labelled.mp4`, `mlic-edge run csi://0 -m msrn`, "
                           "four cameras batched on one engine: `mlic-edge run door=rtsp://cam1/s gate=rtsp://cam2/s "
                           "csi://0 csi://1 -m msrn -b tensorrt -p int8 --batch-timeout 20 --out 'out/{stream}.jsonl'`")
def run_command(
    source: Optional[list[str]] = typer.Argument(None, help="camera0 | 0 | /dev/videoN | v4l2:// | csi://N | rtsp:// | "
                                                 "http(s):// | rtp:// | gst:PIPELINE | video file | image | folder | "
                                                 "glob | list.txt; several run as streams batched together, "
                                                 "NAME=SOURCE names one."),
    sources_file: Optional[Path] = typer.Option(None, "--sources", help="A file of sources, one per line "
                                                "(NAME=SOURCE allowed, # comments), after any SOURCE given."),
    run: Optional[Path] = RunOpt,
    model: Optional[str] = ModelNameOpt,
    backend: str = BackendOpt,
    precision: str = PrecisionOpt,
    device: str = DeviceOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="JSON lines file (default: stdout); with several "
                                       "streams, {stream} in the path gives one file per stream, else records name "
                                       "their stream."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Also write a CSV (one row per record; {stream} as "
                                           "for --out)."),
    append: bool = typer.Option(False, "--append", help="Append to --out/--csv instead of replacing them (services: "
                                "restarts keep earlier records, logrotate's copytruncate stays safe)."),
    save_video: Optional[Path] = typer.Option(None, "--save-video", help="Write frames with labels drawn (.mp4; "
                                              "several streams: a path with {stream})."),
    show: bool = typer.Option(False, "--show", help="Show frames with labels in a window (q or Esc stops)."),
    threshold: float = typer.Option(PredictRequest.threshold, "--threshold", help="Report labels with score >= "
                                    "this."),
    thresholds: Optional[Path] = typer.Option(None, "--thresholds", help="Per-class thresholds: JSON "
                                              "{label: t} or CSV label,threshold (others use --threshold)."),
    top_k: int = typer.Option(PredictRequest.top_k, "--top-k", help="Also report the K best labels."),
    smoothing: float = typer.Option(PredictRequest.smoothing, "--smoothing",
                                    help="EMA of scores across frames of a video or live source, 0 (off) to <1: "
                                         "s = A*s + (1-A)*x, so labels don't flicker."),
    only_changes: bool = typer.Option(False, "--only-changes", help="Emit a record only when the label set "
                                      "changes."),
    batch: int = typer.Option(PredictRequest.batch, "--batch", "--batch-size",
                              help="Images per inference, at least one per stream (a live stream gives its newest "
                                   "frame), within the engine's batch range."),
    batch_timeout: float = typer.Option(PredictRequest.batch_timeout_ms, "--batch-timeout", help="Milliseconds a "
                                        "batch may wait for the other streams' frames (0: it takes what queued "
                                        "while inference was busy)."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", help="Stop after N frames/images (per stream)."),
    width: Optional[int] = typer.Option(None, "--width", help="Capture width (cameras, CSI)."),
    height: Optional[int] = typer.Option(None, "--height", help="Capture height (cameras, CSI)."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Capture frame rate (cameras, CSI)."),
    max_reconnects: int = typer.Option(PredictRequest.max_reconnects, "--max-reconnects",
                                       help="Reconnect a dropped stream this many times."),
    stats_every: Optional[float] = typer.Option(None, "--stats-every", help="Print a latency line every N s."),
    stats_json: Optional[Path] = typer.Option(None, "--stats-json", help="Write the latency summary as JSON."),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", help="TensorRT: replay a captured CUDA graph per batch "
                                    "size (less CPU per frame; needs cuda-python)."),
    threads: Optional[int] = ThreadsOpt,
    fp16_fallback: bool = Fp16FallbackOpt,
    scores: bool = typer.Option(False, "--scores", help="Write every label's score in each record (\"scores\", in "
                                "label order)."),
    json_out: bool = typer.Option(False, "--json", help="End stdout with the latency summary as one JSON line (after "
                                                        "the records unless --out is given)."),
) -> None:
    """Run a model over a source, or several batched together: one JSON line per image/frame on stdout (or --out),
    latency per stage at the end (and per stream).

    stdout carries only JSON: the records (without --out) and, with --json, the summary as the last line (it has no
    "labels"); everything for people (what runs, the latency table) goes to stderr. A stream that fails ends alone:
    the others run on, and the exit status is 2 if any stream ended in error."""
    import threading

    from mlic_edge.commands.predict import (PredictOutputs, PredictRequest, parse_sources, predict_to_outputs,
                                            require_streams_ok, summary_tables)
    from mlic_edge.console import info, show as show_table  # "show" is the --show option here
    from mlic_edge.stops import finish_on_signals

    request = PredictRequest(backend=backend, precision=precision, device=device, batch=batch,
                             batch_timeout_ms=batch_timeout, threshold=threshold, thresholds=thresholds, top_k=top_k,
                             smoothing=smoothing, only_changes=only_changes, all_scores=scores,
                             max_frames=max_frames, width=width, height=height, fps=fps,
                             max_reconnects=max_reconnects, cuda_graph=cuda_graph, threads=threads,
                             fp16_fallback=fp16_fallback)
    request.check()
    streams = parse_sources(source or [], sources_file)
    if stats_every is not None:
        require_seconds("--stats-every", stats_every)
    run_dir = _run_dir(run, model)
    outputs = PredictOutputs(out=out, csv=csv_out, save_video=save_video, stats_json=stats_json, append=append,
                             show=show)
    stop = threading.Event()

    def opened(pairs, classifier):
        budget = classifier.backend.thread_budget
        what = (f"{pairs[0][1].kind} {pairs[0][0].source}" if len(streams) == 1 else
                f"{len(pairs)} streams ({', '.join(f'{stream.name}: {frames.kind}' for stream, frames in pairs)})")
        info(f"{what} → {classifier.info.describe()}" + (f"; {budget.describe()}" if budget is not None else ""))

    with finish_on_signals(stop) as signalled:
        summary = predict_to_outputs(run_dir, streams, request, outputs, on_open=opened, stop=stop,
                                     stats_every=stats_every, on_stats=info)
    for table in summary_tables(summary):
        show_table(table, stderr=True)
    if json_out:
        sys.stdout.write(json.dumps(summary) + "\n")
    if summary["stopped"] and not signalled:
        info("stopped on request; every output was flushed and closed")
    if out:
        info(f"wrote {summary['records']} records to {out}")
    for path in (csv_out, save_video):
        if path:
            info(f"wrote {path}")
    if signalled:  # the exit status tells a partial output from a complete one
        raise Interrupted(signalled[0], note=f"stopped early after {summary['frames']} frame(s); every output was "
                                             "flushed and closed and ends with a whole record")
    require_streams_ok(summary)


# --------------------------------------------------------------------------------------------------- bench
@app.command(epilog="Examples: `mlic-edge bench -m baseline --batch 1,4,8`, "
                    "`mlic-edge bench -m baseline --threads 1 --rounds 7` (another thread split, more rounds), "
                    "`mlic-edge bench -r runs/msrn -b tensorrt -p int8 --iterations 500 --json`")
def bench(
    run: Optional[Path] = RunOpt,
    model: Optional[str] = ModelNameOpt,
    backend: str = BackendOpt,
    precision: str = PrecisionOpt,
    device: str = DeviceOpt,
    batch: str = BatchesOpt,
    iterations: int = typer.Option(BenchRequest.iterations, "--iterations",
                                   help="Timed inferences per batch size (backend alone)."),
    warmup: int = typer.Option(BenchRequest.warmup, "--warmup", help="Untimed inferences first."),
    frames: int = typer.Option(BenchRequest.frames, "--frames",
                               help="Frames of the generated video for the pipeline run."),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", help="TensorRT: replay a captured CUDA graph per batch "
                                    "size."),
    rounds: int = typer.Option(BenchRequest.rounds, "--rounds", help="Interleaved rounds of backend alone, pipeline "
                               "and naive loop (medians and spread over them)."),
    threads: Optional[int] = ThreadsOpt,
    fp16_fallback: bool = Fp16FallbackOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Backend alone (like trtexec), the whole pipeline and a naive loop on a generated video, in interleaved rounds."""
    from mlic_edge.commands.bench import BenchRequest, bench as run_bench
    from mlic_edge.console import info, show
    from mlic_edge.commands.bench import bench_table

    try:
        batches = tuple(int(part) for part in batch.split(","))
    except ValueError:
        batches = ()
    run_dir = _run_dir(run, model)
    report = run_bench(run_dir, BenchRequest(backend=backend, precision=precision, device=device, batches=batches,
                                             iterations=iterations, warmup=warmup, frames=frames,
                                             cuda_graph=cuda_graph, rounds=rounds, threads=threads,
                                             fp16_fallback=fp16_fallback),
                           progress=lambda message: info(message))
    if json_out:
        _emit_json(report)
    else:
        show(bench_table(report))
        info(f"report: {run_dir.reports / 'bench.json'}")


# --------------------------------------------------------------------------------------------------- parity
@app.command(epilog="Examples: `mlic-edge parity -m baseline` (every precision and backend present), "
                    "`mlic-edge parity -r runs/msrn -p int8 --tolerance int8=1.0 --json`")
def parity(
    run: Optional[Path] = RunOpt,
    model: Optional[str] = ModelNameOpt,
    data: Optional[str] = DataOpt,
    backend: list[str] = typer.Option([], "--backend", "-b", help="Backend(s) to check (repeatable; default: "
                                      "ONNX Runtime on every precision's ONNX, and every TensorRT engine built)."),
    precision: list[str] = typer.Option([], "--precision", "-p", help="Precision(s) to check (repeatable; "
                                        "default: every one present)."),
    device: str = DeviceOpt,
    threshold: float = typer.Option(ParityRequest.threshold, "--threshold", help="Threshold for the "
                                    "identical-label-set share."),
    tolerance: list[str] = typer.Option([], "--tolerance", help="Allowed |ΔmAP| in points (a drop, or a gain: "
                                        "both mean another model), PRECISION=POINTS (repeatable; defaults "
                                        f"{per_precision_text(DEFAULT_TOLERANCE_POINTS)}; int8's CPU graph "
                                        f"{CPU_INT8_TARGET_DELTA_POINTS:g}: each int8 graph's build target)."),
    min_same: list[str] = typer.Option([], "--min-same", help="Smallest share of images with the reference's label "
                                       "set, PRECISION=FRACTION (defaults "
                                       f"{per_precision_text(DEFAULT_LABELSET_FLOOR)}; int8's CPU graph "
                                       f"{CPU_INT8_TARGET_AGREEMENT:g})."),
    max_diff: list[str] = typer.Option([], "--max-diff", help="Largest |Δscore| on any image and label, "
                                       "PRECISION=VALUE (defaults "
                                       f"{per_precision_text(DEFAULT_MAX_SCORE_DIFF)}; no limit for the others)."),
    batch_size: int = typer.Option(ParityRequest.batch_size, "--batch-size", help="Images per inference."),
    json_out: bool = JsonOpt,
) -> None:
    """Compare every backend and precision with the PyTorch reference on the eval split; exit 3 past a tolerance.

    Needs only reference.npz and the dataset, not PyTorch: it runs on the device."""
    from mlic_edge.commands.parity import ParityRequest, check_parity, parity as run_parity, parity_table
    from mlic_edge.console import progress_bar, show, warn

    request = ParityRequest(data=data, backends=tuple(backend), precisions=tuple(precision), device=device,
                            threshold=threshold,
                            tolerances=parse_per_precision(tolerance, "--tolerance", "int8=2.0", "POINTS"),
                            labelset_floors=parse_per_precision(min_same, "--min-same", "int8=0.95", "FRACTION",
                                                                upper=1.0),
                            max_score_diffs=parse_per_precision(max_diff, "--max-diff", "fp32=0.001"),
                            batch_size=batch_size)
    run_dir = _run_dir(run, model)
    with progress_bar(transient=True) as progress:
        tasks: dict[str, int] = {}

        def advance(what: str, count: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = progress.add_task(what, total=total, status="")
            progress.advance(tasks[what], count)

        report = run_parity(run_dir, request, progress=advance, on_skip=warn)
    if json_out:
        _emit_json(report)
    else:
        show(parity_table(report))
    check_parity(report)


# --------------------------------------------------------------------------------------------------- pack
@app.command(epilog="Examples: `mlic-edge pack -m msrn` (runs/msrn.mlic.tar.gz), then on the device: "
                    "`mlic-edge build --bundle msrn.mlic.tar.gz -p int8 -b tensorrt`")
def pack(
    run: Optional[Path] = RunOpt,
    model: Optional[str] = ModelNameOpt,
    out: Optional[Path] = typer.Argument(None, help="Bundle file or folder (default: beside the run directory)."),
    images: bool = typer.Option(True, "--images/--no-images", help="Carry the reference's eval images (parity on "
                                "a device without the dataset)."),
    json_out: bool = JsonOpt,
) -> None:
    """One archive with what a device needs: ONNX files, calibration record, reference.npz (+ images), labels,
    preprocessing, and a manifest of sha256 hashes. No checkpoints, no engines (they are built on the device)."""
    from mlic_edge.commands.pack import pack as make_bundle
    from mlic_edge.console import info, progress_bar
    from mlic_edge.commands.parity import figures_text

    with progress_bar(transient=True) as progress:
        task = progress.add_task("pack", total=None, status="")
        result = make_bundle(_run_dir(run, model), out, images=images,
                             progress=lambda what, done, total: progress.update(task, description=what,
                                                                                completed=done, total=total or None))
    path, manifest = Path(result["bundle"]), result
    if json_out:
        _emit_json(result)
        return
    for name, graph in manifest["graphs"].items():
        figures = "; ".join(f"{r['backend']}/{r['device']} {figures_text(r)}, {'PASS' if r['passed'] else 'FAIL'}"
                            for r in graph["workstation_parity"]) or "no parity measured"
        info(f"{name} (sha256 {graph['sha256'][:12]}…): {figures}")
    info(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB: {', '.join(manifest['precisions'])}); on the device: "
         f"mlic-edge build --bundle {path.name} --precision {manifest['precisions'][-1]} --backend auto, then "
         f"mlic-edge parity and mlic-edge bench (reports/deploy.md says what held there)")


# --------------------------------------------------------------------------------------------------- export triton
@export_app.command("triton", epilog="Examples: `mlic-edge export triton -m msrn model_repository/`, "
                                     "`mlic-edge export triton -m msrn repo/ -p int8 --platform tensorrt`, "
                                     "`mlic-edge export triton -m msrn repo/ --streams 4 --batch-timeout 2`")
def export_triton(
    out: Path = typer.Argument(..., help="Model repository folder (the model goes in OUT/NAME/)."),
    run: Optional[Path] = RunOpt,
    model: Optional[str] = ModelNameOpt,
    precision: str = precision_option(TritonRequest.precision, "the model served"),
    platform: str = typer.Option(TritonRequest.platform, "--platform", help="onnx (ONNX Runtime backend) or tensorrt "
                                 "(the engine built for the serving GPU)."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name (default: RUN_PRECISION_PLATFORM)."),
    max_batch: Optional[int] = typer.Option(TritonRequest.max_batch, "--max-batch", help="max_batch_size (default "
                                            "8, or --streams if more; TensorRT: the engine's profile max).",
                                            show_default=False),
    preferred: Optional[str] = typer.Option(TritonRequest.preferred, "--preferred", help="Dynamic batching preferred "
                                            "sizes, e.g. 4,8 (default: --streams; with one stream 4,8).",
                                            show_default=False),
    streams: int = streams_option(TritonRequest.streams, "the preferred batch, and max_batch_size at least this"),
    batch_timeout: float = batch_timeout_option(TritonRequest.batch_timeout_ms, "max_queue_delay_microseconds (0: "
                                                "batches of what queued while the model was busy)"),
    instances: int = typer.Option(TritonRequest.instances, "--instances", help="Model instances."),
    instance_kind: str = typer.Option(TritonRequest.instance_kind, "--instance-kind", help="gpu or cpu (onnx only): "
                                      "instance_group kind."),
    engine: Optional[Path] = typer.Option(None, "--engine", help="Engine to serve (default: the run's, by "
                                          "precision)."),
) -> None:
    """A Triton Inference Server model repository: config.pbtxt (inputs, outputs, dynamic batching), version
    folder with the ONNX or engine, labels file."""
    from mlic_edge.commands.serving import export_triton as write_repository
    from mlic_edge.console import info

    request = TritonRequest(precision=precision, platform=platform, name=name, max_batch=max_batch,
                            preferred=None if preferred is None else tuple(split_items("--preferred", preferred, int)),
                            streams=streams, batch_timeout_ms=batch_timeout, instances=instances,
                            instance_kind=instance_kind, engine=engine)
    path = write_repository(_run_dir(run, model), out, request)
    info(f"wrote {path}; serve with: tritonserver --model-repository {out}")


@export_app.command("deepstream", epilog="Examples: `mlic-edge export deepstream -m msrn ds/` (secondary "
                                         "classifier), `mlic-edge export deepstream -m msrn ds/ --mode primary "
                                         "--streams 4` (four cameras batched)")
def export_deepstream(
    out: Path = typer.Argument(..., help="Folder for the nvinfer config, labels and model."),
    run: Optional[Path] = RunOpt,
    model: Optional[str] = ModelNameOpt,
    precision: str = precision_option(DeepStreamRequest.precision, "the model served"),
    mode: str = typer.Option(DeepStreamRequest.mode, "--mode", help="secondary (on detector objects) or primary "
                             "(frames)."),
    engine: Optional[Path] = typer.Option(None, "--engine", help="Also point nvinfer at this engine."),
    gie_id: int = typer.Option(DeepStreamRequest.gie_id, "--gie-id", help="gie-unique-id."),
    operate_on_gie_id: int = typer.Option(DeepStreamRequest.operate_on_gie_id, "--operate-on-gie-id",
                                          help="Detector whose objects are classified."),
    batch_size: Optional[int] = typer.Option(DeepStreamRequest.batch_size, "--batch-size", help="nvinfer batch-size "
                                             "(default --streams; a secondary classifier's counts objects).",
                                             show_default=False),
    streams: int = streams_option(DeepStreamRequest.streams, "nvstreammux batch-size and a primary classifier's "
                                  "nvinfer batch-size"),
    batch_timeout: float = batch_timeout_option(DeepStreamRequest.batch_timeout_ms, "nvstreammux batched-push-timeout "
                                                "(0: 40 ms, DeepStream samples' value, as nvstreammux's 0 would not "
                                                "batch streams)"),
    threshold: float = typer.Option(DeepStreamRequest.threshold, "--threshold", help="classifier-threshold."),
) -> None:
    """A DeepStream nvinfer configuration for a primary or secondary multi-label classifier, and the deepstream-app
    groups (nvstreammux, the GIE) that run it on --streams sources."""
    from mlic_edge.commands.serving import export_deepstream as write_config
    from mlic_edge.console import info
    from mlic_edge.commands.serving import deepstream_app_name

    path = write_config(_run_dir(run, model), out, DeepStreamRequest(
        precision=precision, mode=mode, engine=engine, gie_id=gie_id, operate_on_gie_id=operate_on_gie_id,
        batch_size=batch_size, streams=streams, batch_timeout_ms=batch_timeout, threshold=threshold))
    info(f"wrote {path} and {path.parent / deepstream_app_name(mode)} (the muxer and GIE groups for deepstream-app)")


# --------------------------------------------------------------------------------------------------- doctor
@app.command(epilog="Examples: `mlic-edge doctor`, `mlic-edge doctor -r runs/msrn --json`")
def doctor(
    run: Optional[Path] = RunOpt,
    model: Optional[str] = ModelNameOpt,
    json_out: bool = JsonOpt,
) -> None:
    """What this machine can run: Jetson/L4T, GPU, CUDA, TensorRT, ONNX Runtime, DLA, cameras, disk — each ok / warn
    / fail with the fix. Exit 1 when a check fails."""
    from mlic_edge.commands.doctor import doctor as run_doctor
    from mlic_edge.console import show
    from mlic_edge.commands.doctor import doctor_table

    checks, summary = run_doctor(_run_dir(run, model).path if (run or model) else None)
    if json_out:
        _emit_json(summary)
    else:
        show(doctor_table(checks))
    if any(check.status == "fail" for check in checks):
        raise typer.Exit(EXIT_CHECK_FAILED)


# --------------------------------------------------------------------------------------------------- service
service_app = typer.Typer(help="Run `mlic-edge run` as a systemd service (restart on failure, JSONL with rotation, "
                               "stats in the journal).", no_args_is_help=True, rich_markup_mode="markdown")
app.add_typer(service_app, name="service")


@service_app.command("install", epilog="Examples: `sudo mlic-edge service install -m msrn --source csi://0 -b tensorrt "
                                       "-p int8`, `sudo mlic-edge service install -m msrn --source "
                                       "door=rtsp://cam1/live --source yard=rtsp://cam2/live` (one run, a file per "
                                       "stream), `mlic-edge service install -m msrn --print` (write the unit yourself)")
def service_install(
    run: Optional[Path] = RunOpt,
    model: Optional[str] = ModelNameOpt,
    source: list[str] = typer.Option(list(ServiceRequest.sources), "--source", metavar="SOURCE", help="What `run` "
                                     "reads (camera0, csi://0, rtsp://...); repeat it for several streams, batched in "
                                     "one run, each in OUT_DIR/STREAM.jsonl (NAME=SOURCE names one)."),
    backend: str = BackendOpt,
    precision: str = precision_option(ServiceRequest.precision, "what the service runs"),
    out_dir: Path = typer.Option(ServiceRequest.out_dir, "--out-dir", help="Folder of predictions.jsonl (several "
                                 "sources: a file per stream)."),
    name: str = typer.Option(ServiceRequest.name, "--name", help="systemd unit name."),
    user: Optional[str] = typer.Option(None, "--user", help="Run as this user (default: $SUDO_USER, else root)."),
    stats_every: float = typer.Option(ServiceRequest.stats_every, "--stats-every", help="Latency line in the journal "
                                      "every N s."),
    rotate_mb: int = typer.Option(ServiceRequest.rotate_mb, "--rotate-mb", help="Rotate predictions.jsonl at this "
                                  "size."),
    keep: int = typer.Option(ServiceRequest.keep, "--keep", help="Rotated files to keep."),
    threshold: Optional[float] = typer.Option(None, "--threshold"),
    thresholds: Optional[Path] = typer.Option(None, "--thresholds"),
    smoothing: Optional[float] = typer.Option(None, "--smoothing"),
    only_changes: bool = typer.Option(False, "--only-changes"),
    batch_timeout: Optional[float] = batch_timeout_option(ServiceRequest.batch_timeout_ms, "`run --batch-timeout` "
                                                          "(default: run's)"),
    no_logrotate: bool = typer.Option(False, "--no-logrotate", help="Do not install the logrotate rule."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be done; change nothing."),
    print_only: bool = typer.Option(False, "--print", help="Print the unit and logrotate files instead."),
    extra: Optional[list[str]] = typer.Argument(None, help="More `mlic-edge run` options, after --."),
) -> None:
    """Install and start the service (needs root): unit in /etc/systemd/system, rule in /etc/logrotate.d."""
    from mlic_edge.commands.service import install_service
    from mlic_edge.console import info
    from mlic_edge.commands.service import LOGROTATE_DIR

    request = ServiceRequest(sources=tuple(source), backend=backend, precision=precision, out_dir=out_dir, name=name,
                             user=user, stats_every=stats_every, rotate_mb=rotate_mb, keep=keep, threshold=threshold,
                             thresholds=thresholds, smoothing=smoothing, only_changes=only_changes,
                             batch_timeout_ms=batch_timeout, logrotate=not no_logrotate, dry_run=dry_run,
                             print_only=print_only, extra=tuple(extra or ()))
    installed = install_service(_run_dir(run, model), request, on_step=info)
    if print_only:
        sys.stdout.write(installed["unit"] + f"\n# {LOGROTATE_DIR / name}\n" + installed["logrotate"])
    elif not dry_run:
        info(f"started {installed['unit_name']}; follow it with: journalctl -u {name} -f; predictions: "
             f"{installed['predictions']}")


@service_app.command("uninstall", epilog="Example: `sudo mlic-edge service uninstall --name mlic-edge`")
def service_uninstall(
    name: str = typer.Option(UninstallRequest.name, "--name", help="systemd unit name."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be done; change nothing."),
) -> None:
    """Stop and remove the service (predictions are kept)."""
    from mlic_edge.commands.service import uninstall_service
    from mlic_edge.console import info

    uninstall_service(UninstallRequest(name=name, dry_run=dry_run), on_step=info)


# --------------------------------------------------------------------------------------------------- demo
@app.command(epilog="Example: `mlic-edge demo --out demo`")
def demo(
    out: Path = typer.Option(Path("demo"), "--out", "-o", help="Folder for the data and the run."),
    epochs: int = typer.Option(DemoRequest.epochs, "--epochs"),
    backbone: str = typer.Option(DemoRequest.backbone, "--backbone"),
) -> None:
    """Synthetic data → train a small model → export → run over a video → parity and latency tables."""
    from mlic_edge.commands.demo import demo as run_demo

    run_demo(out, DemoRequest(epochs=epochs, backbone=backbone))


if __name__ == "__main__":
    main()
