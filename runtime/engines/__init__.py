"""TensorRT (and TensorRT for RTX): the API in hand, the engine builder, engine manifests.

Importing this package imports no TensorRT (``load_tensorrt`` does, when asked), and its names load on first use:
``run`` on a CPU reaches ``api`` and ``manifest`` to see whether the run has an engine, never the builder.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "api": ("Capabilities", "TensorRT", "available_tensorrt_backends", "capabilities", "load_tensorrt"),
    "builder": ("BuildOptions", "BuildPlan", "EngineResult", "build_engine", "plan_build"),
    "manifest": ("check_manifest", "engine_paths", "engine_target_name", "find_engines", "read_manifest",
                 "write_manifest"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_HOME_OF)


def __getattr__(name: str) -> Any:
    if name not in _HOME_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME_OF[name]}"), name)
    globals()[name] = value
    return value
