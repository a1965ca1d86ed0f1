"""The run directory: the one place every stage reads from and writes to (docs/design.md, "The flow of one model")."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlic_edge.errors import RunDirError
from mlic_edge.io import read_json, write_json

if TYPE_CHECKING:
    from mlic_edge.spec import RunSpec

DEFAULT_RUNS_ROOT = Path("runs")


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

    def onnx(self, precision: str = "fp32") -> Path:
        from mlic_edge.spec import onnx_file_name

        return self.path / onnx_file_name(precision)

    # run.json
    def exists(self) -> bool:
        return self.run_json.is_file()

    def read(self) -> dict[str, Any]:
        if not self.path.is_dir():
            out = "" if self.path == DEFAULT_RUNS_ROOT / self.path.name else f" --out {self.path}"
            raise RunDirError(f"run directory {self.path} does not exist",
                              hint=f"train first: mlic-edge train --model {self.path.name} --data DATA{out}")
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

        return RunSpec.from_run_json(self.read())

    def update(self, **sections: Any) -> dict[str, Any]:
        """Merge top-level sections into run.json (written atomically) and return the new content."""
        data = read_json(self.run_json) if self.run_json.is_file() else {}
        data.update(sections)
        data["versions"] = {**data.get("versions", {}), **installed_versions()}
        write_json(self.run_json, data)
        return data

    def require_writable(self, *, reports_only: bool = False) -> None:
        """Refuse, before any work, a run whose files cannot be written: build writes into the run, parity and bench
        into reports/ (they would otherwise compute their results and then lose them). Nothing is created."""
        from mlic_edge.io import require_writable

        for folder in (self.reports,) if reports_only else (self.path, self.reports):
            require_writable(folder, error=RunDirError, create=False,
                             hint="fix its permissions or copy the run somewhere writable")

    def require(self, path: Path, produced_by: str) -> Path:
        """Refuse clearly when a stage's input is missing."""
        if not path.exists():
            raise RunDirError(f"{path} is missing", hint=f"run `{produced_by}` first")
        return path


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
