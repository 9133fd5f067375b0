"""Optimiser and learning-rate schedule from the ``train`` config section."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def build_optimizer(model: nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov momentum); no weight decay on biases and normalisation weights.

    Args:
        model: The model to optimise.
        cfg: The validated ``train`` section (``optimizer``, ``lr``, ``weight_decay``, ``momentum``).
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["momentum"] > 0)
    return torch.optim.AdamW(groups, lr=cfg["lr"])


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: dict[str, Any], total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: linear warm-up then cosine decay, one-cycle, or constant.

    Args:
        optimizer: The optimiser whose learning rate is scheduled.
        cfg: The validated ``train`` section (``scheduler``, ``warmup`` = warm-up share of steps).
        total_steps: Optimiser steps in the whole run.
    """
    total_steps = max(1, total_steps)
    if cfg["scheduler"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg["lr"], total_steps=total_steps, pct_start=max(cfg["warmup"], 0.01)
        )
    warmup = int(cfg["warmup"] * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg["scheduler"] == "none":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
