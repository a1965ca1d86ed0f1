"""`mlic-edge train` as a library: ``TrainConfig`` (mlic_edge/train/config.py) holds the request and its defaults;
training needs PyTorch, imported only when it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlic_edge.train.config import TrainConfig


def train(config: TrainConfig) -> dict[str, Any]:
    """Train and write the run directory (checkpoint.pt, last.pt, run.json, reports/); the final metrics. Argument
    errors (options out of range, a dataset path that does not exist) are reported before PyTorch is imported."""
    from mlic_edge.data import parse_data_spec

    config.validate()
    if config.model not in zoo_file_names():  # an unknown name: the registry (which needs PyTorch) says so
        from mlic_edge.models import get_model_entry

        get_model_entry(config.model)
    parse_data_spec(config.data)
    from mlic_edge.train.trainer import train as run_training

    return run_training(config)


def zoo_file_names() -> set[str]:
    """The model names, known without importing PyTorch: one file per method in mlic_edge/models/zoo/, named as the
    model it registers (tests/test_cli.py checks that they agree)."""
    import mlic_edge

    zoo = Path(mlic_edge.__file__).parent / "models" / "zoo"
    return {path.stem for path in zoo.glob("*.py") if not path.stem.startswith("_")}


__all__ = ["TrainConfig", "train", "zoo_file_names"]
