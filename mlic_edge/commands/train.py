"""`mlic-edge train` as a library: ``TrainConfig`` (mlic_edge/train/config.py) holds the request and its defaults;
training needs PyTorch, imported only when it runs. ``train_qat`` (`mlic-edge train --qat`): quantization-aware
fine-tuning of a trained run (train/qat.py), its Q/DQ graph exported as model.int8.onnx."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlic_edge.train.config import QAT_CALIB_IMAGES, QAT_TARGETS, QAT_WORKERS, TrainConfig
from mlic_edge.spec import DEFAULT_CALIBRATION_METHOD, DEFAULT_DEVICE


def train(config: TrainConfig) -> dict[str, Any]:
    """Train and write the run directory (checkpoint.pt, last.pt, run.json, reports/); the final metrics. Argument
    errors (options out of range, a dataset path that does not exist) are reported before PyTorch is imported."""
    from mlic_edge.data import parse_data_spec

    config.validate()
    if config.model not in zoo_file_names():  # an unknown name: the registry (which needs PyTorch) says so
        from mlic_edge.models import get_model_entry

        get_model_entry(config.model)
    parse_data_spec(config.data)
    check_imagenet_weights(config)
    from mlic_edge.train.trainer import train as run_training

    return run_training(config)


def training_summary(result: dict[str, Any]) -> str:
    """What a training reached, in words: the best epoch's mAP on the split that chose it (the validation split held
    out of training, or the eval split with --val-fraction 0) and, where it differs, the eval split's, scored once."""
    best = f"mAP {result['best_val_mAP'] * 100:.2f} at epoch {result['best_epoch']}"
    if result.get("selected_on") != "validation":
        return f"best val {best} (the eval split chose it)"
    eval_map = result.get("eval_mAP")
    return (f"best validation {best}; eval split "
            + (f"mAP {eval_map * 100:.2f}" if eval_map is not None else "mAP not measured") + " (scored once, at the end)")


def check_imagenet_weights(config: TrainConfig) -> None:
    """Refuse in one line, before PyTorch loads, a run that starts from ImageNet weights that are neither on this
    machine nor downloadable (models/hub.py); the backbone's name and weights repository come from the zoo's listing.
    Passes where a copy may exist or the default backbone is not listed: the trainer's exact lookup then decides."""
    from mlic_edge.commands.models import listed_zoo
    from mlic_edge.models.hub import check_weights_obtainable

    if not config.starts_pretrained() or config.resume or config.pretrained_file is not None:
        return
    backbone, hub_id = config.backbone, None
    if backbone is None:
        row = next((row for row in listed_zoo() or [] if row.get("name") == config.model), None)
        if row is None:
            return
        backbone, hub_id = row["default_backbone"], row.get("default_backbone_weights")
    check_weights_obtainable(backbone, hub_id)


def zoo_file_names() -> set[str]:
    """The model names, known without importing PyTorch: one file per method in mlic_edge/models/zoo/, named as the
    model it registers (tests/test_cli.py checks that they agree)."""
    import mlic_edge

    zoo = Path(mlic_edge.__file__).parent / "models" / "zoo"
    return {path.stem for path in zoo.glob("*.py") if not path.stem.startswith("_")}




@dataclass
class QatRequest:
    """``mlic-edge train --qat``: fine-tune the trained run in ``run`` with int8 fake quantization."""

    run: Path | None  # None only as the CLI parsed it: refused by validate
    epochs: int | None
    lr: float | None = None  # None: the run's recipe lr × 0.01 (train/qat.py's LR_SCALE)
    calib_images: int = QAT_CALIB_IMAGES
    calib_method: str = DEFAULT_CALIBRATION_METHOD  # the activation ranges' (CALIBRATION_METHODS), as build's
    target: str = QAT_TARGETS[0]  # distill (the fp32 model's scores) | labels (the run's loss)
    batch_size: int | None = None  # None: the recipe's
    workers: int = QAT_WORKERS
    device: str = DEFAULT_DEVICE
    seed: int = 0

    def validate(self) -> None:
        from mlic_edge.errors import MlicError

        if self.run is None:
            raise MlicError("--qat fine-tunes a trained run: --run DIR is missing",
                            hint="mlic-edge train --qat --run runs/NAME --epochs 2")
        if self.epochs is None:
            raise MlicError("--qat needs --epochs (a few: about a tenth of the original training)",
                            hint=f"mlic-edge train --qat --run {self.run} --epochs 2")
        for ok, message in ((self.epochs >= 1, "--epochs must be at least 1"),
                            (self.lr is None or self.lr > 0, "--lr must be positive"),
                            (self.calib_images >= 1, "--calib-images must be at least 1"),
                            (self.target in QAT_TARGETS, f"--qat-target must be one of {', '.join(QAT_TARGETS)}"),
                            (self.batch_size is None or self.batch_size >= 1, "--batch-size must be at least 1"),
                            (self.workers >= 0, "--workers must be 0 or more")):
            if not ok:
                raise MlicError(message)


def train_qat(request: QatRequest) -> dict[str, Any]:
    """Quantization-aware fine-tuning of a trained run: model.int8.onnx (the Q/DQ graph, int8_source=qat, from the
    current model.onnx), qat.pt (ModelOpt's state and the fine-tuned weights), run.json's ``qat`` section and
    reports/qat.md, put in place together. ΔmAP is measured as the build measures it (ONNX Runtime CPU, eval split,
    against model.onnx), and so is the post-training int8 graph's when one was in the run. Returns the section."""
    from mlic_edge.commands.qat import export_qat_graph, qat_blocker, record_qat
    from mlic_edge.errors import LineageError
    from mlic_edge.rundir import RunDir

    request.validate()
    run = RunDir(request.run)
    spec = run.spec()  # a missing folder or run.json: one line
    blocker = qat_blocker(run)
    if blocker is not None:
        raise blocker
    run.require_writable()
    from mlic_edge.commands.build import ensure_fp32_onnx, stage_int8_superseded
    from mlic_edge.commands.evaluate import evaluate_or_warn
    from mlic_edge.console import info
    from mlic_edge.export.lineage import check_onnx
    from mlic_edge.export.metadata import read_metadata
    from mlic_edge.train.qat import quantization_aware_finetune

    fp32 = ensure_fp32_onnx(run)
    check_onnx(run, "fp32", spec)
    ptq = None
    if run.onnx("int8").is_file() and read_metadata(run.onnx("int8")).get("int8_source") != "qat":
        try:
            check_onnx(run, "int8", spec)
        except LineageError as error:
            info(f"qat: the post-training {run.onnx('int8').name} is not compared ({error.message})")
        else:
            info(f"qat: measuring the post-training {run.onnx('int8').name} for comparison")
            ptq = evaluate_or_warn(run, "int8", _quiet, run.onnx("int8"))
    result = quantization_aware_finetune(run, request.epochs, request.lr, request.calib_images,
                                         batch_size=request.batch_size, workers=request.workers,
                                         device=request.device, seed=request.seed, target=request.target,
                                         method=request.calib_method)
    with run.transaction() as change:
        dequantized = export_qat_graph(result, spec, fp32, change.path(run.onnx("int8")))
        section = record_qat(run, result, change, dequantized, ptq, by="train --qat")
        stage_int8_superseded(run, change, "train --qat (reports/qat.md)")
    accuracy = section.accuracy

    def measured(figures: dict[str, Any]) -> str:
        return (f"ΔmAP {figures['delta_mAP_vs_fp32'] * 100:+.2f} points vs fp32, "
                f"{figures['labelset_agreement_vs_fp32'] * 100:.1f} % identical label sets")

    info(f"qat: {run.onnx('int8')} ({measured(accuracy) if accuracy else 'ΔmAP not measured'}"
         + (f"; post-training int8: {measured(ptq)}" if ptq else "") + ")")
    return section.to_json()


def _quiet(what: str, done: int, total: int) -> None:
    return None


__all__ = ["QatRequest", "TrainConfig", "check_imagenet_weights", "train", "train_qat", "training_summary",
           "zoo_file_names"]
