"""`mlic-edge pack` as a library: the bundle a device needs, and what is in it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlic_edge.rundir import RunDir


def pack(run: RunDir, out: str | Path | None = None, *, images: bool = True) -> dict[str, Any]:
    """Write the bundle (ONNX files, calibration record, reference.npz and, with ``images``, its eval images);
    returns its path and manifest."""
    from mlic_edge.runtime.deployment.bundle import inspect_bundle, pack as make_bundle

    path = make_bundle(run, out, with_images=images)
    return {"bundle": str(path), **inspect_bundle(path)}
