"""Where each artefact of a run came from, and the refusal when a stage's input is not what the run says it is
(docs/design.md, "Lineage"). No torch: the build stage and the runtime check lineage on a device.

```
checkpoint.pt ─sha256─► model.onnx            metadata source_checkpoint_sha256
model.onnx    ─sha256─► model.fp16.onnx       metadata source_onnx_sha256
              ─sha256─► model.int8.onnx       metadata source_onnx_sha256, calibration_key
                        calibration/<key>/    record.json fp32_onnx_sha256
model.<p>.onnx ─sha256─► engines/…            manifest onnx.sha256 (runtime/engines/manifest.py)
checkpoint.pt ─sha256─► reference.npz         source_checkpoint_sha256
every ONNX    ─sha256─► run.json onnx_sha256  written with the file (RunDir.transaction); a bundle's bundle.json
```
Every command that loads a graph checks its bytes against that record (``check_onnx``): a file replaced or changed
in place (one weight is enough) is refused, on the workstation and on a device alike.
A file from before lineage was recorded has no stamp and is taken as it is; a stamp that does not match is refused
in one line with the command that makes the file again. The checkpoint is not on a device (bundles leave it out):
there the ONNX's stamp is the model's identity, and the reference is checked against it.
"""

from __future__ import annotations

import functools
import json
import zipfile
from pathlib import Path
from typing import Any

from mlic_edge.errors import LineageError
from mlic_edge.io import read_json, sha256_file
from mlic_edge.rundir import RunDir
from mlic_edge.spec import GRAPH_HASHES, RunSpec, rebuild_command, retrain_command

BUNDLE_MANIFEST = "bundle.json"  # kept in a run unpacked from a bundle (runtime/deployment/bundle.py)
CHECKPOINT_SHA = "source_checkpoint_sha256"  # the ONNX metadata key and the reference.npz array of it
ONNX_SHA = "source_onnx_sha256"
FEEDING_FIELDS = ("labels", "img_size", "mean", "std", "resize")  # what must agree between run.json and an ONNX


def export_command(run: RunDir) -> str:
    return f"mlic-edge export --run {run.path}"


def checkpoint_sha256(run: RunDir) -> str | None:
    """The sha256 of the run's checkpoint.pt, or None where it is not here (a device)."""
    return file_sha256(run.checkpoint) if run.checkpoint.is_file() else None


def onnx_metadata(run: RunDir, precision: str, path: Path | None = None) -> dict[str, str]:
    """The metadata of the run's ONNX of ``precision`` (or of ``path``), refusing a file that cannot be read."""
    path = path or run.onnx(precision)
    fix = export_command(run) if precision == "fp32" else rebuild_command(run.path, precision)
    if path.is_file() and path.stat().st_size == 0:  # onnx parses no bytes as an empty model without complaint
        raise LineageError(f"{path} is empty (0 bytes)", hint=f"make it again: {fix}")
    try:
        return dict(_file_metadata(path))
    except Exception as error:  # protobuf's DecodeError, onnx's own errors, a truncated file: all the same here
        raise LineageError(f"{path} cannot be read as ONNX ({type(error).__name__}: {str(error).strip()[:120]})",
                          hint=f"make it again: {fix}") from None


def check_onnx(run: RunDir, precision: str, spec: RunSpec | None = None, path: Path | None = None) -> dict[str, str]:
    """Refuse the run's ONNX of ``precision`` when it feeds or names classes differently from run.json, or was
    made from another checkpoint (fp32) or another model.onnx (fp16, int8). Returns its metadata."""
    path = path or run.onnx(precision)
    metadata = onnx_metadata(run, precision, path)
    spec = spec or run.spec()
    fix = export_command(run) if precision == "fp32" else rebuild_command(run.path, precision)
    check_graph_bytes(run, path, precision)
    if "labels" in metadata:
        try:
            made_as = RunSpec.from_onnx_metadata(metadata)
        except (KeyError, ValueError, TypeError) as error:
            raise LineageError(f"{path} has damaged mlic-edge metadata ({type(error).__name__}: {error})",
                              hint=f"make it again: {fix}") from None
        for name in FEEDING_FIELDS:
            if getattr(made_as, name) != getattr(spec, name):
                raise LineageError(f"{path.name} was made for other {name} than {run.run_json} "
                                  f"({_short(getattr(made_as, name))} vs {_short(getattr(spec, name))})",
                                  hint=f"make it again from this run: {fix}")
    if precision == "fp32":
        recorded, current = metadata.get(CHECKPOINT_SHA), checkpoint_sha256(run)
        if recorded and current and recorded != current:
            if not zipfile.is_zipfile(run.checkpoint):  # torch.save writes a zip: this one cannot be exported from
                raise LineageError(f"{run.checkpoint} is damaged (not a readable checkpoint), so {path.name} cannot "
                                   "be checked against it",
                                   hint=f"restore it from a copy of the run, or make it again: "
                                        f"{retrain_command(run.path)}")
            raise LineageError(f"{path.name} was exported from another {run.checkpoint.name} (the checkpoint changed "
                              "since)", hint=f"export again: {fix}")
    else:
        recorded = metadata.get(ONNX_SHA)
        if recorded and run.onnx("fp32").is_file():
            check_graph_bytes(run, run.onnx("fp32"), "fp32")  # a damaged model.onnx is named, not what was made from it
            onnx_metadata(run, "fp32")
        if recorded and run.onnx("fp32").is_file() and recorded != file_sha256(run.onnx("fp32")):
            raise LineageError(f"{path.name} was made from another {run.onnx('fp32').name} (it was exported again "
                              "since)", hint=f"rebuild: {fix}")
    return metadata


def recorded_graph_sha256(run: RunDir, path: Path) -> tuple[str, str] | None:
    """(sha256, where it was recorded) of the run's graph ``path``: run.json's record of the last file mlic-edge put
    there, else the bundle's the run was unpacked from; None for a file outside the run folder or from before
    either record existed (taken as it is)."""
    path = Path(path)
    if path.resolve().parent != run.path.resolve():
        return None  # a staged or temporary graph: checked when it is put in place
    recorded = _file_table(run.spec().onnx_sha256, run.run_json, GRAPH_HASHES).get(path.name)
    shipped = (_mapping_field(run.path / BUNDLE_MANIFEST, "files").get(path.name) or {}).get("sha256")
    if shipped and recorded in (None, shipped):
        return shipped, BUNDLE_MANIFEST
    return (recorded, "run.json") if recorded else None  # made here, also in a bundle's run (--requantize)


def check_graph_bytes(run: RunDir, path: Path, precision: str) -> None:
    """Refuse a graph of the run whose bytes are not the ones recorded when it was made or shipped."""
    recorded = recorded_graph_sha256(run, path)
    if recorded is None:
        return
    expected, where = recorded
    actual = file_sha256(Path(path))
    if actual == expected:
        return
    if where == BUNDLE_MANIFEST:
        hint = f"unpack the bundle again (mlic-edge build --bundle FILE --out {run.path})" + (
            f", or make a new one here: {rebuild_command(run.path, precision)} --requantize" if precision != "fp32"
            else "")
        raise LineageError(f"{Path(path).name} differs from the one the bundle shipped (sha256 {actual[:12]}…, "
                           f"shipped {expected[:12]}…): it is not the graph verified on the workstation", hint=hint)
    fix = export_command(run) if precision == "fp32" else rebuild_command(run.path, precision)
    raise LineageError(f"{Path(path).name} differs from the one mlic-edge wrote into {run.path} (sha256 "
                       f"{actual[:12]}…, recorded in run.json {expected[:12]}…): it was replaced or changed since",
                       hint=f"make it again: {fix}")


def _mapping_field(path: Path, key: str) -> dict:
    """``key`` of the JSON object in ``path`` ({} where the file or the key is absent), refusing a damaged one."""
    try:
        data = read_json(path) if path.is_file() else {}
    except (OSError, ValueError) as error:
        data = error
    return _file_table(data.get(key, {}) if isinstance(data, dict) else data, path, key)


def _file_table(value: Any, path: Path, key: str) -> dict:
    """``value``, the record ``key`` of ``path``, if it is a table of files; else the refusal naming the damage."""
    if not isinstance(value, dict) or not all(isinstance(v, (str, dict)) for v in value.values()):
        raise LineageError(f"{path} is damaged ({key!r} is not a table of files: {str(value)[:60]}): the graphs' "
                           "recorded hashes cannot be checked",
                           hint=f"restore {path.name} from a copy of the run, or make the run's graphs again")
    return value


def check_reference(run: RunDir, reference_checkpoint: str | None, reference_labels: list[str]) -> None:
    """Refuse a reference.npz that scored another model than the run's model.onnx (or other classes)."""
    spec = run.spec()
    if reference_labels != spec.labels:
        raise LineageError(f"{run.reference} was written for other labels than {run.run_json}",
                          hint=f"write it again: {export_command(run)}")
    if not reference_checkpoint:
        return
    # The model the reference is compared with is model.onnx's (whether that is current is check_onnx's question);
    # without it, the checkpoint's.
    made_from = onnx_metadata(run, "fp32").get(CHECKPOINT_SHA) if run.onnx("fp32").is_file() else None
    made_from = made_from or checkpoint_sha256(run)
    if made_from and made_from != reference_checkpoint:
        raise LineageError(f"{run.reference} scored another model than this run's (made from checkpoint "
                          f"{reference_checkpoint[:12]}…, the run's is {made_from[:12]}…)",
                          hint=f"write it again: {export_command(run)}")


# parity, build and run check the same files several times (the reference, then each backend): each file is read once
# per version of it (every artefact is replaced by a rename, so a new version is a new inode or mtime).
def _version(path: Path) -> tuple[str, int, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns


def file_sha256(path: Path) -> str:
    """sha256 of ``path``, hashed once per version of the file (the graphs are hashed by several checks)."""
    return _sha256_of(_version(path))


def _file_metadata(path: Path) -> tuple[tuple[str, str], ...]:
    return _metadata_of(_version(path))


@functools.lru_cache(maxsize=16)
def _sha256_of(version: tuple[str, int, int, int]) -> str:
    return sha256_file(version[0])


@functools.lru_cache(maxsize=16)
def _metadata_of(version: tuple[str, int, int, int]) -> tuple[tuple[str, str], ...]:
    from mlic_edge.export.metadata import read_metadata

    return tuple(read_metadata(version[0]).items())


def _short(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."
