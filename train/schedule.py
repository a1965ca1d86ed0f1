"""Optimisers and learning-rate schedules (per iteration: linear warm-up, then cosine or step decay)."""

from __future__ import annotations

import math

import torch

from mlic_edge.errors import MlicError

DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-3}


def create_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float,
                     momentum: float = 0.9) -> torch.optim.Optimizer:
    # No weight decay on biases and norm parameters (timm's convention).
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise MlicError(f"unknown optimizer {name!r}", hint="use sgd or adamw")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str,
              milestones: tuple[float, ...] = (0.6, 0.85), gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate at iteration ``step``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        return gamma ** sum(progress >= m for m in milestones)
    raise MlicError(f"unknown schedule {schedule!r}", hint="use cosine or step")


def create_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                     schedule: str) -> torch.optim.lr_scheduler.LambdaLR:
    lr_factor(0, total_steps, warmup_steps, schedule)  # validates the name before training starts
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, schedule))
