"""checkpoint.pt: weights + the config needed to rebuild the model, loadable with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mlic_edge.errors import RunDirError
from mlic_edge.io import atomic_path
from mlic_edge.models.base import MultiLabelModel
from mlic_edge.models.registry import create_model
from mlic_edge.spec import retrain_command, train_first_hint

CONFIG_KEYS = ("model", "num_classes", "backbone")  # what rebuilds the model (MultiLabelModel.config)
TRAINING_STATE = ("train_config", "epoch", "best_map", "history", "optimizer", "scheduler")  # last.pt's, for --resume


def save_checkpoint(path: Path, model: MultiLabelModel, **extra: Any) -> None:
    payload = {"config": model.config(), "state_dict": model.state_dict(), **extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's content; refused in one line where it is missing, unreadable or holds no weights."""
    if not path.is_file():
        raise RunDirError(f"{path} is missing", hint=train_first_hint(path.parent))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which, not a pickle traceback
        raise _damaged(path, f"could not be read as an mlic-edge checkpoint: {error}".splitlines()[0]) from error
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
        raise _damaged(path, "holds no state_dict (the model's weights)")
    return payload


def read_training_state(path: Path) -> dict[str, Any]:
    """last.pt for ``train --resume``: the checkpoint with the optimizer, schedule and history it continues from."""
    payload = read_checkpoint(path)
    missing = [key for key in TRAINING_STATE if key not in payload]
    if missing:
        raise RunDirError(f"{path} holds no training state ({', '.join(missing)} missing): it cannot be resumed",
                          hint=f"train afresh, without --resume: {retrain_command(path.parent)}")
    return payload


def load_model(path: Path) -> MultiLabelModel:
    """Rebuild the model from the checkpoint's config (no pretrained download) and load its weights."""
    payload = read_checkpoint(path)
    config = payload.get("config")
    if not isinstance(config, dict) or not all(key in config for key in CONFIG_KEYS):
        raise _damaged(path, f"holds no model config ({', '.join(CONFIG_KEYS)}) to rebuild its model from")
    model = create_model(config["model"], config["num_classes"], backbone=config["backbone"], pretrained=False,
                         **config.get("hyperparameters", {}))
    load_weights(model, payload["state_dict"], path)
    return model.eval()


def load_weights(model: torch.nn.Module, state_dict: dict[str, Any], path: Path) -> None:
    """``model.load_state_dict``, refusing weights of another shape or names in one line naming ``path``."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:  # "Error(s) in loading state_dict for X:" then one line per mismatch
        details = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        raise _damaged(path, f"holds weights that do not fit its model ({details[0] if details else error})"
                       [:300]) from None


def _damaged(path: Path, problem: str) -> RunDirError:
    return RunDirError(f"{path} {problem}",
                       hint=f"restore it from a copy of the run, or make it again: {retrain_command(path.parent)}")
