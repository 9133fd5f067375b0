"""Optimiser and schedule (lstmdet.engine.optim) against the formulas they promise."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from lstmdet.engine.optim import build_optimizer, build_scheduler


def _cfg(**options) -> dict:
    return {"optimizer": "adamw", "lr": 0.1, "weight_decay": 0.05, "momentum": 0.9, "scheduler": "cosine",
            "warmup": 0.1, **options}  # fmt: skip


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def _lrs(cfg: dict, steps: int) -> list[float]:
    optimizer = build_optimizer(_model(), cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize(("name", "kind"), [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_optimizers_decay_only_weight_matrices(name, kind):
    model = _model()
    optimizer = build_optimizer(model, _cfg(optimizer=name))
    assert type(optimizer) is kind
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert len(no_decay["params"]) == 4  # conv and linear biases, BatchNorm weight and bias
    if name == "sgd":
        assert decay["momentum"] == 0.9 and decay["nesterov"] is True
        assert build_optimizer(model, _cfg(optimizer="sgd", momentum=0.0)).param_groups[0]["nesterov"] is False


def test_cosine_schedule_warms_up_linearly_then_follows_the_cosine():
    lrs = _lrs(_cfg(), 100)
    warmup = 10
    for step in range(warmup):
        assert lrs[step] == pytest.approx(0.1 * (step + 1) / (warmup + 1))
    for step in range(warmup, 100):
        progress = (step - warmup) / (100 - warmup)
        assert lrs[step] == pytest.approx(0.1 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))))
    assert max(lrs) == pytest.approx(0.1) and lrs[-1] < 0.002


def test_onecycle_peaks_at_the_warmup_share_and_ends_near_zero():
    lrs = _lrs(_cfg(scheduler="onecycle", warmup=0.3), 100)
    peak = max(range(100), key=lrs.__getitem__)
    assert abs(peak - 29) <= 1 and lrs[peak] == pytest.approx(0.1, rel=1e-3)
    assert lrs[0] == pytest.approx(0.1 / 25)  # torch's default div_factor
    assert all(a <= b for a, b in itertools.pairwise(lrs[: peak + 1]))
    assert lrs[-1] < 1e-4


def test_constant_schedule_after_warmup():
    lrs = _lrs(_cfg(scheduler="none", warmup=0.2), 10)
    assert lrs[:2] == pytest.approx([0.1 / 3, 0.2 / 3]) and lrs[2:] == pytest.approx([0.1] * 8)
