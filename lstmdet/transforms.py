"""Batching and resizing of input images for the two tasks.

Both transforms take a list of ``(3, H, W)`` float images in ``[0, 1]`` (sizes may differ) and
return torchvision's ``ImageList`` of normalised images plus the targets mapped into the resized
frame. ``postprocess`` maps predictions back to each original image's pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform


class ClassifyTransform(nn.Module):
    """Resize every image to one fixed size, normalise and stack.

    Args:
        size: ``(height, width)`` the images are resized to.
        mean: Per-channel mean subtracted after scaling to ``[0, 1]``.
        std: Per-channel standard deviation divided by.
    """

    def __init__(self, size: tuple[int, int], mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1), persistent=False)

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        """Return an ``ImageList`` with ``tensors`` ``(N, 3, h, w)`` and the targets unchanged."""
        batch = []
        for image in images:
            if image.shape[-2:] != self.size:
                image = F.interpolate(image[None], size=self.size, mode="bilinear", antialias=True)[0]
            batch.append((image - self.mean) / self.std)
        tensors = torch.stack(batch)
        return ImageList(tensors, [self.size] * len(images)), targets

    def postprocess(
        self, predictions: list[dict[str, Tensor]], image_sizes: list[tuple[int, int]], original_sizes: list
    ) -> list[dict[str, Tensor]]:
        """Class predictions do not depend on image geometry: returned as they are."""
        return predictions


def resized_size(height: int, width: int, min_size: float, max_size: float) -> tuple[int, int]:
    """The size torchvision's ``GeneralizedRCNNTransform`` (eval mode) resizes an image to.

    The shorter side goes to ``min_size`` unless the longer one would exceed ``max_size``; the
    scale is computed and applied as torchvision and ``F.interpolate`` do (Python floats, floor).

    Returns:
        ``(height', width')`` in pixels.
    """
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return math.floor(float(height) * scale), math.floor(float(width) * scale)


def resize_for_detection(image: Tensor, min_size: float, max_size: float) -> Tensor:
    """Resize a ``(3, H, W)`` image as ``GeneralizedRCNNTransform`` does in eval mode.

    Bilinear, ``align_corners=False``, to :func:`resized_size`; an image already at that size is
    returned as it is (the interpolation would be the identity). Lets loader processes shrink
    images to the model's input size before the model sees them.
    """
    height, width = image.shape[-2:]
    size = resized_size(height, width, min_size, max_size)
    if size == (height, width):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


class DetectTransform(GeneralizedRCNNTransform):
    """torchvision's ``GeneralizedRCNNTransform`` that skips resizes that would change nothing.

    An image already at its target size (a generated scene at the model's input size, or one a
    loader process resized with :func:`resize_for_detection`) is passed through instead of being
    interpolated at scale 1, which gives the same pixels at no cost. Everything else is torchvision's.
    """

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor] | None]:
        """``(image (3, h, w), target)`` resized; unchanged when already at the target size."""
        single_size = not self.training or len(self.min_size) == 1
        if single_size and self.fixed_size is None:
            height, width = image.shape[-2:]
            if resized_size(height, width, self.min_size[-1], self.max_size) == (height, width):
                return image, target
        return super().resize(image, target)


def build_transform(task: str, input_cfg: dict, size_divisible: int) -> nn.Module:
    """The input transform for ``task`` from a validated ``model.input`` section.

    Detection uses :class:`DetectTransform` (torchvision's ``GeneralizedRCNNTransform``): the
    shorter side is resized to ``size`` (the longer one capped at ``max_size``), boxes follow, the
    batch is zero-padded to a multiple of ``size_divisible``, and ``postprocess`` maps boxes back
    to original pixels.
    """
    if task == "classify":
        return ClassifyTransform(tuple(input_cfg["size"]), input_cfg["mean"], input_cfg["std"])
    return DetectTransform(
        min_size=input_cfg["size"],
        max_size=input_cfg["max_size"],
        image_mean=input_cfg["mean"],
        image_std=input_cfg["std"],
        size_divisible=size_divisible,
    )
