"""Box geometry shared by data loading, augmentation, detection and drawing: boxes are ``xyxy`` pixels."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["class_agnostic_nms", "clip_boxes"]


def clip_boxes(boxes: ArrayLike, width: float, height: float) -> np.ndarray:
    """``xyxy`` boxes clipped to the image: ``x`` to ``[0, width]``, ``y`` to ``[0, height]``.

    A box wholly outside the image becomes a zero-width or zero-height box on its edge; NaN stays
    NaN. The input is not changed.

    Args:
        boxes: ``(N, 4)`` boxes (anything ``numpy`` reads as such, e.g. a list of 4-lists).
        width: Largest ``x`` (the image width for box corners; ``width - 1`` for the last pixel column).
        height: Largest ``y``.

    Returns:
        A new ``(N, 4)`` array; floating input keeps its dtype, anything else becomes ``float64``.
    """
    array = np.asarray(boxes)
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    array = array.reshape(-1, 4)
    return np.clip(array, 0, np.array([width, height, width, height], dtype=array.dtype))


def class_agnostic_nms(prediction: dict[str, Tensor], iou: float) -> dict[str, Tensor]:
    """Non-maximum suppression across classes: of boxes overlapping by more than ``iou``, the best stays.

    A detection head suppresses overlaps within each class only, so one object can come out twice
    with two classes; this keeps one box per object (``torchvision.ops.nms`` on all boxes at once).

    Args:
        prediction: ``boxes`` ``(N, 4)`` xyxy, ``scores`` ``(N,)``, ``labels`` ``(N,)`` (and any other
            per-box ``(N, ...)`` tensors, filtered alike).
        iou: Boxes overlapping a better box by an IoU above this are dropped.

    Returns:
        A new dict with the kept ``K <= N`` entries, best score first.
    """
    from torchvision.ops import nms

    keep = nms(prediction["boxes"].float(), prediction["scores"].float(), iou)
    count = len(prediction["boxes"])
    return {key: value[keep] if value.dim() and len(value) == count else value for key, value in prediction.items()}
