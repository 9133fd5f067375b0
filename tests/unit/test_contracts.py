"""Every registered component keeps its kind's contract (see lstmdet/interfaces.py).

Parametrised over the registry, so a new built-in (or an installed third-party plugin) is
checked as soon as it is registered: forward, backward, shapes and strides against
``feature_info``, eval-mode determinism, and streaming equality for stateful encoders.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT
from PIL import Image
from torchvision.models.detection.image_list import ImageList

from lstmdet import FeatureInfo
from lstmdet.data.coco import yolo_to_coco
from lstmdet.data.video_dataset import write_video_dataset
from lstmdet.manager import current_registry

REGISTRY = current_registry()
# Options that make a component fit the small test inputs (everything else uses its defaults).
BACKBONE_OPTIONS = {"rows": {"width": 48}}
#: Options that make each built-in detection head return its top candidates before it is trained.
HEAD_OPTIONS = {"fcos": {"score_thresh": 0.0, "detections_per_img": 50}, "retinanet": {"score_thresh": 0.0}}
SIZE = (40, 48)  # H, W: not a power of two, so ceil(H / stride) is exercised
COCO30 = ROOT / "tests" / "data" / "coco30"


def _grads_flow(module: torch.nn.Module) -> None:
    params = [p for p in module.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in params), "some parameters received no gradient"
    assert all(torch.isfinite(p.grad).all() for p in params)


@pytest.mark.parametrize("name", REGISTRY.names("backbones"))
def test_backbone_contract(name):
    backbone = REGISTRY.create("backbones", name, **BACKBONE_OPTIONS.get(name, {}))
    info = backbone.feature_info
    assert info and all(isinstance(fi, FeatureInfo) for fi in info)
    images = torch.rand(2, 3, *SIZE, requires_grad=True)
    out = backbone(images)
    assert list(out) == [fi.name for fi in info], "output keys must follow feature_info order"
    for fi in info:
        fmap = out[fi.name]
        assert fmap.shape[:3] == (2, fi.channels, math.ceil(SIZE[0] / fi.stride)), fi
        if name != "rows":  # rows turns each image row into one step: its width axis is 1
            assert fmap.shape[3] == math.ceil(SIZE[1] / fi.stride), fi
    sum(f.float().mean() for f in out.values()).backward()
    assert images.grad is not None
    _grads_flow(backbone)
    backbone.eval()
    with torch.no_grad():
        first, second = backbone(images), backbone(images)
    for key in first:
        assert torch.equal(first[key], second[key])


@pytest.mark.parametrize("name", REGISTRY.names("encoders"))
def test_encoder_contract(name):
    encoder = REGISTRY.create("encoders", name, 8)
    assert isinstance(encoder.out_channels, int)
    x = torch.rand(2, 3, 8, 6, 5, requires_grad=True)
    y, _ = encoder(x)
    assert y.shape == (2, 3, encoder.out_channels, 6, 5)
    y.mean().backward()
    assert x.grad is not None
    _grads_flow(encoder)
    encoder.eval()
    with torch.no_grad():
        whole, _ = encoder(x)
        assert torch.equal(whole, encoder(x)[0])
        first, state = encoder(x[:, :1])
        rest, _ = encoder(x[:, 1:], state)
    torch.testing.assert_close(torch.cat([first, rest], 1), whole, atol=1e-5, rtol=1e-5)
    if hasattr(encoder, "flops"):
        assert encoder.flops(tuple(x.shape)) >= 0


def _targets(task: str) -> list[dict[str, torch.Tensor]]:
    if task == "classify":
        return [{"labels": torch.tensor(1)}, {"labels": torch.tensor(2)}]
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 28.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[10.0, 2.0, 20.0, 36.0], [1.0, 1.0, 12.0, 9.0]]), "labels": torch.tensor([0, 2])},
    ]


@pytest.mark.parametrize("name", REGISTRY.names("heads"))
def test_head_contract(name):
    # An untrained detection head scores every location near its prior (0.01), below the default
    # threshold: keep every candidate so that the checks below see real boxes.
    # Assembly tells a head that takes `feature_info` the levels it reads (the maps below: strides 4, 8).
    levels = [FeatureInfo("c2", 32, 4), FeatureInfo("c3", 32, 8)]
    spec = {"name": name, **HEAD_OPTIONS.get(name, {})}
    head = REGISTRY.create_from_spec("heads", spec, "model.head", 32, 3, context={"feature_info": levels})
    assert head.task in ("classify", "detect")
    images = ImageList(torch.rand(2, 3, *SIZE), [SIZE, (32, 40)])
    features = {
        "c2": torch.rand(2, 32, 10, 12, requires_grad=True),
        "c3": torch.rand(2, 32, 5, 6, requires_grad=True),
    }
    head.train()
    losses = head(features, images, _targets(head.task))
    assert isinstance(losses, dict) and losses
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    _grads_flow(head)
    head.eval()
    with torch.no_grad():
        preds = head(features, images)
        again = head(features, images)
    assert len(preds) == 2
    for pred, other, size in zip(preds, again, images.image_sizes, strict=True):
        for key in ("scores", "labels"):
            assert torch.equal(pred[key], other[key])
        if head.task == "classify":
            assert pred["scores"].shape == (3,) and pred["labels"].shape == ()
        else:
            boxes = pred["boxes"]
            assert boxes.ndim == 2 and boxes.shape[1] == 4
            assert pred["scores"].shape == pred["labels"].shape == (len(boxes),)
            assert (boxes[:, 2] <= size[1]).all() and (boxes[:, 3] <= size[0]).all()
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] >= boxes[:, :2]).all()
            assert pred["labels"].dtype == torch.int64
            assert len(boxes) > 0, "with score_thresh 0 an untrained head must still return detections"
            assert ((pred["labels"] >= 0) & (pred["labels"] < 3)).all()
            assert (pred["scores"][:-1] >= pred["scores"][1:]).all(), "detections come best first"


def _dataset_options(name: str, tmp_path: Path) -> dict:
    """Small options for the built-in datasets that need files; others use their defaults."""
    if name == "image_folder":
        for cls, value in (("cat", 40), ("dog", 200)):
            (tmp_path / cls).mkdir()
            Image.fromarray(np.full((12, 10, 3), value, np.uint8)).save(tmp_path / cls / "a.png")
        return {"root": str(tmp_path)}
    if name == "coco":
        yolo_to_coco(COCO30, tmp_path / "coco.json")
        return {"annotations": str(tmp_path / "coco.json"), "images": str(COCO30 / "images")}
    if name == "coco_video":
        digits = REGISTRY.create("datasets", "digits_video", clips=2, frames=3, size=32)
        write_video_dataset(digits, tmp_path / "clips")
        return {"annotations": str(tmp_path / "clips" / "annotations.json")}
    return {
        "mnist_idx": {"images": 8},
        "yolo": {"root": str(COCO30)},
        "digits_det": {"images": 3, "size": 64},
        "digits_video": {"clips": 2, "frames": 3, "size": 64},
    }.get(name, {})


def _check_detection_target(target: dict, height: int, width: int, num_classes: int) -> None:
    boxes, labels = target["boxes"], target["labels"]
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert labels.dtype == np.int64 and labels.shape == (len(boxes),)
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= width).all() and (boxes[:, [1, 3]] <= height).all()
    assert ((labels >= 0) & (labels < num_classes)).all()


@pytest.mark.parametrize("name", REGISTRY.names("datasets"))
def test_dataset_contract(name, tmp_path):
    dataset = REGISTRY.create("datasets", name, **_dataset_options(name, tmp_path))
    assert dataset.task in ("classify", "detect")
    assert dataset.classes and all(isinstance(c, str) for c in dataset.classes)
    assert len(dataset) > 0
    for index in range(min(len(dataset), 3)):
        image, target = dataset[index]
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape[-1] == 3
        if dataset.task == "classify":
            assert image.ndim == 3 and 0 <= target["label"] < len(dataset.classes)
        elif image.ndim == 4:  # a clip: one target per frame
            assert len(target["frames"]) == image.shape[0]
            for frame in target["frames"]:
                _check_detection_target(frame, *image.shape[1:3], len(dataset.classes))
        else:
            _check_detection_target(target, *image.shape[:2], len(dataset.classes))
