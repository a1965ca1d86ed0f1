"""The run directory: the one place every stage reads from and writes to (docs/design.md, "The flow of one model")."""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from mlic_edge.errors import RunDirError
from mlic_edge.io import StagedFiles, atomic_files, json_text, read_json
from mlic_edge.spec import DEFAULT_PRECISION, DEFAULT_RUNS_ROOT, merged_run_json, run_json_sections, train_first_hint

if TYPE_CHECKING:
    from mlic_edge.spec import RunSpec

ENGINES_DIR = "engines"  # <run>/engines/<target>/model.<precision>.engine + .json (runtime/engines/manifest.py)


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def resolve(cls, run: str | Path | None = None, model: str | None = None) -> "RunDir":
        """``--run DIR`` wins; otherwise ``--model NAME`` means ``runs/NAME``."""
        if run is not None:
            return cls(Path(run))
        if model is not None:
            return cls(DEFAULT_RUNS_ROOT / model)
        raise RunDirError("no run directory given", hint="pass --run DIR (or --model NAME for runs/NAME)")

    # Files of the run, one name each.
    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "last.pt"

    @property
    def reference(self) -> Path:
        return self.path / "reference.npz"

    @property
    def reports(self) -> Path:
        return self.path / "reports"

    @property
    def engines(self) -> Path:
        return self.path / ENGINES_DIR

    def engine_manifests(self, precision: str | None = None) -> list[Path]:
        """Every engine's manifest (``engines/<target>/model.<precision>.json``), of ``precision`` if given, sorted;
        a glob, so ``--backend auto`` can tell whether there is an engine without importing the engines modules."""
        return sorted(self.engines.glob(f"*/model.{precision or '*'}.json"))

    def onnx(self, precision: str = DEFAULT_PRECISION, variant: str | None = None) -> Path:
        from mlic_edge.spec import onnx_file_name

        return self.path / onnx_file_name(precision, variant)

    def onnx_graphs(self) -> list[tuple[str, str | None, Path]]:
        """(precision, variant or None, path) of every precision's ONNX present, variants after their precision's."""
        from mlic_edge.spec import ONNX_VARIANTS, PRECISIONS

        graphs = [(precision, variant, self.onnx(precision, variant)) for precision in PRECISIONS
                  for variant in (None, *ONNX_VARIANTS.get(precision, ()))]
        return [graph for graph in graphs if graph[2].is_file()]

    # run.json
    def exists(self) -> bool:
        return self.run_json.is_file()

    def read(self) -> dict[str, Any]:
        """run.json as it is written, refused in one line where it is missing or damaged. Stages read it typed,
        through ``spec()``; this is for copying it whole (a bundle) and for tests."""
        if not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} does not exist", hint=train_first_hint(self.path))
        if not self.run_json.is_file():
            raise RunDirError(f"{self.run_json} is missing", hint="this is not a run directory; train into it first")
        try:
            data = read_json(self.run_json)
        except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
            raise RunDirError(f"{self.run_json} is damaged (not valid JSON: {error})",
                              hint="restore it from a copy of the run, or train into a new --out") from None
        except OSError as error:
            raise RunDirError(f"cannot read {self.run_json}: {error.strerror or error}",
                              hint="check the file's permissions") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{self.run_json} is damaged (not a JSON object)",
                              hint="restore it from a copy of the run, or train into a new --out")
        return data

    def spec(self) -> "RunSpec":
        """run.json as the typed run contract (mlic_edge.spec): every default applied in one place."""
        from mlic_edge.spec import RunSpec

        return RunSpec.from_run_json(self.read(), self.run_json)

    def update(self, **sections: Any) -> dict[str, Any]:
        """Merge top-level sections into run.json (written atomically) and return the new content; a typed section
        (spec.RUN_SECTIONS) is given as its RunSection."""
        with self.transaction() as change:
            change.update(**sections)
        return change.written

    def record(self, spec: "RunSpec") -> dict[str, Any]:
        """Merge ``spec``'s contract and the sections it holds into run.json (written atomically)."""
        with self.transaction() as change:
            change.record(spec)
        return change.written

    @contextlib.contextmanager
    def transaction(self, *, fresh: bool = False) -> Iterator["RunChange"]:
        """Artefacts and the run.json sections that describe them, put in place together: each artefact is written
        to ``change.path(final)``, the sections given to ``change.update``; when the block succeeds every artefact is
        renamed into place, then run.json (a stop signal waits for the renames). An error or a stop inside the block
        leaves the run exactly as it was. ``fresh``: run.json is written anew from the sections (a new model)."""
        with atomic_files() as staged:
            change = RunChange(self, staged)
            yield change
            graphs = self._graph_hashes(staged)
            if change.sections or graphs:
                data = merged_run_json(read_json(self.run_json) if self.run_json.is_file() and not fresh else {},
                                       change.sections, graphs, installed_versions())
                staged.path(self.run_json).write_text(json_text(data))
                change.written = data

    def _graph_hashes(self, staged: StagedFiles) -> dict[str, str]:
        """The sha256 of each ONNX file of the run folder that ``staged`` is about to put in place."""
        from mlic_edge.io import sha256_file

        return {final.name: sha256_file(tmp) for final, tmp in staged.staged.items()
                if final.suffix == ".onnx" and final.parent == self.path and tmp.is_file() and tmp.stat().st_size}

    def require_writable(self, *, reports_only: bool = False) -> None:
        """Refuse, before any work, a run whose files cannot be written: build writes into the run, parity and bench
        into reports/ (they would otherwise compute their results and then lose them). Nothing is created."""
        from mlic_edge.io import require_writable

        for folder in (self.reports,) if reports_only else (self.path, self.reports):
            require_writable(folder, error=RunDirError, create=False,
                             hint="fix its permissions or copy the run somewhere writable")

    def start_new_generation(self, overwrite: bool, *, making: str, other_ways: str = "") -> None:
        """Before a new model is written into this run (training afresh, importing): a run that was exported would
        keep ONNX files, engines and a reference describing the old model (and parity passing against it). Refuse,
        or with ``overwrite`` move the old generation, whole, to ``previous/<UTC time>/``: a run never mixes two
        models."""
        import os
        from datetime import datetime, timezone

        from mlic_edge.console import info
        from mlic_edge.spec import PRECISIONS

        exports = [self.onnx(precision) for precision in PRECISIONS] + [self.reference, self.engines,
                                                                       self.path / "calibration"]
        exported = [path.name for path in exports if path.exists()]
        if not exported:
            if self.checkpoint.exists() or self.last_checkpoint.exists():
                info(f"[dim]{self.path} already holds a run; {making} replaces it[/dim]")
            return
        if not overwrite:
            raise RunDirError(f"{self.path} holds an exported model ({', '.join(exported)}); {making} would leave "
                              "them describing the old one",
                              hint=f"pass --overwrite to move the old generation to previous/, {other_ways}or --out "
                                   "for a new run directory")
        folder = self.path / "previous" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        folder.mkdir(parents=True)
        generation = [self.run_json, self.checkpoint, self.last_checkpoint, self.path / "label_graph.npz",
                      self.reports, *exports]
        for path in generation:
            if path.exists():
                os.replace(path, folder / path.name)
        info(f"the previous generation of {self.path} moved to {folder}")

    def require_checkpoint(self) -> Path:
        """checkpoint.pt, refused with the train-or-import hint where there is none."""
        if not self.checkpoint.exists():
            raise RunDirError(f"{self.checkpoint} is missing", hint=train_first_hint(self.path))
        return self.checkpoint

    def require(self, path: Path, produced_by: str) -> Path:
        """Refuse clearly when a stage's input is missing."""
        if not path.exists():
            raise RunDirError(f"{path} is missing", hint=f"run `{produced_by}` first")
        return path


@dataclass
class RunChange:
    """What one ``RunDir.transaction`` will put in place."""

    run: RunDir
    staged: StagedFiles
    sections: dict[str, Any] = field(default_factory=dict)
    written: dict[str, Any] = field(default_factory=dict)  # run.json's content once committed

    def path(self, final: Path) -> Path:
        """Where to write the new content of ``final`` (a file of the run)."""
        return self.staged.path(final)

    def current(self, final: Path) -> Path:
        """``final`` as this change has it so far: its staged new content where one was written, else the file."""
        staged = self.staged.staged.get(Path(final))
        return staged if staged is not None and staged.stat().st_size else Path(final)

    def update(self, **sections: Any) -> None:
        """Sections of run.json to write: a typed one (spec.RUN_SECTIONS) as its RunSection, refused otherwise."""
        self.sections.update(run_json_sections(**sections))

    def record(self, spec: "RunSpec") -> None:
        """run.json's contract and every section ``spec`` holds (the others stay as run.json has them)."""
        self.sections.update(spec.to_run_json())


def installed_versions() -> dict[str, str]:
    """Versions of what produced the files, without importing heavy packages that are not loaded already."""
    import importlib.metadata as md
    import sys

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("mlic-edge", "torch", "timm", "onnx", "onnxruntime", "onnxsim", "numpy", "opencv-python"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        versions["torch_cuda"] = str(torch.version.cuda)
    return versions
