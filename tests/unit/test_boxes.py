"""Box clipping (one rule for data loading, augmentation and drawing) and class-agnostic NMS."""

from __future__ import annotations

import numpy as np
import torch

from lstmdet.boxes import class_agnostic_nms, clip_boxes


def test_clips_x_to_width_and_y_to_height_without_changing_the_input():
    boxes = np.array([[-5.0, -1.0, 50.0, 20.0], [10.0, 12.0, 20.0, 18.0], [70.0, 40.0, 90.0, 60.0]])
    before = boxes.copy()
    out = clip_boxes(boxes, 64, 32)
    np.testing.assert_array_equal(out, [[0, 0, 50, 20], [10, 12, 20, 18], [64, 32, 64, 32]])
    np.testing.assert_array_equal(boxes, before)
    assert out is not boxes


def test_dtype_shape_and_nan():
    assert clip_boxes(np.zeros((3, 4), np.float32), 8, 8).dtype == np.float32
    assert clip_boxes([[1, 2, 30, 40]], 8, 8).dtype == np.float64
    assert clip_boxes(np.zeros((0, 4)), 8, 8).shape == (0, 4)
    assert clip_boxes([1, 2, 3, 4], 8, 8).shape == (1, 4)
    out = clip_boxes([[np.nan, 1.0, 2.0, 3.0]], 8, 8)
    assert np.isnan(out[0, 0]) and out[0, 1:].tolist() == [1.0, 2.0, 3.0]


def test_last_pixel_limits_for_drawing():
    x1, y1, x2, y2 = clip_boxes([[-3.0, 5.5, 64.0, 48.0]], 64 - 1, 48 - 1)[0].tolist()
    assert (x1, y1, x2, y2) == (0.0, 5.5, 63.0, 47.0)


def test_class_agnostic_nms_keeps_the_best_box_of_each_object_whatever_its_class():
    prediction = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.5, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0],
                               [0.0, 0.0, 10.0, 9.0]]),
        "scores": torch.tensor([0.6, 0.9, 0.5, 0.3]),
        "labels": torch.tensor([1, 7, 1, 1]),
    }  # fmt: skip
    kept = class_agnostic_nms(prediction, 0.6)
    assert torch.equal(kept["scores"], torch.tensor([0.9, 0.5])) and kept["labels"].tolist() == [7, 1]
    assert kept["boxes"].tolist() == [[0.5, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    assert class_agnostic_nms(empty, 0.5)["boxes"].shape == (0, 4)
