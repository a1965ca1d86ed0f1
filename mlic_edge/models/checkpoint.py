"""checkpoint.pt: weights + the config needed to rebuild the model, loadable with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mlic_edge.errors import RunDirError
from mlic_edge.io import atomic_path
from mlic_edge.models.base import MultiLabelModel
from mlic_edge.models.registry import create_model


def save_checkpoint(path: Path, model: MultiLabelModel, **extra: Any) -> None:
    payload = {"config": model.config(), "state_dict": model.state_dict(), **extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RunDirError(f"{path} is missing", hint="train first: mlic-edge train --data DATA --out RUN")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which, not a pickle traceback
        raise RunDirError(f"{path} could not be read as an mlic-edge checkpoint: {error}".splitlines()[0],
                          hint="re-run training to write it again") from error


def load_model(path: Path) -> MultiLabelModel:
    """Rebuild the model from the checkpoint's config (no pretrained download) and load its weights."""
    payload = read_checkpoint(path)
    config = payload["config"]
    model = create_model(config["model"], config["num_classes"], backbone=config["backbone"], pretrained=False,
                         **config.get("hyperparameters", {}))
    model.load_state_dict(payload["state_dict"])
    return model.eval()
