"""The backend registry, as models have theirs (mlic_edge/models/registry.py): every ``*_backend`` module of this
package registers its backends with ``register_backend``; the names the commands accept (``BACKENDS``,
``ENGINE_BACKENDS``, ``BUILD_BACKENDS``), ``--backend auto``'s order, doctor's rows, parity's targets and the CLI's
help all come from here. Listing imports no torch, TensorRT or ONNX Runtime: each backend module keeps those inside
functions, and ``installed`` only looks for a package (importlib.util.find_spec).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from mlic_edge.errors import BackendError
from mlic_edge.spec import DEFAULT_DEVICE, DEFAULT_PRECISION, require_choice

if TYPE_CHECKING:
    from mlic_edge.rundir import RunDir
    from mlic_edge.runtime.inference.backends.base import Backend
    from mlic_edge.runtime.inference.threads import ThreadBudget


@dataclass(frozen=True)
class OpenOptions:
    """What ``create_backend`` passes every backend beside the run, the precision and the device."""

    cuda_graph: bool = False  # TensorRT: replay a captured CUDA graph per batch size (refused for other backends)
    graph: str = "auto"  # ONNX Runtime, int8: "tensorrt" (model.int8.onnx), "cpu" (model.int8.cpu.onnx) or "auto"
    threads: int | None = None  # --threads: the inference threads; None: the thread budget's
    fp16_fallback: bool = False  # ONNX Runtime: fp16 on a CPU without fp16 arithmetic runs the fp32 graph

    def thread_budget(self, device: str) -> ThreadBudget:
        """The share of this process's cores the backend gets on ``device`` (runtime/inference/threads.py); a
        backend carries it as ``thread_budget``."""
        from mlic_edge.runtime.inference.threads import available_cores, plan_threads

        return plan_threads(available_cores(), device, self.threads)


class Opener(Protocol):
    def __call__(self, run: RunDir, precision: str, device: str, options: OpenOptions) -> Backend: ...


AutoDevice = Callable[["RunDir | None", str, str], "str | None"]
"""(run, precision, device asked) -> the device ``auto`` would run the run on with this backend, or None when it
cannot here (saying why where a user would expect it to)."""
ParityGraphs = Callable[["RunDir", str, bool], "list[str]"]
"""(run, precision, asked by name) -> the graphs of that precision parity checks with this backend ("auto": the one
``create_backend`` picks); by default (not asked) only what the run holds, [] for nothing."""


def asked_only(run: RunDir, precision: str, asked: bool) -> list[str]:
    """Parity checks the backend when asked for by name, never by default."""
    return ["auto"] if asked else []


@dataclass(frozen=True)
class BackendEntry:
    name: str  # what --backend takes
    title: str  # the product's name, doctor's row title
    description: str  # one line: what it runs and where
    opener: Opener
    installed: Callable[[], bool]
    """Whether its Python package is here; cheap: finds, never imports (``package_installed``)."""
    extras: tuple[str, ...] = ()
    """mlic-edge's pip extras that install what it needs beyond the core."""
    runs_engines: bool = False  # runs the TensorRT engines of a run (engines/<target>/)
    buildable: bool = False  # `build --backend NAME` makes an artefact for it
    made_from_onnx: bool = True  # what it runs is the run's ONNX or made from it: checked to be current first
    auto_order: int | None = None
    """Its place in ``--backend auto``'s order, lowest first (gaps leave room); None: auto never picks it."""
    auto_device: AutoDevice | None = None
    parity_graphs: ParityGraphs = asked_only

    def install_hint(self) -> str:
        """How to get its packages, for a refusal or doctor's fix."""
        if not self.extras:
            return "it comes with mlic-edge's core install"
        extras = ",".join(self.extras)
        return (f"install mlic-edge with its [{extras}] extra{'s' if len(self.extras) > 1 else ''} "
                f"(pip install '.[{extras}]' in the source tree)")


_BACKENDS: dict[str, BackendEntry] = {}


def register_backend(*, name: str, title: str, description: str, installed: Callable[[], bool],
                     extras: tuple[str, ...] = (), runs_engines: bool = False, buildable: bool = False,
                     made_from_onnx: bool = True, auto_order: int | None = None, auto_device: AutoDevice | None = None,
                     parity_graphs: ParityGraphs = asked_only) -> Callable[[Opener], Opener]:
    """Decorator of a backend's opener: ``opener(run, precision, device, options: OpenOptions) -> Backend``, which
    refuses in one line with a hint what the backend cannot run, and sets the backend's ``thread_budget``
    (``options.thread_budget(device)``). ``auto_order`` needs ``auto_device``."""

    def register(opener: Opener) -> Opener:
        if name == "auto":
            raise ValueError("'auto' is --backend auto's own name, not a backend's")
        if name in _BACKENDS:
            raise ValueError(f"backend {name!r} registered twice")
        if (auto_order is None) != (auto_device is None):
            raise ValueError(f"backend {name!r}: auto_order and auto_device go together")
        _BACKENDS[name] = BackendEntry(name, title, description, opener, installed, tuple(extras), runs_engines,
                                       buildable, made_from_onnx, auto_order, auto_device, parity_graphs)
        return opener

    return register


def package_installed(*modules: str) -> Callable[[], bool]:
    """A probe for ``installed``: whether any of these top-level modules can be imported (found, not imported)."""
    return lambda: any(importlib.util.find_spec(module) is not None for module in modules)


def _load_backends() -> None:
    # Importing each *_backend module of this package runs its register_backend (a new backend is one new file).
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        if module.name.endswith("_backend"):
            importlib.import_module(f"{__package__}.{module.name}")


def list_backends() -> list[BackendEntry]:
    """Every backend: auto's candidates in auto's order, then the others by name."""
    _load_backends()
    return sorted(_BACKENDS.values(), key=lambda entry: (entry.auto_order is None, entry.auto_order or 0, entry.name))


def get_backend(name: str) -> BackendEntry:
    """The entry of ``name``; an unknown name is the one-line "unknown backend" refusal listing the valid ones."""
    _load_backends()
    require_choice("backend", name, _backend_names(), BackendError)
    return _BACKENDS[name]


def _backend_names() -> tuple[str, ...]:
    return ("auto", *(entry.name for entry in list_backends()))


def _engine_backend_names() -> tuple[str, ...]:
    return tuple(entry.name for entry in list_backends() if entry.runs_engines)


def _build_backend_names() -> tuple[str, ...]:
    return ("auto", *(entry.name for entry in list_backends() if entry.buildable))


def _auto_order() -> tuple[str, ...]:
    return tuple(entry.name for entry in list_backends() if entry.auto_order is not None)


def resolve_auto(device: str = DEFAULT_DEVICE, run: RunDir | None = None, precision: str = DEFAULT_PRECISION) -> tuple[str, str]:
    """(backend, device) that ``--backend auto`` would use on this machine: the first backend in auto's order that is
    installed and can run the run here (an engine backend only where the run has an engine of the precision and the
    device may be a GPU). A backend passed over where a user would expect it says why, so the choice is never
    silent."""
    has_engine = run is not None and device in ("auto", "cuda") and bool(run.engine_manifests(precision))
    for entry in list_backends():
        if entry.auto_device is None or (entry.runs_engines and not has_engine) or not entry.installed():
            continue
        picked = entry.auto_device(run, precision, device)
        if picked is not None:
            return entry.name, picked
    hint = "use --device cpu" if device != "cpu" else f"install one of {', '.join(_auto_order())} (mlic-edge doctor)"
    raise BackendError(f"no backend here can run on {device!r}", hint=hint)


# The name lists, computed when read (module attributes), so that they always match the registry: BACKENDS is what
# `run`, `bench`, `parity` and `service` take ("auto" and every backend), ENGINE_BACKENDS the backends that run
# TensorRT engines, BUILD_BACKENDS what `build --backend` takes ("auto" and every backend build makes an artefact
# for), AUTO_ORDER the backends `--backend auto` tries, in turn.
_NAME_LISTS = {"BACKENDS": _backend_names, "ENGINE_BACKENDS": _engine_backend_names,
               "BUILD_BACKENDS": _build_backend_names, "AUTO_ORDER": _auto_order}


def __getattr__(name: str) -> tuple[str, ...]:
    if name in _NAME_LISTS:
        return _NAME_LISTS[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AUTO_ORDER", "BACKENDS", "BUILD_BACKENDS", "ENGINE_BACKENDS", "BackendEntry", "OpenOptions", "asked_only",
           "get_backend", "list_backends", "package_installed", "register_backend", "resolve_auto"]
