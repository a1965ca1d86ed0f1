"""Deployable bundles: one ``.mlic.tar.gz`` with what a device needs to build, run and check a model, and nothing
it cannot use (no checkpoint, no engines, no training-only files).

A bundle holds ``bundle.json`` (format, model, labels, preprocessing, precisions, the sha256 and size of every
other member, and for each graph the parity figures measured on the workstation with exactly those bytes), a device
``run.json`` (the original minus its training-only sections; the original itself is kept
as ``origin/run.json``), the fp32/fp16/int8 ONNX files present, the calibration records of this fp32 model,
``reference.npz`` and, by default, the reference's eval images as a CSV dataset under ``images/`` (so ``parity``
needs no dataset on the device).

``unpack`` extracts into a temporary folder beside the target, checks every member against ``bundle.json``, points
run.json and reference.npz at the unpacked images, and only then moves the files into place. The unpacked run keeps
``bundle.json``: ``bundled_graph`` checks a graph against it before the device builds from or reports on it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO, Any, Callable

import numpy as np

from mlic_edge import __version__
from mlic_edge.errors import DataError, LineageError, MlicError, RunDirError
from mlic_edge.export.lineage import (BUNDLE_MANIFEST, check_graph_bytes, check_onnx, file_sha256,
                                     recorded_graph_sha256)
from mlic_edge.io import atomic_path, read_json, require_writable, sha256_file, write_json
from mlic_edge.rundir import DEFAULT_RUNS_ROOT, RunDir
from mlic_edge.runtime.checks.parity import Reference, ReferenceImages
from mlic_edge.spec import PRECISIONS, DatasetSection, RunSpec, rebuild_command
from mlic_edge.stops import signals_deferred

BUNDLE_FORMAT = 2  # 2: graphs carry their sha256 and workstation parity (an older reader would re-quantize)
BUNDLE_SUFFIX = ".mlic.tar.gz"
MANIFEST = BUNDLE_MANIFEST
ORIGIN_RUN_JSON = "origin/run.json"
IMAGES_DIR = "images"
CALIBRATION_DIR = "calibration"
TRAIN_ONLY_KEYS = ("train",)
TRAIN_ONLY_DATASET_KEYS = ("train_split", "train_images", "train_class_counts")
PARITY_FIGURES = ("backend", "device", "version", "precision", "graph", "mAP", "delta_mAP_points", "labelset_agreement",
                  "max_abs_diff", "images", "tolerance_points", "labelset_floor", "passed")
_CHUNK = 1 << 20

Progress = Callable[[str, int, int], None]  # (what, done, total)


# --------------------------------------------------------------------------------------------------------- pack
def default_bundle_path(run: RunDir) -> Path:
    """``runs/msrn`` -> ``runs/msrn.mlic.tar.gz``: beside the run, named like it, so ``--model NAME`` round-trips."""
    return run.path.parent / f"{run.path.name}{BUNDLE_SUFFIX}"


def bundle_path(run: RunDir, out: str | Path | None = None) -> Path:
    """The file ``pack`` writes: ``out``, or ``<run name>.mlic.tar.gz`` in the folder ``out`` or beside the run."""
    if out is None:
        return default_bundle_path(run)
    out = Path(out)
    return out / f"{run.path.name}{BUNDLE_SUFFIX}" if out.is_dir() else out


def pack(run: RunDir, out: Path | None = None, *, with_images: bool = True, progress: Progress | None = None,
         parity: dict[str, Any] | None = None) -> Path:
    """Write the bundle of ``run`` to ``out`` (a file, or a folder to put ``<run name>.mlic.tar.gz`` in).

    ``parity``: a parity report of this run (reports/parity.json); each graph records the results measured on its
    exact bytes (matched by sha256), which the device's parity is later set beside."""
    spec = run.spec()
    for path in (run.onnx("fp32"), run.reference):
        if not path.is_file():
            raise RunDirError(f"cannot pack {run.path}: {path.name} is missing",
                              hint=f"run `mlic-edge export --run {run.path}` first")
    for precision, _, path in run.onnx_graphs():  # never ship a stale model: each ONNX and the reference are current
        check_onnx(run, precision, spec, path=path)
    Reference.load(run)
    out = bundle_path(run, out)
    require_writable(out.parent, error=RunDirError, create=False, hint="choose a writable folder with --out DIR")

    members: dict[str, Path | bytes] = {name: run.path / name for name in _run_files(run)}
    device_spec = replace(spec, **{key: None for key in TRAIN_ONLY_KEYS})
    images_section = None
    if with_images:
        images_section, image_members, reference_bytes = _reference_images(run)
        members.update(image_members)
        if reference_bytes is not None:
            members["reference.npz"] = reference_bytes
        device_spec = replace(device_spec, dataset=_bundled_dataset(spec.dataset_record, images_section))
    members["run.json"] = _json_bytes(device_spec.to_run_json())
    members[ORIGIN_RUN_JSON] = run.run_json.read_bytes()

    say = progress or (lambda what, done, total: None)
    files = {}
    for done, (name, source) in enumerate(sorted(members.items()), 1):
        files[name] = _facts(source)
        say("pack: hashing", done, len(members))
    manifest = {
        "format": BUNDLE_FORMAT,
        "mlic_edge": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "name": run.path.name,
        "model": spec.model,
        "backbone": spec.backbone,
        "labels": spec.labels,
        "preprocessing": spec.preprocessing.as_dict(),
        "precisions": [p for p in PRECISIONS if run.onnx(p).is_file()],
        "graphs": {path.name: _graph_record(precision, variant, files[path.name], parity)
                   for precision, variant, path in run.onnx_graphs()},
        "images": images_section,
        "files": files,
    }
    with atomic_path(out) as tmp, tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        _add_member(tar, MANIFEST, _json_bytes(manifest))
        for done, (name, source) in enumerate(sorted(members.items()), 1):
            _add_member(tar, name, source)
            say("pack: writing", done, len(members))
    return out


def _graph_record(precision: str, variant: str | None, facts: dict[str, Any],
                  parity: dict[str, Any] | None) -> dict[str, Any]:
    """What the bundle says of one graph: its precision and form, its bytes' identity, and the workstation's parity
    results on exactly those bytes (an empty list: none was measured on them)."""
    measured = [{key: result.get(key) for key in PARITY_FIGURES}
                for result in (parity or {}).get("results", [])
                if (result.get("onnx") or {}).get("sha256") == facts["sha256"]]
    where = {key: (parity or {}).get(key) for key in ("machine", "created")}
    return {"precision": precision, "graph": variant or ("tensorrt" if precision == "int8" else None),
            "sha256": facts["sha256"], "size": facts["size"],
            "workstation_parity": [{**result, **where} for result in measured]}


def graphs_without_parity(run: RunDir, parity: dict[str, Any] | None) -> list[str]:
    """The precisions whose ONNX (any of its graphs) has no result in ``parity`` measured on its current bytes."""
    measured = {(result.get("onnx") or {}).get("sha256") for result in (parity or {}).get("results", [])}
    missing = [precision for precision, _, path in run.onnx_graphs() if file_sha256(path) not in measured]
    return list(dict.fromkeys(missing))


def _run_files(run: RunDir) -> list[str]:
    """The ONNX files present, reference.npz, and the calibration records made for this model.onnx."""
    names = [path.name for _, _, path in run.onnx_graphs()] + [run.reference.name]
    fp32_sha = file_sha256(run.onnx("fp32"))
    for record in sorted((run.path / CALIBRATION_DIR).glob("*/record.json")):
        try:
            made_for = read_json(record).get("fp32_onnx_sha256")
        except (OSError, ValueError):
            continue
        if made_for != fp32_sha:  # a record of an earlier model.onnx: useless on the device
            continue
        names += [f.relative_to(run.path).as_posix() for f in sorted(record.parent.iterdir())
                  if f.is_file() and not f.name.startswith(".")]
    return names


def _reference_images(run: RunDir) -> tuple[dict[str, Any], dict[str, Path | bytes], bytes | None]:
    """The reference's eval images as a CSV dataset folder (``images/``), and reference.npz bytes when its image
    ids had to be renamed (ids outside the dataset root)."""
    reference = Reference.load(run)
    try:
        paths = ReferenceImages(run, reference).paths
    except MlicError as error:
        raise RunDirError(f"cannot pack the reference images: {error.message}",
                          hint="make the eval dataset readable here, or pack without images (parity on the device "
                               "then needs --data)") from error
    names = [_image_member_name(index, image_id) for index, image_id in enumerate(reference.image_ids)]
    members: dict[str, Path | bytes] = {f"{IMAGES_DIR}/{name}": path for name, path in zip(names, paths)}
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["image", "labels"])
    for name, row in zip(names, reference.targets):
        writer.writerow([name, ";".join(label for label, value in zip(reference.labels, row) if value == 1)])
    members[f"{IMAGES_DIR}/{reference.split}.csv"] = table.getvalue().encode()
    members[f"{IMAGES_DIR}/classes.txt"] = ("\n".join(reference.labels) + "\n").encode()
    renamed = names != reference.image_ids
    reference_bytes = _reference_with(run.reference, image_ids=np.array(names)) if renamed else None
    section = {"folder": IMAGES_DIR, "format": "csv", "split": reference.split, "count": len(names),
               "original_spec": reference.spec}
    return section, members, reference_bytes


def _image_member_name(index: int, image_id: str) -> str:
    """The image's id when it is a safe relative path (parity matches by id), else a numbered name."""
    path = PurePosixPath(image_id)
    if _is_safe_member(image_id) and path.suffix.lower() not in (".csv", ".txt"):  # those name splits, classes
        return path.as_posix()
    return f"renamed/{index:06d}_{path.name}"


def _bundled_dataset(dataset: DatasetSection, images: dict[str, Any]) -> DatasetSection:
    """run.json's dataset section for the bundled images; unpack fills in their absolute path."""
    return replace(dataset, **{key: None for key in TRAIN_ONLY_DATASET_KEYS}, spec=f"csv:{IMAGES_DIR}", format="csv",
                   eval_split=images["split"], eval_images=images["count"],
                   extra={**dataset.extra, "original_spec": dataset.spec})


def _reference_with(path: Path, **changes: np.ndarray) -> bytes:
    """reference.npz's bytes with some arrays replaced."""
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    arrays.update(changes)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()


def _facts(source: Path | bytes) -> dict[str, Any]:
    if isinstance(source, bytes):
        return {"sha256": hashlib.sha256(source).hexdigest(), "size": len(source)}
    return {"sha256": sha256_file(source), "size": source.stat().st_size}


def _add_member(tar: tarfile.TarFile, name: str, source: Path | bytes) -> None:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = 0o644, int(time.time())
    if isinstance(source, bytes):
        info.size = len(source)
        tar.addfile(info, io.BytesIO(source))
        return
    info.size = source.stat().st_size
    with source.open("rb") as handle:
        tar.addfile(info, handle)


# ------------------------------------------------------------------------------------------------- on the device
def bundle_manifest(run: RunDir) -> dict[str, Any] | None:
    """bundle.json of a run unpacked from a bundle; None for a run made on this machine."""
    path = run.path / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as error:
        raise LineageError(f"{path} is damaged ({error}): what this run was shipped as cannot be checked",
                           hint="unpack the bundle again: mlic-edge build --bundle FILE --out " + str(run.path))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise LineageError(f"{path} has no file list: what this run was shipped as cannot be checked",
                           hint="unpack the bundle again: mlic-edge build --bundle FILE --out " + str(run.path))
    return manifest


def bundled_graph(run: RunDir, path: Path) -> dict[str, Any] | None:
    """The bundle's record of graph ``path`` once its bytes are checked to be the ones shipped; None where the run
    is not a bundle's, the bundle did not ship that file, or this device made it since (``--requantize``)."""
    manifest = bundle_manifest(run)
    path = Path(path)
    shipped = None if manifest is None else manifest["files"].get(path.name)
    if shipped is None:
        return None
    record = (manifest.get("graphs") or {}).get(path.name) or {}
    precision = record.get("precision", "fp32")
    if not path.is_file():
        raise LineageError(f"{path} is missing: bundle {manifest.get('name')} shipped it, verified on the workstation",
                           hint=f"unpack the bundle again (mlic-edge build --bundle FILE --out {run.path})" + (
                               f", or make a new one here: {rebuild_command(run.path, precision)} --requantize"
                               if precision != "fp32" else ""))
    check_graph_bytes(run, path, precision)
    if (recorded_graph_sha256(run, path) or ("", ""))[1] != BUNDLE_MANIFEST:
        return None
    return {"sha256": shipped["sha256"], "size": shipped.get("size"), "workstation_parity": [], **record}


# ------------------------------------------------------------------------------------------------------- unpack
def inspect_bundle(bundle: Path) -> dict[str, Any]:
    """bundle.json of ``bundle`` (nothing is extracted or verified beyond reading it)."""
    bundle = Path(bundle)
    with _open_bundle(bundle) as tar:
        return _read_manifest(bundle, tar, _safe_members(bundle, tar))


def unpack(bundle: Path, out: Path | None = None, *, progress: Progress | None = None) -> RunDir:
    """Unpack ``bundle`` into a run directory (default ``runs/<name>``), every member checked before it lands.

    Unpacking the same bundle again over its own unpack puts the bundle's files back and keeps what the device
    made there (engines, reports).
    """
    bundle = Path(bundle)
    say = progress or (lambda what, done, total: None)
    with _open_bundle(bundle) as tar:
        members = _safe_members(bundle, tar)
        manifest = _read_manifest(bundle, tar, members)
        _check_member_list(bundle, manifest, members)
        target = (Path(out) if out is not None else DEFAULT_RUNS_ROOT / manifest["name"]).resolve()
        _check_target(target, manifest)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.unpack.", dir=target.parent))
        try:
            work.chmod(0o755)  # mkdtemp makes 0700; the run directory gets the usual permissions
            files = manifest["files"]
            for done, name in enumerate(sorted(files), 1):
                _extract_checked(bundle, tar, members[name], work / name, files[name])
                say("unpack: checking", done, len(files))
            write_json(work / MANIFEST, manifest)
            if manifest.get("images"):
                _point_at_images(work, target / manifest["images"]["folder"])
            _move_into_place(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return RunDir(target)


def _open_bundle(bundle: Path) -> tarfile.TarFile:
    if not bundle.is_file():
        raise DataError(f"bundle {bundle} does not exist", hint="give the .mlic.tar.gz written by `mlic-edge pack`")
    try:
        return tarfile.open(bundle, "r:gz")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise _unreadable(bundle, error) from error


def _unreadable(bundle: Path, error: Exception) -> DataError:
    return DataError(f"bundle {bundle} is not a readable .tar.gz (truncated or another kind of file: {error})",
                     hint="copy it again, or re-pack it with `mlic-edge pack`")


def _is_safe_member(name: str) -> bool:
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name \
        and path.as_posix() == name


def _safe_members(bundle: Path, tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """Every member by name; refuses anything but plain files and folders under relative, normalised names."""
    try:
        listing = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise _unreadable(bundle, error) from error
    members = {}
    for member in listing:
        if not _is_safe_member(member.name.rstrip("/") if member.isdir() else member.name):
            raise DataError(f"bundle {bundle} holds an unsafe path {member.name!r}",
                            hint="refused: a bundle only holds relative paths; re-pack it with `mlic-edge pack`")
        if not (member.isfile() or member.isdir()):
            raise DataError(f"bundle {bundle} holds {member.name!r}, which is not a plain file",
                            hint="refused: a bundle holds no links or devices; re-pack it with `mlic-edge pack`")
        if member.isfile():
            members[member.name] = member
    return members


def _read_manifest(bundle: Path, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo]) -> dict[str, Any]:
    if MANIFEST not in members:
        raise DataError(f"bundle {bundle} is incomplete: {MANIFEST} is missing",
                        hint="copy it again, or re-pack it with `mlic-edge pack`")
    try:
        manifest = json.loads(tar.extractfile(members[MANIFEST]).read())
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise _unreadable(bundle, error) from error
    except ValueError as error:
        raise DataError(f"bundle {bundle} has an unreadable {MANIFEST} ({error})",
                        hint="re-pack it with `mlic-edge pack`") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or "name" not in manifest:
        raise DataError(f"bundle {bundle} has no file list in {MANIFEST}", hint="re-pack it with `mlic-edge pack`")
    name = str(manifest["name"])
    if not _is_safe_member(name) or "/" in name:
        raise DataError(f"bundle {bundle} names its run {name!r}, not a folder name",
                        hint="re-pack it with `mlic-edge pack`")
    if manifest.get("format", 0) > BUNDLE_FORMAT:
        raise DataError(f"bundle {bundle} has format {manifest['format']}; this mlic-edge reads up to "
                        f"{BUNDLE_FORMAT}", hint="upgrade mlic-edge on this device")
    return manifest


def _check_member_list(bundle: Path, manifest: dict[str, Any], members: dict[str, tarfile.TarInfo]) -> None:
    listed, present = set(manifest["files"]), set(members) - {MANIFEST}
    if listed - present:
        missing = sorted(listed - present)
        raise DataError(f"bundle {bundle} is incomplete: {', '.join(missing[:3])}"
                        + (f" and {len(missing) - 3} more" if len(missing) > 3 else "") + " missing",
                        hint="copy it again, or re-pack it with `mlic-edge pack`")
    if present - listed:
        extra = sorted(present - listed)
        raise DataError(f"bundle {bundle} was altered after packing: {', '.join(extra[:3])} not in {MANIFEST}",
                        hint="re-pack it on the training machine with `mlic-edge pack`")
    for name in listed:
        if not _is_safe_member(name):
            raise DataError(f"bundle {bundle} lists an unsafe path {name!r}", hint="re-pack it with `mlic-edge pack`")


def _check_target(target: Path, manifest: dict[str, Any]) -> None:
    """Before anything is written: the folder can take files, and a target already there is this bundle's."""
    if target.exists():
        if not target.is_dir():
            raise RunDirError(f"{target} exists and is not a folder", hint="pass --out DIR for another folder")
        if any(target.iterdir()) and not _same_bundle(target, manifest):
            raise RunDirError(f"{target} already exists and is not an unpack of this bundle",
                              hint=f"pass --out DIR for another folder, or delete {target}")
    require_writable(target, error=RunDirError, create=False, hint="choose a writable folder with --out DIR",
                     what=f"cannot write to {target} (read-only install folder)")
    target.parent.mkdir(parents=True, exist_ok=True)


def _same_bundle(target: Path, manifest: dict[str, Any]) -> bool:
    try:
        return read_json(target / MANIFEST) == manifest
    except (OSError, ValueError):
        return False


def _extract_checked(bundle: Path, tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path,
                     expected: dict[str, Any]) -> None:
    digest = hashlib.sha256()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        source: IO[bytes] = tar.extractfile(member)
        with dest.open("wb") as handle:
            while block := source.read(_CHUNK):
                digest.update(block)
                handle.write(block)
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise _unreadable(bundle, error) from error
    if digest.hexdigest() != expected["sha256"] or member.size != expected["size"]:
        raise DataError(f"bundle {bundle} was altered after packing: {member.name} differs "
                        f"(sha256 {digest.hexdigest()[:12]}…, packed {expected['sha256'][:12]}…)",
                        hint="re-pack it on the training machine with `mlic-edge pack`")


def _point_at_images(work: Path, images: Path) -> None:
    """run.json and reference.npz name the bundled images by their absolute path on this device."""
    spec = f"csv:{images}"
    run_spec = RunSpec.from_run_json(read_json(work / "run.json"), work / "run.json")
    run_spec = replace(run_spec, dataset=replace(run_spec.dataset_record, spec=spec),
                       reference=run_spec.reference and replace(run_spec.reference, spec=spec))
    write_json(work / "run.json", run_spec.to_run_json())
    (work / "reference.npz").write_bytes(_reference_with(work / "reference.npz", spec=np.array(spec)))


def _move_into_place(work: Path, target: Path) -> None:
    """A new target takes the whole folder in one rename; an earlier unpack gets each file replaced."""
    if not target.exists():
        os.replace(work, target)
        return
    with signals_deferred():  # a stop waits until every file is replaced: never half an old, half a new run
        for path in sorted(p for p in work.rglob("*") if p.is_file()):
            dest = target / path.relative_to(work)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
