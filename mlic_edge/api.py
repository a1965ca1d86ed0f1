"""The Python API: what the CLI does, from a notebook or a service (docs/design.md, "Commands as a library").

    from mlic_edge import Run

    run = Run.train("data/synth", "runs/baseline", epochs=10)   # or Run("runs/msrn") for an existing run,
                                                                # or Run.import_checkpoint("ml-gcn", FILE, "runs/x")
    run.export()
    run.build("int8")                                           # model.int8.onnx (+ an engine with backend=...)
    for record in run.predict("camera0", precision="int8"):
        print(record["labels"])
    report = run.parity()                                       # every precision present vs the PyTorch reference

Each method calls the same function as the CLI command of that name (``mlic_edge.commands``) with the same
defaults (the request objects hold them); errors are ``MlicError``s with a one-line message and a hint.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Iterator

from mlic_edge.rundir import RunDir
from mlic_edge.spec import RunSpec


class Run:
    """One run directory and everything that can be done with it."""

    def __init__(self, path: str | Path) -> None:
        self.dir = RunDir(Path(path))

    @classmethod
    def for_model(cls, name: str) -> "Run":
        """``runs/NAME``, what ``--model NAME`` means on the command line."""
        return cls(RunDir.resolve(model=name).path)

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def spec(self) -> RunSpec:
        return self.dir.spec()

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # --- training machine (PyTorch) -----------------------------------------------------------------------------
    @classmethod
    def train(cls, data: str, out: str | Path | None = None, *, model: str = "baseline", **config: Any) -> "Run":
        """Train ``model`` on ``data`` into ``out`` (default runs/MODEL); ``config``: any TrainConfig field."""
        from mlic_edge.commands.train import TrainConfig, train

        path = Path(out) if out is not None else RunDir.resolve(model=model).path
        train(TrainConfig(model=model, data=data, out=path, **config))
        return cls(path)

    @classmethod
    def import_checkpoint(cls, format: str, checkpoint: str | Path, out: str | Path, **request: Any) -> "Run":
        """A paper's released checkpoint (``format``: ml-gcn, q2l, msrn) as the run ``out``; ``request``: any
        ImportRequest field (labels, word_vectors, adjacency, img_size, config, data, paper_map, ...)."""
        from mlic_edge.commands.import_official import ImportRequest, import_official

        import_official(RunDir(Path(out)), ImportRequest(format=format, checkpoint=Path(checkpoint), **request))
        return cls(out)

    def evaluate(self, **request: Any) -> dict[str, Any]:
        """mAP, CP, CR, CF1, OP, OR, OF1 of the checkpoint; ``request``: EvalRequest fields."""
        from mlic_edge.commands.evaluate import EvalRequest, evaluate

        return evaluate(self.dir, _request(EvalRequest, request))

    def export(self, **request: Any) -> dict[str, Any]:
        """model.onnx + reference.npz; ``request``: ExportRequest fields."""
        from mlic_edge.commands.export import ExportRequest, export

        return export(self.dir, _request(ExportRequest, request))

    # --- any machine ---------------------------------------------------------------------------------------------
    def build(self, precision: str = "fp32", *, progress: Callable[[str, int, int], None] | None = None,
              **request: Any) -> dict[str, Any]:
        """The precision's ONNX and, with ``backend="tensorrt"``, its engine; ``request``: BuildRequest fields."""
        from mlic_edge.commands.build import BuildRequest, build

        return build(self.dir, _request(BuildRequest, {"precision": precision, **request}), progress)

    def predict(self, source: str, **request: Any) -> Iterator[dict[str, Any]]:
        """One record (labels, scores, timing) per image or frame of ``source``; ``request``: PredictRequest
        fields (backend, precision, batch, threshold, ...)."""
        from mlic_edge.commands.predict import PredictRequest, predict

        return predict(self.dir, source, _request(PredictRequest, request))

    def parity(self, *, check: bool = False, **request: Any) -> dict[str, Any]:
        """Every precision and backend present against the reference; ``check`` raises ParityError past a
        tolerance (the CLI's exit 3). ``request``: ParityRequest fields."""
        from mlic_edge.commands.parity import ParityRequest, parity
        from mlic_edge.runtime.checks.parity import check_parity

        report = parity(self.dir, _request(ParityRequest, request))
        if check:
            check_parity(report)
        return report

    def bench(self, **request: Any) -> dict[str, Any]:
        """Backend alone vs the whole pipeline; ``request``: BenchRequest fields."""
        from mlic_edge.commands.bench import BenchRequest, bench

        return bench(self.dir, _request(BenchRequest, request))

    def pack(self, out: str | Path | None = None, *, images: bool = True) -> Path:
        """The bundle a device needs (ONNX files, calibration record, reference and its images)."""
        from mlic_edge.commands.pack import pack

        return Path(pack(self.dir, out, images=images)["bundle"])

    def doctor(self) -> dict[str, Any]:
        """What this machine can run for this run (``doctor``'s summary: every check with its status and fix)."""
        from mlic_edge.commands.doctor import doctor

        return doctor(self.path)[1]


def _request(kind: type, values: dict[str, Any]) -> Any:
    """``kind(**values)``, refusing unknown names in one line (the request objects hold the only defaults)."""
    from mlic_edge.errors import MlicError

    known = {item.name for item in fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise MlicError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for "
                        f"{kind.__name__}", hint=f"choose among {', '.join(sorted(known))}")
    return kind(**values)


__all__ = ["Run"]
