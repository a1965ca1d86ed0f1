"""Small file helpers shared by every stage: atomic writes and JSON."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from mlic_edge.errors import MlicError



def _temp_name(final: Path) -> Path:
    """An unused hidden temporary name in ``final``'s folder (the rename onto ``final`` is atomic). Only a name: the
    caller holds it before ``_make_empty`` makes the file, so a stop between the two leaves nothing it cannot
    remove (a stop inside tempfile.mkstemp, after the file was made and before its name came back, left one)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    while True:
        candidate = final.parent / f".{final.name}.{secrets.token_hex(4)}{final.suffix or '.tmp'}"
        if not candidate.exists():
            return candidate


def _make_empty(path: Path) -> None:
    """Make the empty file ``path`` (never an existing one), with the permissions of any new file (the umask's)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Nothing half-written is ever left under the final name, and no temporary file is left behind, whatever stops it.
    """
    final = Path(path)
    tmp = _temp_name(final)
    try:
        _make_empty(tmp)
        with _naming_write_failures(final):
            yield tmp
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


_WRITE_FAILURES = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                   errno.EFBIG: "the file is too large for the file system",
                   errno.EROFS: "the file system is read-only"}


@contextlib.contextmanager
def _naming_write_failures(final: Path | None, staged: "StagedFiles | None" = None) -> Iterator[None]:
    """A full disk or read-only file system while writing becomes one line naming the file and the fix (the
    temporary file is removed by the caller, so the old file, if any, is untouched)."""
    try:
        yield
    except OSError as failure:
        if failure.errno not in _WRITE_FAILURES:
            raise
        names = [_STAGED_FOR.get(final, final)] if final is not None else list(staged.staged) if staged else []
        target = ", ".join(str(name) for name in names) or failure.filename or "a file"
        raise MlicError(f"cannot write {target}: {_WRITE_FAILURES[failure.errno]} (what was there before is unchanged)",
                        hint="free space there or write somewhere else, then run the command again") from failure


_STAGED_FOR: dict[Path, Path] = {}  # temporary name -> the file it will become, to name the right file in errors


class StagedFiles:
    """Files being written under temporary names, for :func:`atomic_files`."""

    def __init__(self) -> None:
        self.staged: dict[Path, Path] = {}

    def path(self, final: str | os.PathLike[str]) -> Path:
        """The temporary path to write ``final``'s new content to."""
        final = Path(final)
        if final not in self.staged:
            tmp = self.staged[final] = _temp_name(final)  # held before the file exists: atomic_files removes it
            _STAGED_FOR[tmp] = final
            _make_empty(tmp)
        return self.staged[final]


@contextlib.contextmanager
def atomic_files() -> Iterator[StagedFiles]:
    """Several files that belong together (an artefact and the record describing it): each is written to
    ``staged.path(final)`` and all are renamed into place, in the order asked, when the block succeeds. A stop signal
    waits until the renames are done; an error or a stop inside the block renames none and removes the temporaries."""
    from mlic_edge.stops import signals_deferred

    staged = StagedFiles()
    try:
        with _naming_write_failures(None, staged):
            yield staged
            with signals_deferred():
                for final, tmp in staged.staged.items():
                    os.replace(tmp, final)
    finally:
        for tmp in staged.staged.values():
            _STAGED_FOR.pop(tmp, None)
            if tmp.exists():
                tmp.unlink()


def json_text(data: Any) -> str:
    """The JSON every file of a run is written as (indented, numpy values and paths as plain JSON)."""
    return json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n"


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(data))


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


def probe_writable(folder: str | os.PathLike[str]) -> None:
    """Create ``folder`` if needed and prove a file can be made in it (raises OSError): checks that hold for root
    too, unlike ``os.access``, so a stage can refuse before any work instead of failing half-way."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
    os.close(fd)
    os.unlink(probe)


def require_writable(folder: str | os.PathLike[str], *, error: type[MlicError] = MlicError, create: bool = True,
                     hint: str = "fix the folder's permissions or choose another folder",
                     what: str | None = None) -> None:
    """Refuse, before any work, a folder that cannot take new files: the one check every stage makes.

    ``create``: make the folder (and parents) and prove a file can be made there (true for root too). Otherwise
    nothing is made: the folder, or the nearest existing folder above it, must be writable (``os.access``)."""
    folder = Path(folder)
    if create:
        try:
            probe_writable(folder)
        except OSError as failure:
            raise error(f"{what or f'cannot write to {folder}'}: {failure.strerror or failure}", hint=hint) from failure
        return
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise error(what or f"cannot write to {existing}", hint=hint)


Identity = tuple[int, int]  # (st_dev, st_ino): the file itself, whatever path, symlink or hard link names it


def refuse_output_onto_inputs(outputs: Mapping[str, str | os.PathLike[str] | None],
                              inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse, before any work, an output that would overwrite what the command reads, or another of its outputs:
    the one check every command that writes a file a user names makes (docs/design.md, "Outputs never overwrite
    inputs").

    ``outputs``: ``{option: path}`` as the user named them (None: not given). ``inputs``: every file the command reads,
    and every folder it reads files from by name (a run directory): nothing may be written inside such a folder, not
    even a new file, which a later command would take for one of the folder's own. Files are compared by identity
    (device and inode), so a symlink or a hard link to an input is caught as its own path is. An output that does not
    exist yet is fine unless it falls inside such a folder; an input that does not exist is left out."""
    files: dict[Identity, Path] = {}
    folders: dict[Identity, Path] = {}
    for path in map(Path, inputs):
        try:
            info = path.stat()
        except (OSError, ValueError):
            continue
        (folders if stat.S_ISDIR(info.st_mode) else files).setdefault((info.st_dev, info.st_ino), path)
    seen: dict[Identity | Path, str] = {}
    for option, given in outputs.items():
        if given is None:
            continue
        output = Path(given)
        real = Path(os.path.realpath(output))
        overwritten, folder = _input_overwritten(real, output, files, folders)
        if overwritten:
            raise MlicError(f"{option} {output} {overwritten}",
                            hint=f"choose another {option}" + (f", outside {folder}" if folder else ""))
        key = _identity(real) or real
        if key in seen:
            raise MlicError(f"{option} and {seen[key]} are the same file {output}",
                            hint="give each output its own file")
        seen[key] = option


def _identity(path: Path) -> Identity | None:
    try:
        info = path.stat()
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def _input_overwritten(real: Path, output: Path, files: dict[Identity, Path],
                       folders: dict[Identity, Path]) -> tuple[str | None, Path | None]:
    """(how writing ``output``, whose resolved path is ``real``, would destroy an input, or None; the folder read
    by the command it falls in, if any)."""
    reads = "which this command reads"
    identity = _identity(real)
    if identity in files:
        named = files[identity]
        return ("is a file this command reads" if named == output else f"is the same file as {named}, {reads}"), None
    for ancestor in (real, *real.parents):
        folder = folders.get(_identity(ancestor))
        if folder is not None:
            existing_file = identity is not None and ancestor != real
            return (f"would overwrite {real} in {folder}, {reads}" if existing_file
                    else f"would write into {folder}, {reads}"), folder
    if identity is None:
        return None, None
    if real.is_dir():
        held = next((path for path in (*files.values(), *folders.values())
                     if identity in map(_identity, Path(os.path.realpath(path)).parents)), None)
        return (f"is a folder holding {held}, {reads}" if held else None), None
    if real.stat().st_nlink > 1:  # a hard link: look for its other names inside the folders read
        for folder in folders.values():
            for parent, _, names in os.walk(folder):
                named = next((Path(parent) / name for name in names if _identity(Path(parent) / name) == identity),
                             None)
                if named is not None:
                    return f"is the same file as {named} in {folder}, {reads}", folder
    return None, None


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (ONNX files, engines, calibration images, bundles)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
