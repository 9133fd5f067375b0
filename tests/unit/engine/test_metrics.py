"""Metrics: COCO AP through pycocotools on known cases, and classification metrics by hand."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lstmdet.engine.metrics import (
    classification_metrics,
    coco_detection_metrics,
    coco_gt_dict,
    coco_results_list,
)
from lstmdet.errors import LstmdetError

CLASSES = ["zero", "one"]
# pycocotools computes precision as tp / (tp + fp + eps) with eps = np.spacing(1), so a perfect
# precision is 1 - 2.2e-16, not exactly 1; compare with this tolerance.
EXACT = 1e-9


def _gt(boxes, labels, size=(64, 64)):
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "labels": np.asarray(labels), "width": size[1],
            "height": size[0]}  # fmt: skip


def _pred(boxes, scores, labels):
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "scores": np.asarray(scores, float),
            "labels": np.asarray(labels)}  # fmt: skip


def test_perfect_predictions_score_one():
    gt = [_gt([[10, 10, 30, 30], [40, 5, 60, 25]], [0, 1]), _gt([[0, 0, 8, 12]], [1])]
    preds = [_pred(g["boxes"], [0.9] * len(g["boxes"]), g["labels"]) for g in gt]
    m = coco_detection_metrics(gt, preds, CLASSES)
    assert m["map"] == pytest.approx(1.0, abs=EXACT)
    assert m["map_50"] == pytest.approx(1.0, abs=EXACT)
    assert m["map_75"] == pytest.approx(1.0, abs=EXACT)
    assert m["per_class_ap"] == {"zero": pytest.approx(1.0, abs=EXACT), "one": pytest.approx(1.0, abs=EXACT)}
    assert m["images"] == 2


def test_a_known_shift_gives_the_thresholds_it_passes():
    # GT 20x20 at (10, 10); the prediction is the same box shifted 4 px right.
    # Intersection 16 * 20 = 320, union 400 + 400 - 320 = 480, IoU = 2/3 = 0.667.
    # COCO's thresholds are 0.50, 0.55, ..., 0.95; a match needs IoU >= threshold, so 0.50, 0.55,
    # 0.60 and 0.65 match (4 of 10) and 0.70 ... 0.95 do not. (IoU is kept away from a threshold on
    # purpose: 0.6 exactly would compare a rounded quotient with a rounded linspace value.)
    # With one GT and one detection, a matched threshold has recall 1 at precision 1, so all 101
    # interpolated precision points are 1 (AP 1); an unmatched one has AP 0.
    # AP@[.5:.95] = 4/10 = 0.4, AP@.5 = 1, AP@.75 = 0.
    gt = [_gt([[10, 10, 30, 30]], [0])]
    m = coco_detection_metrics(gt, [_pred([[14, 10, 34, 30]], [0.8], [0])], CLASSES)
    assert m["map"] == pytest.approx(0.4, abs=EXACT)
    assert m["map_50"] == pytest.approx(1.0, abs=EXACT)
    assert m["map_75"] == 0.0
    assert m["per_class_ap"]["zero"] == pytest.approx(0.4, abs=EXACT)
    assert m["per_class_ap"]["one"] is None  # no ground truth of class "one"


def test_half_recall_uses_101_point_interpolation():
    # Two GT boxes, one perfect detection: recall reaches 0.5 at precision 1 and never more. Of the 101
    # recall points 0.00, 0.01, ..., 1.00, the 51 points <= 0.5 get precision 1, the other 50 get 0.
    gt = [_gt([[10, 10, 30, 30], [40, 40, 60, 60]], [0, 0])]
    m = coco_detection_metrics(gt, [_pred([[10, 10, 30, 30]], [0.9], [0])], CLASSES)
    assert m["map"] == pytest.approx(51 / 101, abs=EXACT)
    assert m["map_50"] == pytest.approx(51 / 101, abs=EXACT)


def test_a_higher_scored_false_positive_lowers_precision():
    # Ranked by score: FP (0.9), TP (0.8), TP (0.7). Precision/recall after each: (0, 0), (1/2, 1/2),
    # (2/3, 1). Interpolated precision (max to the right) is 2/3 at every recall point: AP = 2/3 at
    # every IoU threshold.
    gt = [_gt([[10, 10, 30, 30], [40, 40, 60, 60]], [0, 0])]
    preds = [_pred([[0, 40, 8, 60], [10, 10, 30, 30], [40, 40, 60, 60]], [0.9, 0.8, 0.7], [0, 0, 0])]
    m = coco_detection_metrics(gt, preds, CLASSES)
    assert m["map"] == pytest.approx(2 / 3, abs=EXACT)


def test_detections_on_images_without_ground_truth_are_false_positives():
    # Image 2 has no GT; its detection (0.9) outranks the TP on image 1 (0.5): as above, AP = 1/2.
    gt = [_gt([[10, 10, 30, 30]], [0]), _gt([], [])]
    preds = [_pred([[10, 10, 30, 30]], [0.5], [0]), _pred([[5, 5, 20, 20]], [0.9], [0])]
    m = coco_detection_metrics(gt, preds, CLASSES)
    assert m["map"] == pytest.approx(0.5, abs=EXACT)
    assert m["images"] == 2


def test_classes_without_ground_truth_are_left_out_of_the_mean():
    gt = [_gt([[10, 10, 30, 30]], [0])]
    preds = [_pred([[10, 10, 30, 30], [40, 40, 50, 50]], [0.9, 0.95], [0, 1])]  # a class-"one" FP
    m = coco_detection_metrics(gt, preds, CLASSES)
    assert m["map"] == pytest.approx(1.0, abs=EXACT)
    assert m["per_class_ap"]["one"] is None


def test_no_predictions_at_all_score_zero():
    gt = [_gt([[10, 10, 30, 30]], [0]), _gt([], [])]
    empty = [_pred([], [], []), _pred([], [], [])]
    m = coco_detection_metrics(gt, empty, CLASSES)
    assert (m["map"], m["map_50"], m["map_75"]) == (0.0, 0.0, 0.0)
    assert m["per_class_ap"] == {"zero": 0.0, "one": None}
    m = coco_detection_metrics([_gt([], [])], [_pred([], [], [])], CLASSES)  # no ground truth either
    assert m["map"] == 0.0 and m["per_class_ap"] == {"zero": None, "one": None}


def test_pycocotools_prints_nothing(capsys):
    coco_detection_metrics([_gt([[10, 10, 30, 30]], [0])], [_pred([[10, 10, 30, 30]], [0.9], [0])], CLASSES)
    assert capsys.readouterr().out == ""


def test_helpers_round_trip_through_pycocotools_files(tmp_path):
    gt = [_gt([[10, 10, 30, 30], [40, 5, 60, 25]], [0, 1]), _gt([[0, 0, 8, 12]], [1])]
    preds = [_pred([[12, 10, 31, 30], [40, 8, 60, 25]], [0.9, 0.6], [0, 1]), _pred([[1, 0, 8, 13]], [0.7], [1])]
    (tmp_path / "gt.json").write_text(json.dumps(coco_gt_dict(gt, CLASSES)))
    (tmp_path / "res.json").write_text(json.dumps(coco_results_list(preds)))
    with contextlib.redirect_stdout(io.StringIO()):  # the standard file-based COCO workflow
        coco_gt = COCO(str(tmp_path / "gt.json"))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(tmp_path / "res.json")), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    m = coco_detection_metrics(gt, preds, CLASSES)
    assert m["map"] == pytest.approx(evaluator.stats[0])
    assert m["map_50"] == pytest.approx(evaluator.stats[1])
    assert m["map_75"] == pytest.approx(evaluator.stats[2])
    assert 0.0 < m["map"] < 1.0


def test_detection_input_errors():
    with pytest.raises(LstmdetError, match="predictions for 0"):
        coco_detection_metrics([_gt([], [])], [], CLASSES)
    with pytest.raises(LstmdetError, match="outside"):
        coco_detection_metrics([_gt([], [])], [_pred([[0, 0, 1, 1]], [0.5], [2])], CLASSES)
    with pytest.raises(LstmdetError, match="labels"):
        coco_detection_metrics([_gt([[0, 0, 1, 1]], [])], [_pred([], [], [])], CLASSES)


def test_classification_metrics_against_a_hand_computed_confusion_matrix():
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 1, 1, 2, 2, 2, 2, 0]
    # rows = true, columns = predicted:
    #   true 0: predicted 0 twice, 1 once           -> [2, 1, 0]
    #   true 1: predicted 1 once, 2 once            -> [0, 1, 1]
    #   true 2: predicted 2 three times, 0 once     -> [1, 0, 3]
    # column sums (predicted counts): [3, 2, 4]; row sums (support): [3, 2, 4]; diagonal: 2, 1, 3.
    m = classification_metrics(y_true, y_pred, 3, ["a", "b", "c"])
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert m["accuracy"] == pytest.approx(6 / 9)
    assert m["precision"] == pytest.approx({"a": 2 / 3, "b": 1 / 2, "c": 3 / 4})
    assert m["recall"] == pytest.approx({"a": 2 / 3, "b": 1 / 2, "c": 3 / 4})
    assert m["support"] == {"a": 3, "b": 2, "c": 4}
    assert m["samples"] == 9


def test_classification_metrics_edge_cases():
    m = classification_metrics(np.array([0, 0]), np.array([0, 0]), 2, None)
    assert m["precision"] == {"0": 1.0, "1": 0.0}  # class "1" never predicted: 0.0, not NaN
    assert m["recall"] == {"0": 1.0, "1": 0.0}  # and never present
    with pytest.raises(LstmdetError, match="outside"):
        classification_metrics([0, 3], [0, 1], 2, None)
    with pytest.raises(LstmdetError, match="empty"):
        classification_metrics([], [], 2, None)
    with pytest.raises(LstmdetError, match="2 predictions"):
        classification_metrics([0], [0, 1], 2, None)
