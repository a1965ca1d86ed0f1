"""`mlic-edge eval` as a library: the PyTorch checkpoint on an eval split, every metric (needs PyTorch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlic_edge.errors import MlicError
from mlic_edge.rundir import RunDir
from mlic_edge.spec import require_fraction


@dataclass(frozen=True)
class EvalRequest:
    data: str | None = None  # default: the run's dataset
    split: str | None = None  # default: the run's eval split
    threshold: float = 0.5
    ap_mode: str = "standard"  # or "voc07" (11-point)
    batch_size: int = 32
    device: str = "auto"
    save_scores: Path | None = None


def evaluate(run: RunDir, request: EvalRequest = EvalRequest()) -> dict[str, Any]:
    """mAP, CP, CR, CF1, OP, OR, OF1 (+ top-3) and head/middle/tail mAP of the run's checkpoint."""
    require_fraction("--threshold", request.threshold)  # before PyTorch is imported
    import numpy as np

    from mlic_edge import metrics
    from mlic_edge.console import warn
    from mlic_edge.data import open_dataset
    from mlic_edge.data.torch_data import describe_broken
    from mlic_edge.io import atomic_path
    from mlic_edge.models.checkpoint import load_model
    from mlic_edge.train.evaluate import predict_scores
    from mlic_edge.train.trainer import select_device

    torch_device = select_device(request.device)
    spec = run.spec()
    dataset_meta = spec.dataset or {}
    if not (request.data or dataset_meta.get("spec")):
        raise MlicError(f"{run.run_json} names no dataset", hint="pass --data DATA")
    dataset = open_dataset(request.data or dataset_meta["spec"], role="eval",
                           split=request.split or dataset_meta.get("eval_split"),
                           difficult=dataset_meta.get("difficult", "ignore"), labels=spec.labels)
    if dataset.names != spec.labels:
        raise MlicError(f"{dataset.spec} has other classes than the run", hint="evaluate on the dataset it was "
                                                                               "trained on (or one with its labels)")
    net = load_model(run.require(run.checkpoint, "mlic-edge train")).to(torch_device)
    result = predict_scores(net, dataset, spec.img_size, spec.mean, spec.std, request.batch_size, resize=spec.resize,
                            device=torch_device)
    if result.broken:
        warn(describe_broken(dataset, result.broken))
    targets = result.targets(dataset)
    counts = dataset_meta.get("train_class_counts")
    report = metrics.evaluate(result.scores, targets, dataset.names,
                              class_counts=np.asarray(counts) if counts else None, threshold=request.threshold,
                              mode=request.ap_mode)
    report.update(backend="torch", device=str(torch_device), split=dataset.split, data=dataset.spec)
    if request.save_scores:
        with atomic_path(request.save_scores) as tmp:
            with tmp.open("wb") as handle:
                np.savez_compressed(handle, scores=result.scores, targets=targets, labels=np.array(dataset.names))
    return report
