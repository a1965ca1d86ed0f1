"""``mlic-edge import`` as a library: a paper's released checkpoint becomes a complete run directory (run.json with
the official test-time preprocessing, checkpoint.pt in the project's format, label_graph.npz where the model has a
label branch), so that export, build, parity, run, bench and pack work on it unchanged. The conversion of each
format is in mlic_edge/models/official/; nothing is written unless it succeeds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlic_edge.errors import MlicError
from mlic_edge.rundir import RunDir
from mlic_edge.spec import DatasetSection, ImportedSection, LabelGraphSection, RunSpec

FORMAT_NAMES = ("ml-gcn", "q2l", "msrn")  # mlic_edge.models.official.FORMATS, known here without PyTorch


@dataclass(frozen=True)
class ImportRequest:
    format: str
    checkpoint: Path
    labels: str | None = None  # voc | coco | FILE (default: from the class count, 20 VOC / 80 COCO)
    word_vectors: Path | None = None
    adjacency: Path | None = None
    img_size: int | None = None  # default: the paper's test size
    config: Path | None = None  # Query2Label's config_new.json
    data: str | None = None  # the dataset eval, export's reference and parity use (recorded in run.json)
    paper_map: float | None = None  # the mAP the paper reports for this file, in percent, kept beside what eval says
    trust_pickle: bool = False
    overwrite: bool = False

    def check(self) -> None:
        """Argument errors, before PyTorch is imported."""
        import math

        from mlic_edge.spec import require_choice

        require_choice("format", self.format, FORMAT_NAMES)
        for option, path in (("CHECKPOINT", self.checkpoint), ("--word-vectors", self.word_vectors),
                             ("--adjacency", self.adjacency), ("--config", self.config)):
            if path is not None and not Path(path).is_file():
                raise MlicError(f"{option} {path} does not exist", hint="give the file downloaded with the checkpoint")
        if self.labels not in (None, "voc", "coco") and not Path(self.labels).is_file():
            raise MlicError(f"--labels {self.labels} is neither voc, coco nor a file",
                            hint="give voc, coco or a file with one class name per line, in the checkpoint's order")
        if self.img_size is not None and not 32 <= self.img_size <= 4096:
            raise MlicError(f"--img-size {self.img_size} is not an input size in pixels", hint="for example 448")
        if self.paper_map is not None and not (math.isfinite(self.paper_map) and 0 <= self.paper_map <= 100):
            raise MlicError(f"--paper-map {self.paper_map} is not a mAP in percent", hint="for example 94.0")
        if self.data is not None:
            from mlic_edge.data import parse_data_spec

            parse_data_spec(self.data)


def import_official(run: RunDir, request: ImportRequest) -> dict[str, Any]:
    """Write the run; returns its summary (format, model, labels, source file and sha256, notes)."""
    request.check()
    from mlic_edge.io import require_writable, sha256_file
    from mlic_edge.models.checkpoint import save_checkpoint
    from mlic_edge.models.official import ImportOptions, import_checkpoint

    require_writable(run.path, create=False, hint="choose a writable --out")
    options = ImportOptions(labels=request.labels, word_vectors=request.word_vectors, adjacency=request.adjacency,
                            img_size=request.img_size, config=request.config)
    imported = import_checkpoint(request.format, Path(request.checkpoint), options,
                                 trust_pickle=request.trust_pickle)
    dataset = _dataset_section(request.data, imported.labels) if request.data else None
    source = ImportedSection(format=request.format, file=str(Path(request.checkpoint).resolve()),
                             sha256=sha256_file(request.checkpoint), paper_mAP=request.paper_map,
                             notes=imported.notes, taken_on_trust=imported.taken_on_trust,
                             ignored_tensors=imported.ignored)
    run.start_new_generation(request.overwrite, making="importing into it")
    config = imported.model.config()
    with run.transaction(fresh=True) as change:
        save_checkpoint(change.path(run.checkpoint), imported.model, imported_from=source.to_json())
        label_graph = None
        if imported.label_graph is not None:
            imported.label_graph.save(change.path(run.path / "label_graph.npz"))
            label_graph = LabelGraphSection(file="label_graph.npz", vectors_source=imported.label_graph.vectors_source,
                                            vectors_dim=int(imported.label_graph.vectors.shape[1]))
        change.record(RunSpec(model=config["model"], backbone=config["backbone"], img_size=imported.img_size,
                              mean=imported.mean, std=imported.std, resize=imported.resize, labels=imported.labels,
                              model_config=config, imported=source, dataset=dataset, label_graph=label_graph))
    return {"run": str(run.path), "model": config["model"], "backbone": config["backbone"],
            "classes": len(imported.labels), "img_size": imported.img_size, **source.to_json()}


def _dataset_section(data: str, labels: list[str]) -> DatasetSection:
    """run.json's dataset: the eval split of ``data``, refused when its classes are not the model's."""
    from mlic_edge.data import open_dataset

    dataset = open_dataset(data, role="eval", labels=labels)
    if dataset.names != labels:
        missing = sorted(set(labels) - set(dataset.names))[:4]
        raise MlicError(f"{dataset.spec} has other classes than the checkpoint"
                        + (f" (the checkpoint's {', '.join(missing)} are not in it)" if missing else ""),
                        hint="give --data with the checkpoint's classes, or --labels with its class list")
    return DatasetSection(spec=dataset.spec, format=dataset.format, eval_split=dataset.split,
                          eval_images=len(dataset))


__all__ = ["FORMAT_NAMES", "ImportRequest", "import_official"]
