"""`mlic-edge parity` as a library: every precision and backend present against the PyTorch reference.

Needs only reference.npz and the images, not PyTorch: it runs on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from mlic_edge.errors import LineageError, MlicError
from mlic_edge.rundir import RunDir
from mlic_edge.spec import (DEFAULT_DEVICE, DEFAULT_THRESHOLD, PRECISIONS, rebuild_command, require_at_least,
                            require_choice, require_fraction)

Progress = Callable[[str, int, int], None]  # (what, images just done, images in all)


@dataclass(frozen=True)
class ParityRequest:
    data: str | None = None  # default: the reference's own images / the run's dataset
    backends: tuple[str, ...] = ()  # default: ONNX Runtime on every precision's ONNX, and every engine built
    precisions: tuple[str, ...] = ()  # default: every one present
    device: str = DEFAULT_DEVICE
    threshold: float = DEFAULT_THRESHOLD  # for the identical-label-set share
    # Per precision; what is not given takes spec.py's defaults (DEFAULT_TOLERANCE_POINTS, ...).
    tolerances: dict[str, float] = field(default_factory=dict)  # |ΔmAP| in points
    labelset_floors: dict[str, float] = field(default_factory=dict)  # share of images with identical label sets
    max_score_diffs: dict[str, float] = field(default_factory=dict)  # max |Δscore|
    batch_size: int = 16


def check_limits(request: ParityRequest) -> None:
    """Refuse, before any work, a limit for an unknown precision, or one that is not a finite number >= 0 (a share
    of images: in [0, 1]): every limit is compared with ``>``, which a NaN passes."""
    for option, limits in (("--tolerance", request.tolerances), ("--min-same", request.labelset_floors),
                           ("--max-diff", request.max_score_diffs)):
        for precision, value in limits.items():
            require_choice("precision", precision, PRECISIONS)
            what, example = f"{option} {precision}", f"for example {option} {precision}=0.5"
            if option == "--min-same":
                require_fraction(what, value, hint=example)
            else:
                require_at_least(what, value, 0, hint=example)


def parity(run: RunDir, request: ParityRequest = ParityRequest(), progress: Progress | None = None,
           on_skip: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The parity report (also written to reports/parity.json and .md). Past a tolerance the report says so;
    ``check_parity(report)`` raises ParityError (exit 3), as the CLI does."""
    from mlic_edge.io import atomic_files, json_text
    from mlic_edge.runtime.checks.parity import (Reference, ReferenceImages, check_backend, parity_markdown,
                                                 parity_report, present_targets)
    from mlic_edge.runtime.deployment.deploy_report import beside_workstation, write_deploy_report
    from mlic_edge.runtime.inference.backends import create_backend

    for name in request.precisions:
        require_choice("precision", name, PRECISIONS)
    check_limits(request)
    require_fraction("--threshold", request.threshold)
    require_at_least("--batch-size", request.batch_size, 1, hint="images per inference, for example 16")
    run.read()
    run.require_writable(reports_only=True)
    reference = Reference.load(run)
    images = ReferenceImages(run, reference, request.data)
    targets = present_targets(run, list(request.backends) or None, list(request.precisions) or None)
    if not targets:
        wanted = ", ".join(request.precisions) or "any precision"
        raise MlicError(f"no ONNX or engine for {wanted} in {run.path}",
                        hint="make it: " + rebuild_command(run.path, request.precisions[0], "onnxruntime")
                        if request.precisions else f"export first: mlic-edge export --run {run.path}")
    results, skipped = [], []
    for backend_name, precision_name, graph in targets:
        try:
            engine = create_backend(backend_name, run, precision_name, request.device, graph=graph)
        except MlicError as error:
            if request.backends or isinstance(error, LineageError):  # asked for by name, or the wrong model
                raise
            skipped.append({"backend": backend_name, "precision": precision_name, "reason": str(error)})
            if on_skip is not None:
                on_skip(f"not checked: {backend_name} {precision_name}: {error}")
            continue
        with engine:
            what = f"parity {backend_name} {precision_name}" + (f" ({graph} graph)" if graph != "auto" else "")
            results.append(check_backend(
                engine, reference, images, threshold=request.threshold, batch_size=request.batch_size,
                tolerance_points=request.tolerances.get(precision_name),
                labelset_floor=request.labelset_floors.get(precision_name),
                max_score_diff=request.max_score_diffs.get(precision_name),
                on_batch=(lambda count, what=what: progress(what, count, len(images))) if progress else None))
    report = parity_report(run, results, skipped, reference=reference)
    workstation = beside_workstation(run, results)
    if workstation is not None:
        report["workstation"] = workstation
    with atomic_files() as staged:  # the JSON and the table that shows it, together
        staged.path(run.reports / "parity.json").write_text(json_text(report))
        staged.path(run.reports / "parity.md").write_text(parity_markdown(report))
    write_deploy_report(run)
    return report


def parity_table(report: dict[str, Any]) -> Any:
    """The rich table ``parity`` prints: each backend and precision against the reference."""
    from mlic_edge.runtime.checks.parity import parity_table as table

    return table(report)


def check_parity(report: dict[str, Any]) -> None:
    """Raise ParityError (exit 3) where a row of ``report`` is past its tolerance."""
    from mlic_edge.runtime.checks.parity import check_parity as check

    check(report)


def figures_text(row: dict[str, Any]) -> str:
    """One row's figures in one line ("ΔmAP …, identical label sets …")."""
    from mlic_edge.runtime.checks.parity import figures_text as text

    return text(row)
