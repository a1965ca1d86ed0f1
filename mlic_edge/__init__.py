"""mlic-edge: multi-label image classifiers from the papers to edge GPUs.

``from mlic_edge import Run`` is the Python API (mlic_edge/api.py); importing the package loads nothing heavy."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "Run":
        from mlic_edge.api import Run

        return Run
    raise AttributeError(f"module 'mlic_edge' has no attribute {name!r}")


__all__ = ["Run", "__version__"]
