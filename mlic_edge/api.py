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

Every CLI command has its counterpart here (``CLI_COUNTERPARTS``): a ``Run`` method for what works on one run,
``synth``, ``data_stats``, ``models``, ``demo`` and ``uninstall_service`` for the rest. Keyword arguments are the
fields of the command's request object: an unknown or missing one is one ``MlicError`` line listing the valid ones,
a string for a list field is read as the CLI reads it (``precisions="int8"`` is ``("int8",)``, ``"4,8"`` is
``(4, 8)``), and an error's hint names keyword arguments, not the CLI's flags ("pass overwrite=True").
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import MISSING, fields
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, Callable, Iterator

from mlic_edge.errors import MlicError
from mlic_edge.rundir import RunDir
from mlic_edge.spec import DEFAULT_PRECISION, RunSpec, refuse_unknown, split_items

if TYPE_CHECKING:
    from mlic_edge.runtime.inference.classifier import Classifier, Result


_Function = typing.TypeVar("_Function", bound=Callable[..., Any])
# The request objects _request built during the API call in progress (with the fields the API set itself): the
# keyword arguments an error's hint may name.
_called_requests: ContextVar[list[tuple[type, frozenset[str]]] | None] = ContextVar("mlic_edge_api_requests",
                                                                                    default=None)


def _api(function: _Function) -> _Function:
    """``function`` as the API offers it: an argument it does not take is one ``MlicError`` line, and an
    ``MlicError`` it raises (also while the generator it returns runs) names keyword arguments where the CLI would
    name flags (``_keyword_text``)."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        _check_arguments(function, signature, args, kwargs)
        requests: list[tuple[type, frozenset[str]]] = []
        token = _called_requests.set(requests)
        try:
            result = function(*args, **kwargs)
        except MlicError as error:
            _speak_python(error, _keywords(signature, requests))
            raise
        finally:
            _called_requests.reset(token)
        if inspect.isgenerator(result):
            return _python_errors(result, _keywords(signature, requests))
        return result

    return typing.cast(_Function, call)


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
    @_api
    def train(cls, data: str, out: str | Path | None = None, *, model: str = "baseline", **config: Any) -> "Run":
        """Train ``model`` on ``data`` into ``out`` (default runs/MODEL); ``config``: any TrainConfig field."""
        from mlic_edge.commands.train import TrainConfig, train

        path = Path(out) if out is not None else RunDir.resolve(model=model).path
        train(_request(TrainConfig, {"model": model, "data": data, "out": path, **config}))
        return cls(path)

    @_api
    def qat(self, **request: Any) -> dict[str, Any]:
        """``train --qat``: int8 quantization-aware fine-tuning of this trained run (NVIDIA ModelOpt), its Q/DQ graph
        as model.int8.onnx (which ``build("int8")`` then uses); returns run.json's ``qat`` section. ``request``:
        QatRequest fields (epochs, lr, calib_images, target, ...)."""
        from mlic_edge.commands.train import QatRequest, train_qat

        return train_qat(_request(QatRequest, request, run=self.path))

    @classmethod
    @_api
    def import_checkpoint(cls, format: str, checkpoint: str | Path, out: str | Path, **request: Any) -> "Run":
        """A paper's released checkpoint (``format``: ml-gcn, q2l, msrn) as the run ``out``; ``request``: any
        ImportRequest field (labels, word_vectors, adjacency, img_size, config, data, paper_map, ...)."""
        from mlic_edge.commands.import_official import ImportRequest, import_official

        import_official(RunDir(Path(out)), _request(ImportRequest, {"format": format, "checkpoint": Path(checkpoint),
                                                                   **request}))
        return cls(out)

    @_api
    def evaluate(self, **request: Any) -> dict[str, Any]:
        """mAP, CP, CR, CF1, OP, OR, OF1 of the checkpoint; ``request``: EvalRequest fields."""
        from mlic_edge.commands.evaluate import EvalRequest, evaluate

        return evaluate(self.dir, _request(EvalRequest, request))

    @_api
    def export(self, **request: Any) -> dict[str, Any]:
        """model.onnx + reference.npz; ``request``: ExportRequest fields."""
        from mlic_edge.commands.export import ExportRequest, export

        return export(self.dir, _request(ExportRequest, request))

    @_api
    def export_triton(self, out: str | Path, **request: Any) -> Path:
        """``export triton``: a Triton model repository in ``out``; returns the model's folder ``out/NAME``.
        ``request``: TritonRequest fields (precision, platform, name, streams, batch_timeout_ms, max_batch, ...)."""
        from mlic_edge.commands.serving import TritonRequest, export_triton

        return export_triton(self.dir, Path(out), _request(TritonRequest, request))

    @_api
    def export_deepstream(self, out: str | Path, **request: Any) -> Path:
        """``export deepstream``: a DeepStream nvinfer configuration, labels and model in ``out``; returns the config
        file (the deepstream-app groups for ``streams`` sources beside it). ``request``: DeepStreamRequest fields
        (precision, mode, engine, streams, batch_timeout_ms, gie_id, batch_size, threshold, ...)."""
        from mlic_edge.commands.serving import DeepStreamRequest, export_deepstream

        return export_deepstream(self.dir, Path(out), _request(DeepStreamRequest, request))

    # --- any machine ---------------------------------------------------------------------------------------------
    @_api
    def build(self, precision: str = DEFAULT_PRECISION, *, progress: Callable[[str, int, int], None] | None = None,
              **request: Any) -> dict[str, Any]:
        """The precision's ONNX and, with ``backend="tensorrt"``, its engine; ``request``: BuildRequest fields."""
        from mlic_edge.commands.build import BuildRequest, build, parse_batch

        if isinstance(request.get("batch"), (str, int)):  # as the CLI reads --batch-range: "1,4,8", or "8" = 1,8,8
            request["batch"] = parse_batch(str(request["batch"]))
        return build(self.dir, _request(BuildRequest, {"precision": precision, **request}), progress)

    @_api
    def classifier(self, **request: Any) -> "Classifier":
        """The run's ``Classifier``, opened once (``mlic_edge.load``); ``request``: backend, precision, device,
        threshold, thresholds, top_k, cuda_graph, threads, fp16_fallback."""
        from mlic_edge.commands.predict import LOAD_FIELDS, PredictRequest, load_classifier

        refuse_unknown(request, LOAD_FIELDS, "load (how a source is read goes to clf.stream(source, ...))")
        return load_classifier(self.dir, _request(PredictRequest, request))

    @_api
    def predict(self, source: str | list[str], **request: Any) -> Iterator["Result"]:
        """One ``Result`` (labels, scores, timing; ``to_dict()`` is ``run``'s JSON record) per image or frame of
        ``source`` (a list: several streams batched together, ``NAME=SOURCE`` names one; each result names its
        ``stream``), opening the backend for this pass; ``request``: PredictRequest fields (backend, precision, batch,
        threshold, ...). To classify many sources or frames, hold a classifier instead (``mlic_edge.load``)."""
        from mlic_edge.commands.predict import PredictRequest, predict

        return predict(self.dir, source, _request(PredictRequest, request))

    @_api
    def predict_to_files(self, source: str | list[str], *, out: str | Path | None = None, csv: str | Path | None = None,
                         save_video: str | Path | None = None, stats_json: str | Path | None = None,
                         append: bool = False, **request: Any) -> dict[str, Any]:
        """``mlic-edge run SOURCE [SOURCE ...] --out --csv --save-video --stats-json``: every record written (JSON
        lines to ``out``, else stdout; ``{stream}`` in a path: one file per stream), each output closed whole; returns
        the latency summary (per stream under ``streams``; a stream that failed has its ``error`` there)."""
        from mlic_edge.commands.predict import PredictOutputs, PredictRequest, predict_to_outputs

        def path(value: str | Path | None) -> Path | None:
            return Path(value) if value is not None else None

        outputs = PredictOutputs(out=path(out), csv=path(csv), save_video=path(save_video),
                                 stats_json=path(stats_json), append=append)
        return predict_to_outputs(self.dir, source, _request(PredictRequest, request), outputs)

    @_api
    def parity(self, *, check: bool = False, **request: Any) -> dict[str, Any]:
        """Every precision and backend present against the reference; ``check`` raises ParityError past a
        tolerance (the CLI's exit 3). ``request``: ParityRequest fields."""
        from mlic_edge.commands.parity import ParityRequest, check_parity, parity

        report = parity(self.dir, _request(ParityRequest, request))
        if check:
            check_parity(report)
        return report

    @_api
    def bench(self, **request: Any) -> dict[str, Any]:
        """Backend alone vs the whole pipeline; ``request``: BenchRequest fields."""
        from mlic_edge.commands.bench import BenchRequest, bench

        return bench(self.dir, _request(BenchRequest, request))

    @_api
    def pack(self, out: str | Path | None = None, *, images: bool = True) -> Path:
        """The bundle a device needs (ONNX files, calibration record, reference and its images)."""
        from mlic_edge.commands.pack import pack

        return Path(pack(self.dir, out, images=images)["bundle"])

    @_api
    def doctor(self) -> dict[str, Any]:
        """What this machine can run for this run (``doctor``'s summary: every check with its status and fix)."""
        from mlic_edge.commands.doctor import doctor

        return doctor(self.path)[1]

    @_api
    def install_service(self, **request: Any) -> dict[str, Any]:
        """``service install``: this run as a systemd service (needs root); ``print_only=True`` returns the unit and
        logrotate texts and installs nothing. Returns the unit's name, both texts, the predictions file and the
        steps taken. ``request``: ServiceRequest fields (sources, a list for several; backend, precision, out_dir,
        name, user, batch_timeout_ms, ...)."""
        from mlic_edge.commands.service import ServiceRequest, install_service

        return install_service(self.dir, _request(ServiceRequest, request))


@_api
def load(run_or_bundle: str | Path, **request: Any) -> "Classifier":
    """A ``Classifier`` that keeps its backend open: ``run_or_bundle`` is a run directory, a bundle from ``pack``
    (unpacked into runs/NAME first, every member checked) or a model name (runs/NAME). ``request``: backend
    ("auto"), precision ("fp32"), device ("auto"), threshold, thresholds, top_k, cuda_graph, threads,
    fp16_fallback.

        clf = mlic_edge.load("runs/baseline")
        result = clf(frame)                     # BGR uint8 frame, OpenCV's convention
        print(result.labels)
    """
    path = Path(run_or_bundle)
    if path.is_file() and path.name.endswith(".tar.gz"):
        from mlic_edge.commands.pack import unpack

        return Run(unpack(path).path).classifier(**request)
    if not path.exists() and len(path.parts) == 1:
        return Run.for_model(str(run_or_bundle)).classifier(**request)
    return Run(path).classifier(**request)


# --- what is not about one run ----------------------------------------------------------------------------------
@_api
def synth(out: str | Path, **config: Any) -> dict[str, Any]:
    """``data synth``: a deterministic synthetic multi-label dataset in VOC layout under ``out``; returns its
    summary. ``config``: SynthConfig fields (classes, images, size, seed, long_tail, video, ...)."""
    from mlic_edge.commands.data import SynthConfig, synth as generate

    return generate(Path(out), _request(SynthConfig, config))


@_api
def data_stats(data: str, **request: Any) -> dict[str, Any]:
    """``data stats``: images, labels per image, per-class counts with head/middle/tail groups, and the
    co-occurrence heatmap written (``heatmap``: its path). ``request``: StatsRequest fields (split, heatmap)."""
    from mlic_edge.commands.data import StatsRequest, data_stats as describe

    return describe(data, _request(StatsRequest, request))


@_api
def models(**request: Any) -> list[dict[str, Any]]:
    """``models``: every model in the zoo (paper, defaults, recipe, parameters, GFLOPs), as ``models --json`` lists
    them. ``request``: ModelsRequest fields (classes, flops)."""
    from mlic_edge.commands.models import ModelsRequest, list_zoo

    return list_zoo(_request(ModelsRequest, request))


@_api
def demo(out: str | Path, **request: Any) -> dict[str, Any]:
    """``demo``: synthetic data, a small model trained, exported, run over a video, parity; returns what each step
    measured. ``request``: DemoRequest fields (epochs, backbone, classes, images, size)."""
    from mlic_edge.commands.demo import DemoRequest, demo as run_demo

    return run_demo(Path(out), _request(DemoRequest, request))


@_api
def uninstall_service(**request: Any) -> list[str]:
    """``service uninstall``: stop and remove the systemd service (its predictions are kept); the steps taken.
    ``request``: UninstallRequest fields (name, dry_run)."""
    from mlic_edge.commands.service import UninstallRequest, uninstall_service as uninstall

    return uninstall(_request(UninstallRequest, request))


# Each command of the CLI (`mlic-edge ...`) and the API's counterpart; tests/test_api_coverage.py fails on a command
# missing here.
CLI_COUNTERPARTS: dict[str, Callable[..., Any]] = {
    "data synth": synth, "data stats": data_stats, "models": models, "train": Run.train, "train --qat": Run.qat,
    "import": Run.import_checkpoint, "eval": Run.evaluate, "export": Run.export, "export triton": Run.export_triton,
    "export deepstream": Run.export_deepstream, "build": Run.build, "run": Run.predict_to_files,
    "bench": Run.bench,
    "parity": Run.parity, "pack": Run.pack, "doctor": Run.doctor, "service install": Run.install_service,
    "service uninstall": uninstall_service, "demo": demo,
}


def _request(kind: type, values: dict[str, Any], **fixed: Any) -> Any:
    """``kind(**values, **fixed)``: ``values`` are the caller's keyword arguments, ``fixed`` the fields the API sets
    itself. An unknown or missing name is refused in one line (the request objects hold the only defaults); a
    string for a list or tuple field is read as the CLI reads it, one item or comma-separated items."""
    known = [item.name for item in fields(kind) if item.name not in fixed]
    refuse_unknown(values, known, kind.__name__)
    missing = [item.name for item in fields(kind) if item.name in known and item.name not in values
               and item.default is MISSING and item.default_factory is MISSING]
    if missing:
        raise MlicError(f"missing {', '.join(missing)} for {kind.__name__}",
                        hint="pass " + ", ".join(f"{name}=..." for name in missing))
    types = _field_types(kind)
    values = {name: _sequence_from_text(name, value, types.get(name)) for name, value in values.items()}
    requests = _called_requests.get()
    if requests is not None:
        requests.append((kind, frozenset(fixed)))
    return kind(**values, **fixed)


def _check_arguments(function: Callable[..., Any], signature: inspect.Signature, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> None:
    """Refuse in one line what ``function`` cannot take (its ``**request``, if it has one, is ``_request``'s)."""
    if not any(parameter.kind is parameter.VAR_KEYWORD for parameter in signature.parameters.values()):
        refuse_unknown(kwargs, _parameters(signature), function.__qualname__)
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        raise MlicError(f"{function.__qualname__}: {error}",
                        hint=f"its arguments: {', '.join(_parameters(signature))}") from None


def _parameters(signature: inspect.Signature) -> list[str]:
    """The names a caller may give as keyword arguments (``self``/``cls`` aside)."""
    return [name for name, parameter in signature.parameters.items() if name not in ("self", "cls")
            and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)]


@functools.lru_cache(maxsize=None)
def _field_types(kind: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(kind)
    except (NameError, TypeError):  # an annotation that does not resolve: its fields are taken as given
        return {}


def _sequence_from_text(name: str, value: Any, annotation: Any) -> Any:
    """``value``, or for a string given to a list or tuple field its comma-separated items as that field holds
    them (``"int8"`` -> ``("int8",)``, ``"1,4,8"`` -> ``(1, 4, 8)`` for ``tuple[int, ...]``)."""
    if not isinstance(value, str):
        return value
    union = typing.get_origin(annotation) in (typing.Union, UnionType)
    for candidate in typing.get_args(annotation) if union else (annotation,):
        container = typing.get_origin(candidate)
        if container in (tuple, list, Sequence):
            item_types = {item for item in typing.get_args(candidate) if item is not Ellipsis}
            item_type = item_types.pop() if len(item_types) == 1 else str
            items = split_items(name, value, item_type if item_type in (int, float) else str)
            return list(items) if container is list else tuple(items)
    return value


def _python_errors(results: Iterator[Any], keywords: dict[str, bool]) -> Iterator[Any]:
    """``results``, with an ``MlicError`` raised while they are made named in keyword arguments."""
    try:
        yield from results
    except MlicError as error:
        _speak_python(error, keywords)
        raise


def _keywords(signature: inspect.Signature, requests: list[tuple[type, frozenset[str]]]) -> dict[str, bool]:
    """The keyword arguments of this call, each with whether it is a flag (a bool): the function's own parameters
    and the fields of the request objects it built, but those the API set itself."""
    keywords = {name: _is_bool(signature.parameters[name].annotation)
                or isinstance(signature.parameters[name].default, bool) for name in _parameters(signature)}
    for kind, fixed in requests:
        types = _field_types(kind)
        keywords.update({item.name: _is_bool(types.get(item.name, item.type)) for item in fields(kind)
                         if item.name not in fixed})
    return keywords


def _is_bool(annotation: Any) -> bool:
    if isinstance(annotation, str):  # not resolved (``from __future__ import annotations``)
        return annotation.replace(" ", "") in ("bool", "bool|None", "Optional[bool]")
    if typing.get_origin(annotation) in (typing.Union, UnionType):
        return set(typing.get_args(annotation)) == {bool, type(None)}
    return annotation is bool


def _speak_python(error: MlicError, keywords: dict[str, bool]) -> None:
    """``error``'s message and hint with the CLI flags among ``keywords`` written as keyword arguments, in place."""
    error.message = _keyword_text(error.message, keywords)
    error.hint = _keyword_text(error.hint, keywords) if error.hint else error.hint
    error.args = (error.message, *error.args[1:])


# CLI flags whose keyword argument is not simply the flag's words joined by "_" (or their plural: --precision for
# parity's precisions).
_FLAG_KEYWORDS = {"print": "print_only", "qat_target": "target", "ap": "ap_mode", "workspace": "workspace_mb",
                  "batch_range": "batch", "min_same": "labelset_floors", "max_diff": "max_score_diffs",
                  "loss_kwargs": "loss_options", "model_kwargs": "model_options", "batch_timeout": "batch_timeout_ms"}
_FLAG_WORD = re.compile(r"(?P<before>[(`'\"]*)--(?P<flag>[a-z][a-z0-9-]*)(?P<after>[,;:).`'\"]*)")
_FLAG = re.compile(r"--([a-z][a-z0-9-]*)")
# A word starting a shell command: the flags after it, up to a word that ends the command, are that command's.
_SHELL_COMMAND = re.compile(r"[(`'\"]*(mlic-edge|torchrun|python|sudo)\b")
_COMMAND_END = ("`", ")", ";", ",")
_METAVAR = re.compile(r"[A-Z][A-Z0-9_,]*")
_KEYWORD_ARGUMENT = re.compile(r"[a-z_0-9]+=(\.\.\.|True|False|[A-Z][A-Z0-9_,]*|-?[0-9.e+-]+|\"[^\"]*\")")
# Words that follow a flag in a sentence ("pass --lr or ...", "--epochs must be ..."): not its value.
_PROSE = frozenset("a an and are as asked at be by first for from in instead is it must not of on only or so than "
                   "that the then to was when where with without".split())


def _keyword_text(text: str, keywords: dict[str, bool]) -> str:
    """``text`` with each ``--flag`` naming one of ``keywords`` written as a keyword argument: a bool's as
    ``name=True`` (``--no-name``: ``name=False``), another's with the value that follows it (``name=VALUE``,
    ``name="cpu"``) or ``name=...``. A shell command it quotes (``mlic-edge export --run runs/x``) is left whole:
    it is one a user can run."""
    words = re.split(r"(\s+)", text)  # words at even indexes, the spaces between them at odd ones
    written: list[str] = []
    in_command = False
    index = 0
    while index < len(words):
        word = words[index]
        if index % 2 == 1 or in_command or _SHELL_COMMAND.match(word):  # a space, or a word of a shell command
            in_command = in_command if index % 2 == 1 else not word.endswith(_COMMAND_END)
            written.append(word)
            index += 1
            continue
        flag = _FLAG_WORD.fullmatch(word)
        keyword = _keyword_of(flag["flag"], keywords) if flag else None
        takes_value = flag and keyword and keyword[1] is None and not flag["after"] and index + 2 < len(words)
        value = _flag_value(words[index + 2]) if takes_value else None
        if value is not None:
            word = f"{flag['before']}{keyword[0]}={value}"
            index += 2  # the space and the value with the flag
        else:
            word = _FLAG.sub(lambda match: _keyword_form(match, keywords), word)
        if keyword and len(written) > 1 and _KEYWORD_ARGUMENT.fullmatch(written[-2]):
            written[-2] += ","  # "--backend onnxruntime --device cpu": backend="onnxruntime", device="cpu"
        written.append(word)
        index += 1
    return "".join(written)


def _keyword_of(flag: str, keywords: dict[str, bool]) -> tuple[str, bool | None] | None:
    """(keyword, the bool that ``--flag`` sets, or None for an option taking a value); None: not a keyword here."""
    name = flag.replace("-", "_")
    for candidate in (_FLAG_KEYWORDS.get(name), name, f"{name}s"):
        if candidate in keywords:
            return candidate, True if keywords[candidate] else None
    if name.startswith("no_") and keywords.get(name[3:]):
        return name[3:], False
    return None


def _keyword_form(flag: re.Match[str], keywords: dict[str, bool]) -> str:
    keyword = _keyword_of(flag[1], keywords)
    if keyword is None:
        return flag[0]
    return f"{keyword[0]}={'...' if keyword[1] is None else keyword[1]}"


def _flag_value(word: str) -> str | None:
    """The value ``word`` gives the option before it, as a keyword argument's (``DIR``, ``4``, ``"cpu"``), with
    its trailing punctuation; None where ``word`` is prose."""
    value = word.rstrip(",;:)`")
    if value.endswith("."):
        value = value[:-1]
    after = word[len(value):]
    try:
        float(value)
    except ValueError:
        if not value or value.lower() in _PROSE or value.startswith(("-", "(", "`", "'", '"')):
            return None
        return f"{value}{after}" if _METAVAR.fullmatch(value) else f'"{value}"{after}'
    return f"{value}{after}"


__all__ = ["CLI_COUNTERPARTS", "Run", "data_stats", "demo", "models", "synth", "uninstall_service", "load"]
