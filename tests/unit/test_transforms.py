"""Input transforms: the detection resize equals torchvision's, and no-op resizes are skipped."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from lstmdet.transforms import DetectTransform, resize_for_detection, resized_size

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SIZES = [(480, 640), (427, 640), (640, 480), (612, 612), (361, 640), (375, 500), (120, 160), (96, 128), (50, 1000)]


def transforms(min_size: int, max_size: int) -> tuple[GeneralizedRCNNTransform, DetectTransform]:
    ours = DetectTransform(min_size, max_size, MEAN, STD, size_divisible=32).eval()
    return GeneralizedRCNNTransform(min_size, max_size, MEAN, STD, size_divisible=32).eval(), ours


@pytest.mark.parametrize(("min_size", "max_size"), [(128, 128), (128, 256), (800, 1333)])
def test_resized_size_and_batches_match_torchvision(min_size, max_size):
    theirs, ours = transforms(min_size, max_size)
    for height, width in SIZES:
        image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(height * width))
        expected, _ = theirs([image])
        got, _ = ours([image])
        assert resized_size(height, width, min_size, max_size) == tuple(expected.image_sizes[0])
        assert got.image_sizes == expected.image_sizes
        torch.testing.assert_close(got.tensors, expected.tensors, rtol=0, atol=0)


def test_resizing_first_gives_the_same_batch_and_skips_the_second_resize(monkeypatch):
    theirs, ours = transforms(128, 128)
    image = torch.rand(3, 480, 640, generator=torch.Generator().manual_seed(0))
    small = resize_for_detection(image, 128, 128)
    assert tuple(small.shape) == (3, 96, 128)
    assert resize_for_detection(small, 128, 128) is small  # already at its size: returned as it is
    calls = []
    original = torch.nn.functional.interpolate
    monkeypatch.setattr(torch.nn.functional, "interpolate", lambda *a, **k: calls.append(1) or original(*a, **k))
    got, _ = ours([small])
    assert not calls  # no interpolation at scale 1
    expected, _ = theirs([image])
    # resize-then-normalise vs normalise-then-resize: equal up to float rounding
    torch.testing.assert_close(got.tensors, expected.tensors, rtol=0, atol=1e-5)


def test_training_with_one_size_skips_only_no_op_resizes():
    _, ours = transforms(64, 64)
    ours.train()
    target = {"boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0]]), "labels": torch.tensor([0])}
    same, same_t = ours.resize(torch.rand(3, 64, 64), dict(target))
    assert same.shape[-2:] == (64, 64) and torch.equal(same_t["boxes"], target["boxes"])
    smaller, smaller_t = ours.resize(torch.rand(3, 128, 128), dict(target))
    assert smaller.shape[-2:] == (64, 64)
    torch.testing.assert_close(smaller_t["boxes"], target["boxes"] / 2)
