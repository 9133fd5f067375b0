"""Batching and resizing of input images for the two tasks.

Both transforms take a list of ``(3, H, W)`` float images in ``[0, 1]`` (sizes may differ) and
return torchvision's ``ImageList`` of normalised images plus the targets mapped into the resized
frame. ``postprocess`` maps predictions back to each original image's pixels.
"""

from __future__ import annotations

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


def build_transform(task: str, input_cfg: dict, size_divisible: int) -> nn.Module:
    """The input transform for ``task`` from a validated ``model.input`` section.

    Detection uses torchvision's ``GeneralizedRCNNTransform``: the shorter side is resized to
    ``size`` (the longer one capped at ``max_size``), boxes follow, the batch is zero-padded to a
    multiple of ``size_divisible``, and ``postprocess`` maps boxes back to original pixels.
    """
    if task == "classify":
        return ClassifyTransform(tuple(input_cfg["size"]), input_cfg["mean"], input_cfg["std"])
    return GeneralizedRCNNTransform(
        min_size=input_cfg["size"],
        max_size=input_cfg["max_size"],
        image_mean=input_cfg["mean"],
        image_std=input_cfg["std"],
        size_divisible=size_divisible,
    )
