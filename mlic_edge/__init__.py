"""mlic-edge: multi-label image classifiers from the papers to edge GPUs.

``mlic_edge.load(RUN)`` is a classifier an application holds; ``from mlic_edge import Run`` the rest of the Python
API (mlic_edge/api.py). Importing the package loads nothing heavy."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("Run", "load"):
        from mlic_edge import api

        return getattr(api, name)
    raise AttributeError(f"module 'mlic_edge' has no attribute {name!r}")


__all__ = ["Run", "__version__", "load"]
