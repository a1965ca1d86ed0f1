"""PyTorch inference over a split: the scores that training validation, ``eval`` and ``reference.npz`` share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from mlic_edge.data.dataset import MultiLabelDataset
from mlic_edge.data.torch_data import ImageDataset, make_loader
from mlic_edge.spec import DEFAULT_RESIZE, require_finite


@dataclass
class SplitScores:
    scores: np.ndarray
    """float32 (N_kept, C) sigmoid probabilities."""
    kept: np.ndarray
    """indices into the dataset of the images that were read."""
    broken: list[int]

    def targets(self, dataset: MultiLabelDataset) -> np.ndarray:
        return dataset.targets[self.kept]

    def check_finite(self, checkpoint: Path, dataset: MultiLabelDataset) -> None:
        """Refuse scores with a NaN or inf (diverged or damaged weights): nothing is measured or written from them."""
        ids = dataset.image_ids()
        require_finite(f"{checkpoint}'s scores on {dataset.spec}", self.scores,
                       hint="the weights are broken: train again (a lower --lr where training diverged)",
                       at=lambda index: f"image {ids[self.kept[index[0]]]}, label {dataset.names[index[1]]!r}")


@torch.no_grad()
def predict_scores(model: torch.nn.Module, dataset: MultiLabelDataset, img_size: int, mean: Sequence[float],
                   std: Sequence[float], batch_size: int = 32, workers: int = 0,
                   device: torch.device | str = "cpu",
                   on_batch: Callable[[int], None] | None = None, resize: str = DEFAULT_RESIZE) -> SplitScores:
    model.eval()
    loader = make_loader(ImageDataset(dataset, img_size, mean, std, resize=resize), batch_size, shuffle=False,
                         workers=workers)
    scores, kept, broken = [], [], []
    with loader:
        for batch in loader:
            broken.extend(batch.broken)
            if len(batch.indices):
                logits = model(batch.images.to(device, non_blocking=True))
                scores.append(torch.sigmoid(logits.float()).cpu().numpy())
                kept.append(batch.indices.numpy())
            if on_batch:
                on_batch(len(batch.indices) + len(batch.broken))
    num_classes = dataset.num_classes
    return SplitScores(
        scores=np.concatenate(scores).astype(np.float32) if scores else np.zeros((0, num_classes), np.float32),
        kept=np.concatenate(kept) if kept else np.zeros(0, np.int64),
        broken=broken,
    )
