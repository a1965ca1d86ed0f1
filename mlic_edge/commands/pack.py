"""`mlic-edge pack` as a library: the bundle a device needs, what is in it, and the parity figures measured here on
the exact graphs it ships (the device's own parity is set beside them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from mlic_edge.rundir import RunDir

Progress = Callable[[str, int, int], None]  # (what, done, total)


def pack(run: RunDir, out: str | Path | None = None, *, images: bool = True,
         progress: Progress | None = None) -> dict[str, Any]:
    """Write the bundle (ONNX files, calibration record, reference.npz and, with ``images``, its eval images);
    returns its path and manifest. Graphs without a parity result on their current bytes are measured first (ONNX
    Runtime, every precision, as ``mlic-edge parity -b onnxruntime``)."""
    from mlic_edge.io import refuse_output_onto_inputs
    from mlic_edge.runtime.deployment.bundle import bundle_path, inspect_bundle, pack as make_bundle

    refuse_output_onto_inputs({"OUT": bundle_path(run, out)}, [run.path, *_eval_dataset_files(run)])
    path = make_bundle(run, out, with_images=images, parity=workstation_parity(run, progress),
                       progress=progress)
    return {"bundle": str(path), **inspect_bundle(path)}


def _eval_dataset_files(run: RunDir) -> list[Path]:
    """The files of the dataset the reference was scored on, where it is here (parity and the bundle's images read
    them); none where it is not (pack then measures no parity and, with images, says why)."""
    from mlic_edge.data import dataset_files, open_dataset
    from mlic_edge.errors import MlicError
    from mlic_edge.runtime.checks.parity import Reference

    try:
        reference = Reference.load(run)
        return dataset_files(open_dataset(reference.spec, role="eval", split=reference.split))
    except MlicError:
        return []


def workstation_parity(run: RunDir, progress: Progress | None = None) -> dict[str, Any] | None:
    """reports/parity.json where it covers every graph's current bytes, else a new ONNX Runtime parity run; None
    (with a warning) where parity cannot run here (no eval images): the bundle then records no figures."""
    from mlic_edge.commands.parity import ParityRequest, parity
    from mlic_edge.console import info, warn
    from mlic_edge.errors import MlicError
    from mlic_edge.io import read_json
    from mlic_edge.runtime.deployment.bundle import graphs_without_parity

    path = run.reports / "parity.json"
    try:
        report = read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        report = None
    missing = graphs_without_parity(run, report)
    if not missing:
        return report
    info(f"pack: no parity result on the current {', '.join(missing)} graph(s): measuring parity with ONNX Runtime "
         "here, recorded in the bundle beside what the device will measure")
    try:
        report = parity(run, ParityRequest(backends=("onnxruntime",)), progress)
    except MlicError as error:
        warn(f"pack: parity not measured ({error.message}): the bundle records no workstation figures")
        return None
    failed = [f"{result['precision']}" for result in report["results"] if not result["passed"]]
    if failed:
        warn(f"pack: {', '.join(failed)} fail parity here (reports/parity.md); packed anyway, and the bundle says so")
    return report


def unpack(bundle: str | Path, out: str | Path | None = None) -> RunDir:
    """A bundle unpacked into a run directory (default runs/NAME), every member's sha256 checked
    (runtime/deployment/bundle.py)."""
    from mlic_edge.runtime.deployment.bundle import unpack as unpack_bundle

    return unpack_bundle(Path(bundle), Path(out) if out is not None else None)
