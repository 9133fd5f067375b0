"""Evaluation metrics: classification accuracy / precision / recall / confusion, and COCO detection AP.

Detection metrics are pycocotools' own (``COCO`` + ``COCOeval``, ``iouType="bbox"``), run on
in-memory structures so that the numbers are exactly those of the COCO toolkit:

* image ids are ``1..N`` in the order the images are given;
* category ids are the label indices ``0..num_classes-1`` (``category_id == label``; COCO allows 0),
  named by ``class_names``;
* annotation ids start at 1 (pycocotools treats a matched ground-truth id of 0 as "no match");
* boxes are converted from ``xyxy`` pixels to COCO ``[x, y, w, h]`` and areas are ``w * h``.

:func:`coco_gt_dict` and :func:`coco_results_list` build the same structures for writers (a results
list is what ``COCO.loadRes`` takes).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lstmdet.errors import LstmdetError

ArrayLike = Any  # numpy array, CPU torch tensor or nested list


def classification_metrics(
    y_true: ArrayLike, y_pred: ArrayLike, num_classes: int, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Accuracy, per-class precision and recall, and the confusion matrix.

    Args:
        y_true: ``(N,)`` true labels in ``[0, num_classes)``.
        y_pred: ``(N,)`` predicted labels in ``[0, num_classes)``.
        num_classes: Number of classes ``K``.
        class_names: ``K`` names (default ``"0"``, ``"1"``, ...); keys of the per-class dicts.

    Returns:
        ``{"accuracy": float, "precision": {name: float}, "recall": {name: float},
        "support": {name: int}, "confusion": K x K list of lists (rows = true class, columns =
        predicted class), "samples": N}``. A precision (recall) whose denominator is zero, i.e. a
        class never predicted (never present), is ``0.0``.

    Raises:
        LstmdetError: No samples, lengths differ, or a label is out of range.
    """
    names = _names(class_names, num_classes)
    true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if len(true) != len(pred):
        raise LstmdetError(f"classification metrics got {len(true)} true labels but {len(pred)} predictions")
    if len(true) == 0:
        raise LstmdetError("classification metrics need at least one sample; the evaluation set is empty")
    for what, labels in (("true", true), ("predicted", pred)):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if len(bad):
            raise LstmdetError(f"{what} label {int(bad[0])} is outside 0..{num_classes - 1} ({num_classes} classes)")
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)
    hits = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros(num_classes), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros(num_classes), where=support > 0)
    return {
        "accuracy": float(hits.sum() / len(true)),
        "precision": {name: float(v) for name, v in zip(names, precision, strict=True)},
        "recall": {name: float(v) for name, v in zip(names, recall, strict=True)},
        "support": {name: int(v) for name, v in zip(names, support, strict=True)},
        "confusion": confusion.tolist(),
        "samples": len(true),
    }


def xyxy_to_xywh(boxes: ArrayLike) -> np.ndarray:
    """``(N, 4)`` ``[x1, y1, x2, y2]`` -> ``(N, 4)`` float64 COCO ``[x, y, w, h]``."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def coco_gt_dict(
    gt: Sequence[dict[str, Any]], class_names: Sequence[str], file_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """A COCO ground-truth dataset dict (``images``, ``annotations``, ``categories``).

    Args:
        gt: One dict per image: ``boxes`` ``(N, 4)`` xyxy pixels, ``labels`` ``(N,)``, ``width``,
            ``height``; optionally ``iscrowd`` ``(N,)`` (crowd boxes are neither matched nor missed).
        class_names: Category names; category id = label index.
        file_names: Optional ``file_name`` of each image.

    Returns:
        The dict; image ids ``1..len(gt)``, annotation ids from 1.
    """
    if file_names is not None and len(file_names) != len(gt):
        raise LstmdetError(f"got {len(file_names)} file names for {len(gt)} images")
    images, annotations = [], []
    for i, item in enumerate(gt):
        for key in ("width", "height"):
            if key not in item:
                raise LstmdetError(f"ground truth of image {i} has no {key!r}; give each image's width and height")
        image = {"id": i + 1, "width": int(item["width"]), "height": int(item["height"])}
        if file_names is not None:
            image["file_name"] = str(file_names[i])
        images.append(image)
        boxes = xyxy_to_xywh(item.get("boxes", np.zeros((0, 4))))
        labels = _labels(item.get("labels", np.zeros(0)), len(boxes), len(class_names), f"ground truth of image {i}")
        crowd = np.asarray(item.get("iscrowd", np.zeros(len(boxes))), dtype=np.int64).reshape(-1)
        for box, label, is_crowd in zip(boxes, labels, crowd, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label),
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": int(is_crowd),
                }
            )
    return {"images": images, "annotations": annotations, "categories": _categories(class_names)}


def coco_results_list(
    predictions: Sequence[dict[str, Any]],
    image_ids: Sequence[int] | None = None,
    num_classes: int | None = None,
) -> list[dict[str, Any]]:
    """Detections in the COCO results format that ``COCO.loadRes`` takes.

    Args:
        predictions: One dict per image: ``boxes`` ``(N, 4)`` xyxy pixels, ``scores`` ``(N,)``,
            ``labels`` ``(N,)``.
        image_ids: The COCO image id of each entry (default ``1..len(predictions)``).
        num_classes: When given, labels are checked to lie in ``[0, num_classes)``.

    Returns:
        ``[{"image_id", "category_id" (= label), "bbox": [x, y, w, h], "score"}, ...]``.
    """
    ids = list(range(1, len(predictions) + 1)) if image_ids is None else list(image_ids)
    if len(ids) != len(predictions):
        raise LstmdetError(f"got {len(ids)} image ids for {len(predictions)} prediction entries")
    results = []
    for i, (image_id, item) in enumerate(zip(ids, predictions, strict=True)):
        boxes = xyxy_to_xywh(item.get("boxes", np.zeros((0, 4))))
        labels = _labels(item.get("labels", np.zeros(0)), len(boxes), num_classes, f"predictions of image {i}")
        scores = np.asarray(item.get("scores", np.zeros(0)), dtype=np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise LstmdetError(f"predictions of image {i} have {len(boxes)} boxes but {len(scores)} scores")
        for box, label, score in zip(boxes, labels, scores, strict=True):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label),
                    "bbox": [float(v) for v in box],
                    "score": float(score),
                }
            )
    return results


def coco_detection_metrics(
    gt: Sequence[dict[str, Any]],
    predictions: Sequence[dict[str, Any]],
    class_names: Sequence[str],
    *,
    max_dets: int = 100,
) -> dict[str, Any]:
    """COCO box AP with pycocotools, from in-memory ground truth and predictions.

    Args:
        gt: One dict per image: ``boxes`` ``(N, 4)`` xyxy pixels, ``labels`` ``(N,)`` in
            ``[0, K)``, ``width``, ``height`` (optionally ``iscrowd``). Images without boxes count:
            detections on them are false positives.
        predictions: One dict per image, same order: ``boxes`` ``(M, 4)`` xyxy, ``scores`` ``(M,)``,
            ``labels`` ``(M,)``.
        class_names: The ``K`` class names; category id = label index.
        max_dets: Detections per image considered (highest scores first), COCO's 100 by default.

    Returns:
        ``{"map": AP@[.5:.95], "map_50": AP@.5, "map_75": AP@.75, "mar": AR@[.5:.95] (max_dets),
        "per_class_ap": {name: AP@[.5:.95] or None when the class has no ground truth},
        "images": N}``, as pycocotools computes them (area range "all", 101-point interpolated
        precision, averaged over the classes that have ground truth). With no ground truth at all
        every average is 0.0; with no predictions at all the APs are 0.0.

    Raises:
        LstmdetError: ``gt`` and ``predictions`` differ in length, no images, or malformed entries.
    """
    if len(gt) != len(predictions):
        raise LstmdetError(f"got ground truth for {len(gt)} images but predictions for {len(predictions)}")
    if not gt:
        raise LstmdetError("detection metrics need at least one image; the evaluation set is empty")
    num_classes = len(class_names)
    gt_dict = coco_gt_dict(gt, class_names)
    results = coco_results_list(predictions, num_classes=num_classes)
    dt_annotations = [
        {**r, "id": i + 1, "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0} for i, r in enumerate(results)
    ]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = _coco(gt_dict)
        coco_dt = _coco({**gt_dict, "annotations": dt_annotations})
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.maxDets = [1, min(10, max_dets), max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"]  # (T iou thresholds, R recall points, K classes, A areas, M maxDets)
    recall = evaluator.eval["recall"]  # (T, K, A, M)
    precision, recall = precision[:, :, :, 0, -1], recall[:, :, 0, -1]  # area "all", max_dets
    ious = evaluator.params.iouThrs
    per_class = {}
    for k, name in enumerate(_names(class_names, num_classes)):
        p = precision[:, :, k]
        per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else None
    return {
        "map": _mean_valid(precision),
        "map_50": _mean_valid(precision[np.isclose(ious, 0.5)]),
        "map_75": _mean_valid(precision[np.isclose(ious, 0.75)]),
        "mar": _mean_valid(recall),
        "per_class_ap": per_class,
        "images": len(gt),
    }


def _coco(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _mean_valid(values: np.ndarray) -> float:
    """pycocotools' average: entries of -1 (no ground truth) are left out; 0.0 when none is left."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else 0.0


def _names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise LstmdetError(f"got {len(names)} class names for {num_classes} classes")
    if len(set(names)) != len(names):
        raise LstmdetError(f"class names must be unique, got {names}")
    return names


def _categories(class_names: Sequence[str]) -> list[dict[str, Any]]:
    return [{"id": k, "name": str(name)} for k, name in enumerate(class_names)]


def _labels(labels: ArrayLike, count: int, num_classes: int | None, where: str) -> np.ndarray:
    out = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(out) != count:
        raise LstmdetError(f"{where}: {count} boxes but {len(out)} labels; give one label per box")
    if num_classes is not None:
        bad = out[(out < 0) | (out >= num_classes)]
        if len(bad):
            raise LstmdetError(f"{where}: label {int(bad[0])} is outside 0..{num_classes - 1} ({num_classes} classes)")
    return out
