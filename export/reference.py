"""reference.npz: PyTorch scores and targets on the eval split, so parity needs no PyTorch on the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mlic_edge import metrics
from mlic_edge.console import progress_bar, warn
from mlic_edge.data import open_dataset
from mlic_edge.data.torch_data import describe_broken
from mlic_edge.export.lineage import CHECKPOINT_SHA
from mlic_edge.errors import MlicError
from mlic_edge.io import sha256_file
from mlic_edge.models.checkpoint import load_model
from mlic_edge.rundir import RunDir
from mlic_edge.spec import ReferenceSection
from mlic_edge.train.evaluate import predict_scores


def reference_data(run: RunDir, data: str | None = None) -> str:
    """The dataset the reference is scored on: ``data``, else run.json's; refused in one line where neither names
    one (an imported run), offering the export without a reference."""
    named = data or run.spec().dataset_record.spec
    if not named:
        raise MlicError(f"{run.run_json} names no dataset to score the reference on",
                        hint=f"pass --data DATA (e.g. mlic-edge export --run {run.path} --data voc:VOCdevkit/VOC2007), "
                             f"or export without a reference: mlic-edge export --run {run.path} --no-reference "
                             "(parity needs one later)")
    return named


def write_reference(run: RunDir, data: str | None = None, split: str | None = None, batch_size: int = 32,
                    workers: int = 0) -> Path:
    spec = run.spec()
    checkpoint_sha = sha256_file(run.require_checkpoint())
    model = load_model(run.checkpoint)
    recorded = spec.dataset_record
    dataset = open_dataset(reference_data(run, data), role="eval", split=split or recorded.eval_split,
                           difficult=recorded.difficult_rule, labels=spec.labels)
    if dataset.names != spec.labels:
        raise MlicError(f"{dataset.spec} has other classes than the model ({len(dataset.names)} vs "
                        f"{len(spec.labels)}, or other names)",
                        hint="score the reference on a dataset with the model's classes (--data)")
    with progress_bar(transient=True) as progress:
        task = progress.add_task("reference scores (PyTorch)", total=len(dataset), status="")
        result = predict_scores(model, dataset, spec.img_size, spec.mean, spec.std, batch_size, workers,
                                resize=spec.resize,
                                on_batch=lambda n: progress.advance(task, n))
    if result.broken:
        warn(describe_broken(dataset, result.broken))
    result.check_finite(run.checkpoint, dataset)
    ids = dataset.image_ids()
    ref_map = metrics.mean_average_precision(result.scores, result.targets(dataset)).map
    with run.transaction() as change:  # reference.npz and run.json's reference section, put in place together
        with change.path(run.reference).open("wb") as handle:
            np.savez_compressed(handle, scores=result.scores, targets=result.targets(dataset),
                                image_ids=np.array([ids[i] for i in result.kept]), labels=np.array(dataset.names),
                                spec=np.array(dataset.spec), split=np.array(dataset.split),
                                **{CHECKPOINT_SHA: np.array(checkpoint_sha)})
        change.update(reference=ReferenceSection(
            file=run.reference.name, images=int(len(result.kept)), split=dataset.split, spec=dataset.spec,
            mAP=float(ref_map), backend="torch", device="cpu", torch=torch.__version__,
            source_checkpoint_sha256=checkpoint_sha))
    return run.reference
