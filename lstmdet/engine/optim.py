"""Optimiser and learning-rate schedule from the ``train`` config section."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from lstmdet.errors import ConfigError


def _part(name: str, prefixes: Iterable[str]) -> str | None:
    """The longest of ``prefixes`` that ``name`` (a parameter's) lies under, dotted-path-wise."""
    hits = [p for p in prefixes if name == p or name.startswith(p + ".")]
    return max(hits, key=len, default=None)


def _check_parts(model: nn.Module, prefixes: Iterable[str], field: str) -> None:
    names = [name for name, _ in model.named_parameters()]
    tops = sorted({name.split(".")[0] for name in names})
    for prefix in prefixes:
        if not isinstance(prefix, str) or not any(_part(name, [prefix]) for name in names):
            raise ConfigError(
                field, f"{prefix!r} names no part of the model; give parameter-name prefixes such as {', '.join(tops)} "
                "or a stage such as backbone.layer1 (see `lstmdet model CONFIG`)",
            )  # fmt: skip


def freeze_parts(model: nn.Module, cfg: dict[str, Any]) -> list[str]:
    """Stop training the parts ``train.freeze`` names (parameter-name prefixes); returns them.

    Their parameters get ``requires_grad=False`` and their normalisation layers are kept in eval
    mode by :func:`keep_frozen_norms`, so a training step leaves them bit-identical.

    Raises:
        ConfigError: An entry names no parameter.
    """
    prefixes = list(cfg.get("freeze") or [])
    _check_parts(model, prefixes, "train.freeze")
    for name, param in model.named_parameters():
        if _part(name, prefixes) is not None:
            param.requires_grad_(False)
    return prefixes


def keep_frozen_norms(model: nn.Module, prefixes: list[str]) -> None:
    """Put the normalisation layers of the frozen parts back in eval mode (after ``model.train()``), so that
    their running statistics stay as loaded."""
    if not prefixes:
        return
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and _part(name, prefixes) is not None:
            module.eval()


def build_optimizer(model: nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov momentum); no weight decay on biases and normalisation weights.

    ``train.lr_mult`` (``{prefix: factor}``, e.g. ``{backbone: 0.1}``) scales the learning rate of
    the parameters under a prefix (the longest matching prefix wins); frozen parameters
    (``requires_grad=False``) are left out.

    Args:
        model: The model to optimise.
        cfg: The validated ``train`` section (``optimizer``, ``lr``, ``weight_decay``, ``momentum``,
            ``lr_mult``).

    Raises:
        ConfigError: A ``lr_mult`` key names no parameter, or a factor is not a positive number.
    """
    mults = dict(cfg.get("lr_mult") or {})
    _check_parts(model, mults, "train.lr_mult")
    for prefix, factor in mults.items():
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
            raise ConfigError(
                f"train.lr_mult.{prefix}", f"must be a positive number (a learning-rate factor), got {factor!r}"
            )
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            part = _part(name, mults)
            factor = float(mults[part]) if part is not None else 1.0
            groups.setdefault((factor, param.ndim > 1), []).append(param)
    param_groups = [
        {"params": params, "lr": cfg["lr"] * factor, "weight_decay": cfg["weight_decay"] if decay else 0.0}
        for (factor, decay), params in sorted(groups.items(), key=lambda item: (-item[0][0], not item[0][1]))
    ]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["momentum"] > 0)
    return torch.optim.AdamW(param_groups, lr=cfg["lr"])


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
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total_steps,
            pct_start=max(cfg["warmup"], 0.01),
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
