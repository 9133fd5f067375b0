"""Box geometry shared by data loading, augmentation and drawing: boxes are ``xyxy`` pixels."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["clip_boxes"]


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
