"""Quantization-aware fine-tuning as a run records it: the Q/DQ graph exported as model.int8.onnx
(``int8_source=qat``), qat.pt, run.json's ``qat`` section and reports/qat.md. Shared by ``mlic-edge train --qat``
(commands/train.py) and ``build -p int8``, which fine-tunes when post-training int8 misses its target
(commands/build.py); the fine-tuning itself is train/qat.py."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlic_edge.commands.evaluate import evaluate_or_warn

if TYPE_CHECKING:
    from mlic_edge.errors import MlicError
    from mlic_edge.rundir import RunChange, RunDir
    from mlic_edge.spec import QatSection, RunSpec
    from mlic_edge.train.qat import QatResult


def qat_blocker(run: "RunDir") -> "MlicError | None":
    """Why quantization-aware fine-tuning cannot run on ``run`` here (no checkpoint, no ModelOpt); None if it can."""
    from mlic_edge.errors import RunDirError
    from mlic_edge.spec import train_first_hint
    from mlic_edge.train.config import modelopt_missing

    if not run.checkpoint.is_file():
        return RunDirError(f"quantization-aware fine-tuning needs the trained checkpoint, and {run.checkpoint} is "
                           "missing", hint=f"{train_first_hint(run.path)}; then mlic-edge train --qat --run {run.path}")
    if importlib.util.find_spec("modelopt") is None:
        return modelopt_missing()
    return None


def export_qat_graph(result: "QatResult", spec: "RunSpec", fp32: Path, path: Path) -> int:
    """The fine-tuned fake-quantized model as TensorRT's Q/DQ graph at ``path`` (``int8_source=qat``); returns its
    DequantizeLinear count."""
    from mlic_edge.calibration.int8 import TENSORRT_GRAPH
    from mlic_edge.export.onnx_export import write_qdq_onnx

    return write_qdq_onnx(result.model.for_export(), path, spec, fp32, int8_graph=TENSORRT_GRAPH, int8_format="QDQ",
                          int8_source="qat")


def export_fine_tuned_fp32(result: "QatResult", spec: "RunSpec", path: Path) -> None:
    """The fine-tuned weights without their quantizers, as a float ONNX in model.onnx's form: ONNX Runtime's CPU graph
    is quantized from it (calibration/plan.py)."""
    from mlic_edge.export.onnx_export import write_float_onnx
    from mlic_edge.train.qat import without_quantizers

    write_float_onnx(without_quantizers(result.model).for_export(), path, spec)


def record_qat(run: "RunDir", result: "QatResult", change: "RunChange", dequantized: int,
               ptq: dict[str, Any] | None, by: str, evaluate: bool = True) -> "QatSection":
    """Record in ``change`` the quantization-aware graph already staged as model.int8.onnx: qat.pt, run.json's
    ``qat`` section (``by``: the command that fine-tuned) and reports/qat.md, with its accuracy on the eval split
    beside ``ptq``'s (the post-training graph's, when measured; neither with ``evaluate=False``). Returns the
    section."""
    from mlic_edge.spec import QatSection
    from mlic_edge.train.qat import QAT_LIBRARY, library_version, save_qat_state

    save_qat_state(result.model, change.path(run.path / "qat.pt"))
    accuracy = evaluate_or_warn(run, "int8", _quiet, change.path(run.onnx("int8"))) if evaluate else None
    section = QatSection(
        by=by, epochs=result.epochs, lr=result.lr, target=result.target, calib_images=result.calib_images,
        train_images=result.train_images, calibration=f"weights max, activations {result.calib_method}",
        library=QAT_LIBRARY, library_version=library_version(), torch=importlib.metadata.version("torch"),
        quantizers=result.quantizers, dequantize_nodes=dequantized,
        onnx=run.onnx("int8").name, state="qat.pt", device=result.device, seconds=result.seconds,
        history=result.history,
        fake_quant_torch={"images": result.eval_images, "mAP_fp32": result.mAP_fp32,
                          "mAP_calibrated": result.mAP_calibrated, "mAP_qat": result.mAP_qat},
        delta_mAP_vs_fp32=accuracy["delta_mAP_vs_fp32"] if accuracy else None,
        ptq_delta_mAP_vs_fp32=ptq["delta_mAP_vs_fp32"] if ptq else None, accuracy=accuracy, ptq_accuracy=ptq)
    change.path(run.reports / "qat.md").write_text(qat_markdown(section))
    change.update(qat=section)
    return section



QAT_TARGET_WORDS = {"distill": "the fp32 model's scores (distillation)", "labels": "the labels (the run's loss)"}


def qat_markdown(section: "QatSection") -> str:
    """reports/qat.md: what ran and the int8 graph's accuracy beside the post-training one's."""
    torch_side = section.fake_quant_torch or {}
    lines = ["# Quantization-aware fine-tuning", "",
             f"{section.library} {section.library_version} (PyTorch {section.torch}, {section.device}): "
             f"{section.quantizers} int8 quantizers (Conv/Linear inputs and weights), calibrated "
             f"({section.calibration}) on {section.calib_images} training images, then {section.epochs} epoch(s) at lr "
             f"{section.lr:.3g} (cosine to 0) towards {QAT_TARGET_WORDS[section.target or 'labels']}, on "
             f"{'?' if section.train_images is None else section.train_images} training images, run by "
             f"`{section.by or 'train --qat'}`. Graph: {section.onnx} ({section.dequantize_nodes} "
             "DequantizeLinear), state: qat.pt.", "",
             f"PyTorch, fake quant, eval split ({torch_side['images']} images): mAP fp32 "
             f"{torch_side['mAP_fp32'] * 100:.2f}, calibrated {torch_side['mAP_calibrated'] * 100:.2f}, after "
             f"fine-tuning {torch_side['mAP_qat'] * 100:.2f}.", "",
             "| int8 graph | mAP (ONNX Runtime CPU) | Δ vs fp32 (pts) | identical label sets |", "|---|---|---|---|"]
    for name, accuracy in (("quantization-aware (this)", section.accuracy),
                           ("post-training (before)", section.ptq_accuracy)):
        if accuracy:
            lines.append(f"| {name} | {accuracy['mAP_int8'] * 100:.2f} | {accuracy['delta_mAP_vs_fp32'] * 100:+.3f} "
                         f"| {accuracy['labelset_agreement_vs_fp32'] * 100:.1f} % |")
        elif name.startswith("quantization"):
            lines.append(f"| {name} | - | - | - |")
    if section.accuracy:
        lines += ["", f"fp32 mAP {section.accuracy['mAP_fp32'] * 100:.2f} on {section.accuracy['images']} "
                      f"images of the {section.accuracy['split']} split."]
    return "\n".join(lines) + "\n"


def _quiet(what: str, done: int, total: int) -> None:
    return None
