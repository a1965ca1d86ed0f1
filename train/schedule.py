"""Optimisers and learning-rate schedules (per iteration: linear warm-up, then cosine or step decay; or one-cycle)."""

from __future__ import annotations

import math

import torch

from mlic_edge.errors import MlicError


def create_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float,
                     momentum: float = 0.9, backbone_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """Parameter groups: no weight decay on biases and norm parameters (timm's convention); the backbone's learning
    rate is ``lr × backbone_lr_scale`` (ML-GCN's and MSRN's 0.1). A schedule scales every group alike."""
    backbone = getattr(model, "backbone", None)
    in_backbone = {id(param) for param in backbone.parameters()} if isinstance(backbone, torch.nn.Module) else set()
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for param in model.parameters():
        if param.requires_grad:
            groups.setdefault((id(param) in in_backbone, param.ndim <= 1), []).append(param)
    param_groups = [{"params": params, "weight_decay": 0.0 if no_decay else weight_decay,
                     "lr": lr * (backbone_lr_scale if is_backbone else 1.0)}
                    for (is_backbone, no_decay), params in sorted(groups.items())]
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr)
    raise MlicError(f"unknown optimizer {name!r}", hint="use sgd or adamw")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str,
              milestones: tuple[float, ...] = (0.6, 0.85), gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate at iteration ``step``."""
    if schedule == "onecycle":
        return _one_cycle(step, total_steps)
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        return gamma ** sum(progress >= m for m in milestones)
    raise MlicError(f"unknown schedule {schedule!r}", hint="use cosine, step or onecycle")


def _one_cycle(step: int, total_steps: int, rise: float = 0.2, start_div: float = 25.0,
               final_div: float = 1e4) -> float:
    """PyTorch's OneCycleLR (cosine annealing, Query2Label's pct_start 0.2, its default divisors) as a factor of the
    peak learning rate, so each parameter group keeps its own peak."""
    peak_step = max(1.0, rise * total_steps - 1)
    start, end = 1.0 / start_div, 1.0 / (start_div * final_div)
    if step <= peak_step:
        return start + (1.0 - start) * (1 - math.cos(math.pi * step / peak_step)) / 2
    progress = min(1.0, (step - peak_step) / max(1.0, total_steps - 1 - peak_step))
    return end + (1.0 - end) * (1 + math.cos(math.pi * progress)) / 2


def create_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                     schedule: str) -> torch.optim.lr_scheduler.LambdaLR:
    lr_factor(0, total_steps, warmup_steps, schedule)  # validates the name before training starts
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, schedule))
