"""`mlic-edge export` as a library: model.onnx (checked against PyTorch) and reference.npz (needs PyTorch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlic_edge.rundir import RunDir


@dataclass(frozen=True)
class ExportRequest:
    opset: int = 17  # the newest TensorRT 8.6 parses
    simplify: bool = True  # onnxsim
    dynamo: bool = False  # torch.export (opset >= 18)
    reference: bool = True  # PyTorch scores on the eval split, for parity without PyTorch
    uint8_input: bool = False  # fold the normalisation into the graph
    data: str | None = None  # the dataset the reference is scored on (default: the run's)


def export(run: RunDir, request: ExportRequest = ExportRequest()) -> dict[str, Any]:
    from mlic_edge.export.onnx_export import export_onnx
    from mlic_edge.export.reference import reference_data, write_reference

    if request.reference:
        reference_data(run, request.data)  # refused before the export, not after it
    result = export_onnx(run, opset=request.opset, simplify=request.simplify, dynamo=request.dynamo,
                         uint8_input=request.uint8_input)
    summary: dict[str, Any] = {"onnx": str(result.path), "opset": result.opset, "max_abs_diff": result.max_abs_diff,
                               "mean_abs_diff": result.mean_abs_diff, "check_images": result.check_images,
                               "seconds": round(result.seconds, 2)}
    if request.reference:
        summary["reference"] = str(write_reference(run, data=request.data))
    return summary
