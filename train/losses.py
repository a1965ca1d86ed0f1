"""Multi-label losses. Every loss takes logits (N, C) and targets (N, C) in {1, 0, -1}; -1 entries are ignored."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from mlic_edge.errors import MlicError


class MaskedBCE(nn.Module):
    """Binary cross-entropy over the known entries, averaged over them."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        known = (targets >= 0).to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, targets.clamp(min=0), reduction="none")
        return (loss * known).sum() / known.sum().clamp(min=1.0)


LOSSES: dict[str, Callable[[], nn.Module]] = {"bce": MaskedBCE}


def create_loss(name: str) -> nn.Module:
    if name not in LOSSES:
        raise MlicError(f"unknown loss {name!r}", hint=f"available: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]()
