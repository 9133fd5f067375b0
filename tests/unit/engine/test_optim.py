"""Optimiser and schedule (lstmdet.engine.optim) against the formulas they promise."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from lstmdet.engine.optim import build_optimizer, build_scheduler, freeze_parts, keep_frozen_norms
from lstmdet.errors import ConfigError


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


def _parts() -> nn.Module:
    """Named parts like a detector's: ``backbone`` (two stages with BatchNorm), ``head``."""
    backbone = nn.Sequential()
    backbone.add_module("layer1", nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()))
    backbone.add_module("layer2", nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()))
    model = nn.Module()
    model.backbone, model.head = backbone, nn.Conv2d(4, 2, 1)
    model.forward = lambda x: model.head(model.backbone(x))
    return model


@pytest.mark.parametrize("freeze", [["backbone"], ["backbone.layer1"]])
def test_frozen_parts_stay_bit_identical_through_a_training_step(freeze):
    torch.manual_seed(0)
    model = _parts()
    cfg = _cfg(freeze=freeze)
    frozen = freeze_parts(model, cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(model, cfg)
    model.train()
    keep_frozen_norms(model, frozen)
    model(torch.randn(2, 3, 8, 8)).square().mean().backward()
    optimizer.step()
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            frozen_key = any(key == p or key.startswith(p + ".") for p in freeze)
            assert torch.equal(value, before[key]) == frozen_key, key  # weights and BN statistics alike


def test_lr_mult_scales_a_parts_learning_rate_and_bad_entries_are_named():
    model = _parts()
    optimizer = build_optimizer(model, _cfg(lr_mult={"backbone": 0.1, "backbone.layer2": 0.5}))
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert rates[id(model.head.weight)] == pytest.approx(0.1)
    assert rates[id(model.backbone.layer1[0].weight)] == pytest.approx(0.01)
    assert rates[id(model.backbone.layer2[0].weight)] == pytest.approx(0.05)  # the longest prefix wins
    scheduler = build_scheduler(optimizer, _cfg(scheduler="onecycle"), 100)  # peaks at each group's own rate
    assert scheduler is not None and {round(g["max_lr"], 6) for g in optimizer.param_groups} == {0.1, 0.01, 0.05}
    with pytest.raises(ConfigError, match=r"train\.freeze.*'neck' names no part.*backbone, head"):
        freeze_parts(model, _cfg(freeze=["neck"]))
    with pytest.raises(ConfigError, match=r"train\.lr_mult\.head.*positive number"):
        build_optimizer(model, _cfg(lr_mult={"head": 0}))
