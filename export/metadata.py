"""The ONNX metadata every stage reads and writes (labels, preprocessing, precision, where a file came from).

No torch here: export, calibration, the build stage and the engine builder all use it, on any machine.
"""

from __future__ import annotations

from pathlib import Path

import onnx


def read_metadata(model: onnx.ModelProto | str | Path) -> dict[str, str]:
    """``metadata_props`` as a dict, from a model or a file (weights in external files are not loaded)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return {entry.key: entry.value for entry in model.metadata_props}


def write_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    """Replace ``metadata_props`` with ``values`` (insertion order kept)."""
    del model.metadata_props[:]
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def derive_metadata(model: onnx.ModelProto, source: onnx.ModelProto, **changes: str) -> None:
    """``source``'s metadata with ``changes`` on top, written into ``model`` (a file made from another keeps its
    labels and preprocessing, and says what changed)."""
    write_metadata(model, {**read_metadata(source), **changes})
