"""`mlic-edge eval` as a library: the PyTorch checkpoint on an eval split, every metric (needs PyTorch). And, without
PyTorch, ``evaluate_precision``: a precision's ONNX against fp32 with ONNX Runtime, as the build report and
quantization-aware fine-tuning record it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mlic_edge.console import progress_bar, warn
from mlic_edge.errors import MlicError
from mlic_edge.rundir import RunDir
from mlic_edge.spec import (BROKEN_GRAPH_HINT, DEFAULT_DEVICE, DEFAULT_THRESHOLD, require_at_least, require_choice,
                            require_finite, require_fraction)


@dataclass(frozen=True)
class EvalRequest:
    data: str | None = None  # default: the run's dataset
    split: str | None = None  # default: the run's eval split
    threshold: float = DEFAULT_THRESHOLD
    ap_mode: str = "standard"  # or "voc07" (11-point)
    batch_size: int = 32
    device: str = DEFAULT_DEVICE
    save_scores: Path | None = None


def evaluate(run: RunDir, request: EvalRequest = EvalRequest()) -> dict[str, Any]:
    """mAP, CP, CR, CF1, OP, OR, OF1 (+ top-3) and head/middle/tail mAP of the run's checkpoint."""
    require_fraction("--threshold", request.threshold)  # before PyTorch is imported
    require_at_least("--batch-size", request.batch_size, 1, hint="for example 32")
    from mlic_edge.metrics import AP_MODES
    from mlic_edge.runtime.inference.sinks import check_writable

    require_choice("--ap", request.ap_mode, AP_MODES)
    if request.save_scores is not None:
        check_writable(request.save_scores)  # now, not after the whole evaluation
    import numpy as np

    from mlic_edge import metrics
    from mlic_edge.data import dataset_files, open_dataset
    from mlic_edge.data.torch_data import describe_broken
    from mlic_edge.io import atomic_path, refuse_output_onto_inputs
    from mlic_edge.models.checkpoint import load_model
    from mlic_edge.train.evaluate import predict_scores
    from mlic_edge.train.trainer import select_device

    torch_device = select_device(request.device)
    spec = run.spec()
    recorded = spec.dataset_record
    if not (request.data or recorded.spec):
        raise MlicError(f"{run.run_json} names no dataset", hint="pass --data DATA")
    dataset = open_dataset(request.data or recorded.spec, role="eval", split=request.split or recorded.eval_split,
                           difficult=recorded.difficult_rule, labels=spec.labels)
    if dataset.names != spec.labels:
        raise MlicError(f"{dataset.spec} has other classes than the run", hint="evaluate on the dataset it was "
                                                                               "trained on (or one with its labels)")
    refuse_output_onto_inputs({"--save-scores": request.save_scores}, [run.path, *dataset_files(dataset)])
    net = load_model(run.require_checkpoint()).to(torch_device)
    with progress_bar(transient=True) as progress:
        task = progress.add_task(f"eval (PyTorch, {dataset.split})", total=len(dataset), status="")
        result = predict_scores(net, dataset, spec.img_size, spec.mean, spec.std, request.batch_size,
                                resize=spec.resize, device=torch_device, on_batch=lambda n: progress.advance(task, n))
    if result.broken:
        warn(describe_broken(dataset, result.broken))
    result.check_finite(run.checkpoint, dataset)
    targets = result.targets(dataset)
    counts = recorded.train_class_counts
    report = metrics.evaluate(result.scores, targets, dataset.names,
                              class_counts=np.asarray(counts) if counts else None, threshold=request.threshold,
                              mode=request.ap_mode)
    report.update(backend="torch", device=str(torch_device), split=dataset.split, data=dataset.spec)
    if request.save_scores:
        with atomic_path(request.save_scores) as tmp:
            with tmp.open("wb") as handle:
                np.savez_compressed(handle, scores=result.scores, targets=targets, labels=np.array(dataset.names))
    return report


Progress = Callable[[str, int, int], None]  # (what, done, total)


def evaluate_or_warn(run: RunDir, precision: str, say: Progress, onnx_path: Path) -> dict[str, Any] | None:
    """The artefacts are built either way; without the reference or its images the report just has no mAP."""
    try:
        return evaluate_precision(run, precision, say, onnx_path)
    except MlicError as error:
        warn(f"no mAP in the build report: {error}")
        return None


def evaluate_precision(run: RunDir, precision: str, say: Progress, onnx_path: Path | None = None) -> dict[str, Any]:
    """ONNX Runtime (CPU) mAP of the precision's ONNX (``onnx_path``, by default the run's) and of fp32 on the
    reference's eval images."""
    from mlic_edge.runtime.inference.backends.onnxruntime_backend import OnnxRuntimeBackend
    from mlic_edge.runtime.checks.parity import Reference, ReferenceImages, compare_scores, score_images

    reference = Reference.load(run)
    images = ReferenceImages(run, reference)
    scores = {}
    for name in dict.fromkeys(("fp32", precision)):
        path = onnx_path if onnx_path is not None and name == precision else run.onnx(name)
        with OnnxRuntimeBackend(path, device="cpu", precision=name) as backend:
            done = 0

            def advance(count: int, name: str = name) -> None:
                nonlocal done
                done += count
                say(f"mAP of {name} (ONNX Runtime CPU)", done, len(images))

            scores[name], _ = score_images(backend, images, on_batch=advance)
        require_finite(f"{path.name}'s scores (ONNX Runtime CPU)", scores[name], at=reference.at,
                       hint=BROKEN_GRAPH_HINT)
    fp32_vs_ref = compare_scores(reference, scores["fp32"], precision="fp32")
    as_fp32 = Reference(scores["fp32"], reference.targets, reference.image_ids, reference.labels, reference.spec,
                        reference.split)
    against_fp32 = compare_scores(as_fp32, scores[precision], precision=precision)
    return {"backend": "onnxruntime CPUExecutionProvider", "images": len(images), "split": reference.split,
            "mAP_fp32": fp32_vs_ref["mAP"], f"mAP_{precision}": against_fp32["mAP"],
            "delta_mAP_vs_fp32": against_fp32["delta_mAP"], "max_abs_diff_vs_fp32": against_fp32["max_abs_diff"],
            "labelset_agreement_vs_fp32": against_fp32["labelset_agreement"],
            "worst_classes": against_fp32["worst_classes"], "mAP_reference": reference.map}
