"""mAP parity: every backend and precision against the PyTorch reference (reference.npz) on the same images.

The reference holds PyTorch's scores and the targets of the eval split, so parity needs no PyTorch on the device.
A result passes when, for its precision: |ΔmAP| is within the tolerance in points (a gain past it is a mismatch
too: the reference is of another model, or the eval images changed), the share of images with the reference's
label set is at least the floor, and, where a limit is set, max |Δscore| is within it. Nothing compared is a
failure, never a pass.
"""

from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from mlic_edge import metrics
from mlic_edge.data import open_dataset
from mlic_edge.data.images import read_image, spec_input
from mlic_edge.errors import MlicError, NonFiniteError, ParityError, RunDirError
from mlic_edge.export.lineage import CHECKPOINT_SHA, check_reference, file_sha256
from mlic_edge.rundir import RunDir
from mlic_edge.runtime.inference.backends.base import Backend
from mlic_edge.spec import (BROKEN_GRAPH_HINT, DEFAULT_MAX_SCORE_DIFF, DEFAULT_THRESHOLD, ModelSpec, parity_limits,
                            require_finite)

WORST_CLASSES = 5


@dataclass
class Reference:
    scores: np.ndarray
    targets: np.ndarray
    image_ids: list[str]
    labels: list[str]
    spec: str
    split: str

    @classmethod
    def load(cls, run: RunDir) -> "Reference":
        """The run's reference.npz, refused when damaged (a NaN or inf score included) or when it scored another
        model or other classes."""
        path = run.reference
        if not path.exists():
            named = run.spec().dataset_record.spec  # an imported run exported --no-reference names none
            raise RunDirError(f"{path} is missing", hint=f"write it: mlic-edge export --run {run.path}"
                              + ("" if named else " --data DATA (a dataset with the model's classes)"))
        again = f"write it again: mlic-edge export --run {run.path}"
        try:
            with np.load(path) as data:
                reference = cls(data["scores"], data["targets"], [str(i) for i in data["image_ids"]],
                                [str(n) for n in data["labels"]], str(data["spec"]), str(data["split"]))
                made_from = str(data[CHECKPOINT_SHA]) if CHECKPOINT_SHA in data.files else None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise RunDirError(f"{path} is damaged or not a reference ({type(error).__name__}: {error})",
                              hint=again) from None
        grid = (len(reference.image_ids), len(reference.labels))
        if reference.scores.shape != grid or reference.targets.shape != grid:
            raise RunDirError(f"{path} is damaged: scores {reference.scores.shape} and targets "
                              f"{reference.targets.shape} for {grid[0]} images and {grid[1]} labels", hint=again)
        for name in ("scores", "targets"):
            require_finite(f"{path} {name}", getattr(reference, name), error=RunDirError, hint=again,
                           at=reference.at)
        check_reference(run, made_from, reference.labels)
        return reference

    def at(self, index: tuple[int, ...]) -> str:
        """Where (row, column) of the scores is: "image 000012, label 'cat'"."""
        row, column = index
        return f"image {self.image_ids[row]}, label {self.labels[column]!r}"

    @property
    def map(self) -> float:
        return float(metrics.mean_average_precision(self.scores, self.targets).map)


class ReferenceImages:
    """The reference's images, found in the dataset and preprocessed like the runtime does, in batches.

    Parity runs every backend and precision over the same images: when the tensors fit in ``CACHE_BYTES`` they are
    decoded once and kept, otherwise decoded again for each backend."""

    CACHE_BYTES = 1 << 30

    def __init__(self, run: RunDir, reference: Reference, data: str | None = None) -> None:
        run_spec = run.spec()
        self.spec = ModelSpec.from_run(run_spec)
        dataset = open_dataset(data or reference.spec, role="eval", split=reference.split,
                               difficult=run_spec.dataset_record.difficult_rule)
        by_id = {image_id: path for image_id, path in zip(dataset.image_ids(), dataset.image_paths)}
        missing = [image_id for image_id in reference.image_ids if image_id not in by_id]
        if missing:
            raise RunDirError(f"{len(missing)} reference images are not in {dataset.spec} (first: {missing[0]})",
                              hint="point --data at the dataset the reference was made on")
        self.paths: list[Path] = [by_id[image_id] for image_id in reference.image_ids]
        self._cache: np.ndarray | None = None
        tensor_bytes = 4 * 3 * self.spec.img_size ** 2
        self._cacheable = tensor_bytes * len(self.paths) <= self.CACHE_BYTES

    def __len__(self) -> int:
        return len(self.paths)

    def batches(self, batch_size: int = 16) -> Iterator[np.ndarray]:
        if self._cache is not None:
            for start in range(0, len(self._cache), batch_size):
                yield self._cache[start:start + batch_size]
            return
        decoded = []
        for start in range(0, len(self.paths), batch_size):
            batch = np.stack([self._tensor(path) for path in self.paths[start:start + batch_size]])
            if self._cacheable:
                decoded.append(batch)
            yield batch
        if self._cacheable and decoded:
            self._cache = np.concatenate(decoded)

    def _tensor(self, path: Path) -> np.ndarray:
        image = read_image(path)
        if image is None:
            raise RunDirError(f"reference image {path} can no longer be read", hint="check the dataset")
        return spec_input(image, self.spec)


def score_images(backend: Backend, images: ReferenceImages, batch_size: int = 16,
                 on_batch: Callable[[int], None] | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """The backend's scores on the reference images, and its inference time (copies included, no decoding)."""
    chunks, seconds = [], 0.0
    for batch in images.batches(batch_size):
        started = time.perf_counter()
        chunks.append(np.asarray(backend.infer(batch), np.float32))
        seconds += time.perf_counter() - started
        if on_batch:
            on_batch(len(batch))
    count = max(1, len(images))
    return np.concatenate(chunks), {"batch_size": batch_size, "ms_per_image": seconds * 1e3 / count,
                                    "images_per_s": count / seconds if seconds > 0 else None}


def compare_scores(reference: Reference, scores: np.ndarray, *, precision: str, threshold: float = DEFAULT_THRESHOLD,
                   tolerance_points: float | None = None, labelset_floor: float | None = None,
                   max_score_diff: float | None = None, graph: str | None = None) -> dict[str, Any]:
    """How far ``scores`` are from the reference: ΔmAP, per-class ΔAP, score differences, label-set agreement, and
    every way it fails the precision's limits (``failures``, one sentence each; none: passed; limits not given are
    ``parity_limits(precision, graph)``: int8 is held to the target its build met). Scores with a NaN or inf are not
    compared: the result fails saying where, and its figures are None."""
    if scores.shape != reference.scores.shape:
        raise MlicError(f"the backend returned scores of shape {scores.shape}, the reference has "
                        f"{reference.scores.shape}", hint="the ONNX/engine was made for another model; rebuild it")
    default_tolerance, default_floor = parity_limits(precision, graph)
    tolerance = default_tolerance if tolerance_points is None else tolerance_points
    floor = default_floor if labelset_floor is None else labelset_floor
    score_limit = DEFAULT_MAX_SCORE_DIFF[precision] if max_score_diff is None else max_score_diff
    limits = {"threshold": threshold, "tolerance_points": tolerance, "labelset_floor": floor,
              "max_score_diff": score_limit}
    try:
        require_finite("its scores", scores, at=reference.at)
    except NonFiniteError as error:
        return {"precision": precision, **dict.fromkeys(FIGURES), "per_class_delta_AP": {}, "worst_classes": [],
                **limits, "failures": [f"{error.message}, so nothing was compared"], "passed": False}
    ref = metrics.mean_average_precision(reference.scores, reference.targets)
    got = metrics.mean_average_precision(scores, reference.targets)
    class_delta = got.per_class - ref.per_class
    scored = [i for i in range(len(reference.labels)) if np.isfinite(class_delta[i])]
    worst = sorted(scored, key=lambda i: class_delta[i])[:WORST_CLASSES]
    diff = np.abs(scores.astype(np.float64) - reference.scores.astype(np.float64))
    same_sets = np.all((scores >= threshold) == (reference.scores >= threshold), axis=1)
    delta = float(got.map - ref.map)
    max_diff = float(diff.max()) if diff.size else 0.0
    agreement = float(same_sets.mean()) if len(same_sets) else 1.0
    failures = limit_failures(float(got.map), float(ref.map), agreement, tolerance, floor)
    if score_limit is not None and max_diff > score_limit:
        failures.append(f"max |Δscore| {max_diff:.2e} exceeds {score_limit:.0e}")
    return {
        "precision": precision,
        "mAP": float(got.map),
        "delta_mAP": delta,
        "delta_mAP_points": delta * 100,
        "per_class_delta_AP": {reference.labels[i]: float(class_delta[i]) for i in scored},
        "worst_classes": [{"label": reference.labels[i], "delta_AP": float(class_delta[i])} for i in worst],
        "max_abs_diff": max_diff,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "labelset_agreement": agreement,
        **limits,
        "failures": failures,
        "passed": not failures,
    }


def limit_failures(map_value: float, reference_map: float, agreement: float, tolerance_points: float,
                   labelset_floor: float) -> list[str]:
    """Each way ``map_value`` (against ``reference_map``) and the share of identical label sets pass their limits,
    one sentence each: parity's test, and the build's verdict on the eval split (the same test, so they agree)."""
    delta = map_value - reference_map
    failures = []
    if abs(delta) * 100 > tolerance_points + 1e-9:
        failures.append(f"mAP {map_value * 100:.2f} is {abs(delta) * 100:.2f} points "
                        f"{'below' if delta < 0 else 'above'} the reference {reference_map * 100:.2f}, more than the "
                        f"tolerance {tolerance_points:g}")
    if agreement + 1e-9 < labelset_floor:
        failures.append(f"{agreement * 100:.1f} % of images have the reference's label set, below the floor "
                        f"{labelset_floor * 100:.1f} %")
    return failures


FIGURES = ("mAP", "delta_mAP", "delta_mAP_points", "max_abs_diff", "mean_abs_diff", "labelset_agreement")
"""What ``compare_scores`` measures: None where the scores were not all finite."""


def figure(value: float | None, spec: str, scale: float = 1.0) -> str:
    """A result's figure formatted by ``spec`` (times ``scale``), or "-" where it was not measured."""
    return "-" if value is None else format(value * scale, spec)


def figures_text(result: dict[str, Any]) -> str:
    """"ΔmAP +0.012, 98.5 % identical" of a parity result (also as a bundle records it)."""
    if result.get("delta_mAP_points") is None:
        return "nothing compared (scores not finite)"
    return f"ΔmAP {result['delta_mAP_points']:+.3f}, {result['labelset_agreement'] * 100:.1f} % identical"


def check_backend(backend: Backend, reference: Reference, images: ReferenceImages, *, threshold: float = DEFAULT_THRESHOLD,
                  tolerance_points: float | None = None, labelset_floor: float | None = None,
                  max_score_diff: float | None = None, batch_size: int = 16,
                  on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """One backend against the reference: the comparison, what ran, and its inference latency."""
    scores, latency = score_images(backend, images, batch_size, on_batch)
    result = compare_scores(reference, scores, precision=backend.info.precision, threshold=threshold,
                            tolerance_points=tolerance_points, labelset_floor=labelset_floor,
                            max_score_diff=max_score_diff, graph=backend.info.details.get("graph"))
    return {"backend": backend.info.backend, "device": backend.info.device, "version": backend.info.version,
            "graph": backend.info.details.get("graph"), "onnx": scored_onnx(backend), **result, "latency": latency,
            "images": len(images), "ran": backend.info.as_dict()}


def scored_onnx(backend: Backend) -> dict[str, str] | None:
    """The ONNX a backend's scores come from, by file name and sha256: the graph ONNX Runtime loaded, or the one an
    engine was built from (its manifest). A bundle's figures are matched to the graphs it ships by this hash."""
    manifest = getattr(backend, "manifest", None)
    if isinstance(manifest, dict) and manifest.get("onnx", {}).get("sha256"):
        return {"file": manifest["onnx"].get("file"), "sha256": manifest["onnx"]["sha256"]}
    model = backend.info.details.get("model")
    if model and Path(model).is_file():
        return {"file": Path(model).name, "sha256": file_sha256(Path(model))}
    return None


def compute_parity(run: RunDir, backend: Backend, *, data: str | None = None, **options: Any) -> dict[str, Any]:
    """``check_backend`` on the run's reference (options: threshold, tolerance_points, batch_size, on_batch)."""
    reference = Reference.load(run)
    return check_backend(backend, reference, ReferenceImages(run, reference, data), **options)


def present_targets(run: RunDir, backends: list[str] | None = None,
                    precisions: list[str] | None = None) -> list[tuple[str, str, str]]:
    """(backend, precision, graph) to check, each backend saying which of its graphs (the registry's
    ``parity_graphs``): by default what the run holds (each precision's ONNX for ONNX Runtime, both int8 graphs where
    the CPU one was built, each engine for its TensorRT), every graph before the engines built from it. Explicit
    ``backends`` are taken as asked (their artefacts are checked when loaded)."""
    from mlic_edge.runtime.inference.backends.registry import get_backend, list_backends
    from mlic_edge.spec import PRECISIONS

    wanted = precisions or list(PRECISIONS)
    if backends:
        return [(name, precision, graph) for name in backends for precision in wanted
                for graph in (["auto"] if name == "auto" else get_backend(name).parity_graphs(run, precision, True))]
    entries = sorted(list_backends(), key=lambda entry: entry.runs_engines)
    return [(entry.name, precision, graph) for entry in entries for precision in wanted
            for graph in entry.parity_graphs(run, precision, False)]


def parity_report(run: RunDir, results: list[dict[str, Any]], skipped: list[dict[str, str]] | None = None,
                  reference: Reference | None = None) -> dict[str, Any]:
    """The whole report: the reference once, then one result per backend and precision (``reference``: the one
    already loaded, rather than reading reference.npz again)."""
    import platform
    from datetime import datetime, timezone

    reference = reference or Reference.load(run)
    recorded = run.spec().reference
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "reference": {"backend": "torch", "file": run.reference.name, "mAP": reference.map,
                      "images": len(reference.image_ids), "split": reference.split,
                      **(recorded.to_json() if recorded else {})},
        "results": results,
        "skipped": skipped or [],
        "passed": bool(results) and all(result["passed"] for result in results),
    }


def check_parity(report: dict[str, Any]) -> None:
    """Raise (exit 3) naming every backend/precision past its limits, or that nothing could be compared."""
    if not report["results"]:
        reasons = "; ".join(f"{s['backend']} {s['precision']}: {s['reason']}" for s in report["skipped"])
        raise ParityError("nothing to compare: no backend could run" + (f" ({reasons})" if reasons else ""),
                          hint="fix what the reasons say (rebuild or re-export), then run parity again")
    failed = [result for result in report["results"] if not result["passed"]]
    if failed:
        details = "; ".join(f"{r['backend']} {precision_text(r)}: {', '.join(r['failures'])}" for r in failed)
        if any(r["mAP"] is None for r in failed):  # no limit lets NaN or inf scores pass
            raise ParityError(details, hint=BROKEN_GRAPH_HINT)
        raise ParityError(details, hint="inspect reports/parity.md; --tolerance, --min-same and --max-diff "
                                        "PRECISION=VALUE accept larger differences")


def precision_text(result: dict[str, Any]) -> str:
    """'fp16', or 'int8 (cpu graph)' where the result says which int8 graph ran."""
    graph = result.get("graph")
    return result["precision"] + (f" ({graph} graph)" if graph else "")


def _rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in report["results"]:
        worst = ", ".join(f"{w['label']} {w['delta_AP'] * 100:+.2f}" for w in r["worst_classes"][:3])
        rows.append([r["backend"], precision_text(r), r["device"], figure(r["mAP"], ".2f", 100),
                     figure(r["delta_mAP_points"], "+.3f"), worst or "-", figure(r["max_abs_diff"], ".1e"),
                     figure(r["mean_abs_diff"], ".1e"), figure(r["labelset_agreement"], ".1%"),
                     f"{r['latency']['ms_per_image']:.2f}", f"{r['tolerance_points']}",
                     "PASS" if r["passed"] else "FAIL"])
    return rows


COLUMNS = ["backend", "precision", "device", "mAP", "ΔmAP (pts)", "worst classes ΔAP", "max abs Δ", "mean abs Δ",
           "same labels", "ms/img", "tol (pts)", "result"]


def parity_markdown(report: dict[str, Any]) -> str:
    ref = report["reference"]
    lines = ["# Parity against the PyTorch reference", "",
             f"Reference: PyTorch, mAP {ref['mAP'] * 100:.2f} on {ref['images']} images ({ref['split']} split).",
             "ms/img: backend inference only (batch of the parity run, copies included, no decoding).", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(report)]
    for skip in report["skipped"]:
        lines.append(f"\nNot run: {skip['backend']} {skip['precision']}: {skip['reason']}")
    for r in report["results"]:
        ran = r["ran"]
        lines.append(f"\n{r['backend']} {precision_text(r)}: {ran['backend']} {ran['version']} on {ran['device']}"
                     + (f", {ran['details'].get('model') or ran['details'].get('engine')}" if ran.get("details")
                        else ""))
    if report.get("workstation") is not None:
        lines += ["", "## Workstation (as the bundle recorded) beside this device", "",
                  "| backend | precision | graph | same bytes as shipped | workstation ΔmAP / same | "
                  "device ΔmAP / same |", "|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in workstation_rows(report)]
    return "\n".join(lines) + "\n"


def workstation_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per device result beside the workstation's figures on the graph the bundle shipped."""
    def figures(result: dict[str, Any]) -> str:
        return f"{figure(result['delta_mAP_points'], '+.3f')} / {figure(result['labelset_agreement'], '.1%')}"

    rows = []
    for row in report.get("workstation") or []:
        workstation = "; ".join(f"{figures(ws)} ({ws['backend']}/{ws['device']})" for ws in row["workstation"])
        rows.append([row["backend"], precision_text(row), str(row["onnx"]), "yes" if row["same_bytes"] else "NO",
                     workstation or "not recorded", figures(row["device_result"])])
    return rows


CONSOLE_COLUMNS = ["backend", "prec", "mAP", "ΔmAP", "tol", "max |Δ|", "same", "ms/img", "result"]


def parity_table(report: dict[str, Any]):
    """The console view: one row per result (the Markdown report has every column)."""
    from rich import box
    from rich.table import Table

    ref = report["reference"]
    table = Table(title=f"parity vs PyTorch (mAP {ref['mAP'] * 100:.2f}, {ref['images']} {ref['split']} images; "
                        "ΔmAP, tol in points; same: identical label sets)", title_justify="left", caption_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    for column in CONSOLE_COLUMNS:
        table.add_column(column, justify="left" if column in ("backend", "prec") else "right", no_wrap=True)
    notes = []
    for row, result in zip(_rows(report), report["results"]):
        backend, precision, device, map_, delta, worst, max_diff, _, same, ms, tol, verdict = row
        colour = "green" if verdict == "PASS" else "red"
        table.add_row(f"{backend}/{device}", precision, map_, delta, tol, max_diff, same, ms,
                      f"[{colour}]{verdict}[/{colour}]")
        notes.append(f"{backend} {precision} worst ΔAP: {worst}")
    notes += [f"not run: {s['backend']} {s['precision']} ({s['reason']})" for s in report["skipped"]]
    notes += [f"{backend} {precision} on {graph} (shipped bytes: {same}): workstation {workstation}, here {device}"
              for backend, precision, graph, same, workstation, device in workstation_rows(report)]
    table.caption = "\n".join(notes)
    return table
