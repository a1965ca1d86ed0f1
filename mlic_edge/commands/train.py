"""`mlic-edge train` as a library: ``TrainConfig`` (mlic_edge/train/config.py) holds the request and its defaults;
training needs PyTorch, imported only when it runs."""

from __future__ import annotations

from typing import Any

from mlic_edge.train.config import TrainConfig


def train(config: TrainConfig) -> dict[str, Any]:
    """Train and write the run directory (checkpoint.pt, last.pt, run.json, reports/); the final metrics. Argument
    errors (options out of range, a dataset path that does not exist) are reported before PyTorch is imported."""
    from mlic_edge.data import parse_data_spec

    config.validate()
    parse_data_spec(config.data)
    from mlic_edge.train.trainer import train as run_training

    return run_training(config)


__all__ = ["TrainConfig", "train"]
