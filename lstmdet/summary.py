"""What a model is made of and what it costs: the data behind ``lstmdet model``.

FLOPs are counted per image with PyTorch's ``FlopCounterMode`` (a multiply-add counts as 2) for
the backbone, neck and head. Fused recurrent kernels (``torch.nn.LSTM``) are invisible to that
counter, so encoders that define ``flops(shape)`` are counted analytically, step by step; an
encoder without it is counted by the counter like the other parts.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection.image_list import ImageList

from lstmdet.manager import current_registry
from lstmdet.options import check_int


def count_params(module: nn.Module | None) -> int:
    """Number of parameters of ``module`` (0 for ``None``)."""
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _counted(fn: Any, *args: Any) -> tuple[Any, int]:
    counter = FlopCounterMode(display=False)
    with counter:
        out = fn(*args)
    return out, int(counter.get_total_flops())


def dummy_input_size(model: nn.Module) -> tuple[int, int]:
    """``(H, W)`` of the network input used to report shapes: the configured input size."""
    size = model.config["model"]["input"]["size"]
    return (size, size) if isinstance(size, int) else (size[0], size[1])


@torch.no_grad()
def describe_model(model: nn.Module, *, frames: int = 1) -> dict[str, Any]:
    """Parts, parameters, output shapes and FLOPs per image of an assembled model.

    Args:
        model: An :class:`~lstmdet.model.LstmdetModel`.
        frames: ``T`` of the dummy clip (matters for stateful encoders such as ConvLSTM).

    Returns:
        A JSON-serialisable dict: ``parts`` (part, component, plugin, options, params),
        ``params``, ``input`` ``[T, 3, H, W]``, ``levels`` (per level: the ``[C, h, w]`` output of
        ``backbone``, of the ``neck`` and of the ``encoder`` when they run on it), ``head_levels``
        (the levels the head reads), ``output`` (per-image shapes; ``"K"`` is the number of
        detections) and ``flops_per_image`` (per part and total).

    Raises:
        OptionError: ``frames`` is not a positive integer.
    """
    check_int(frames, "frames", "describe_model", minimum=1)
    registry = current_registry()
    spec = model.config["model"]
    was_training = model.training
    model.eval()
    parts = []
    for part in ("backbone", "encoder", "head"):
        entry = registry.get(f"{part}s", spec[part]["name"])
        module = model.encoders if part == "encoder" else getattr(model, part)
        options = {k: v for k, v in spec[part].items() if k != "name"}
        parts.append({"part": part, "component": entry.name, "plugin": entry.plugin, "options": options})
        parts[-1]["params"] = count_params(module)
    if model.neck is not None:
        parts.insert(1, {"part": "neck", "component": "fpn", "plugin": "lstmdet", "options": spec["neck"]})
        parts[1]["params"] = count_params(model.neck)

    height, width = dummy_input_size(model)
    x = torch.zeros(frames, 3, height, width, device=model.device)
    feats, flops_backbone = _counted(model.backbone, x)
    levels = {name: {"backbone": list(f.shape[1:])} for name, f in feats.items()}
    flops_neck = 0
    if model.neck is not None:
        feats, flops_neck = _counted(model.neck, OrderedDict(feats))
        for name, f in feats.items():
            levels.setdefault(name, {})["neck"] = list(f.shape[1:])  # the neck may add levels (c6, c7)
    flops_encoder = 0
    for level, encoder in model.encoders.items():
        f = feats[level].view(1, frames, *feats[level].shape[1:])
        if hasattr(encoder, "flops"):
            (y, _), n = encoder(f), int(encoder.flops(tuple(f.shape)))
        else:
            (y, _), n = _counted(encoder, f)
        flops_encoder += n
        feats[level] = y.flatten(0, 1)
        levels[level]["encoder"] = list(y.shape[2:])
    head_feats = {level: feats[level] for level in model.head_levels}
    images = ImageList(x, [(height, width)] * frames)
    _, flops_head = _counted(model.head, head_feats, images)
    model.train(was_training)

    total = flops_backbone + flops_neck + flops_encoder + flops_head
    per_image = {
        "backbone": flops_backbone / frames,
        "neck": flops_neck / frames,
        "encoder": flops_encoder / frames,
        "head": flops_head / frames,
        "total": total / frames,
    }
    if model.task == "classify":
        output = {"scores": [len(model.classes)], "labels": []}
    else:
        output = {"boxes": ["K", 4], "scores": ["K"], "labels": ["K"]}
    return {
        "task": model.task,
        "classes": len(model.classes),
        "parts": parts,
        "params": count_params(model),
        "input": [frames, 3, height, width],
        "levels": levels,
        "head_levels": list(model.head_levels),
        "output": output,
        "flops_per_image": per_image,
    }
