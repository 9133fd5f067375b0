"""Evaluation of a model on a dataset: accuracy and confusion for classification, COCO mAP for detection.

Used at the end of every training epoch (validation split), for the final ``summary.json``
(test split) and by ``lstmdet eval``. Video datasets are scored over all their frames.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lstmdet.engine.data import AugmentedDataset, build_dataset, build_loader, readable
from lstmdet.engine.device import resolve_device
from lstmdet.engine.metrics import classification_metrics, coco_detection_metrics
from lstmdet.engine.progress import progress as progress_display
from lstmdet.errors import LstmdetError, LstmdetWarning


@torch.inference_mode()
def evaluate(
    model: nn.Module, dataset: AugmentedDataset, *, batch_size: int = 16, workers: int = 0, progress: bool = False
) -> dict[str, Any]:
    """Score ``model`` on every item of ``dataset`` (an eval-split :class:`AugmentedDataset`).

    Files that cannot be read are left out, never replaced by another item: the metrics cover the
    readable ones, ``skipped`` counts the others and a warning names them.

    Args:
        model: The model to score.
        dataset: The items, in order.
        batch_size: Items (images or clips) per batch.
        workers: DataLoader worker processes.
        progress: Show progress over the items (images or clips) on stderr (see
            :mod:`lstmdet.engine.progress`).

    Returns:
        Classification: ``accuracy``, ``precision`` / ``recall`` per class, ``confusion``.
        Detection: ``map`` (AP@[.5:.95]), ``map_50``, ``map_75``, ``per_class_ap``, ``images``.
        Both: ``skipped``, the number of unreadable files left out.
    """
    loader = build_loader(dataset, batch_size=batch_size, shuffle=False, workers=workers, seed=0)
    was_training = model.training
    model.eval()
    truths: list[Any] = []
    predictions: list[dict[str, torch.Tensor]] = []
    skipped: set[str] = set(getattr(dataset.dataset, "skipped_files", {}))  # refused at construction
    bar = progress_display(total=len(dataset), desc="eval", unit="items", enabled=progress)
    with bar:
        for images, targets in loader:
            items = len(images)
            images, targets, unreadable = readable(images, targets)
            skipped.update(unreadable)
            if images:
                outputs = model.predict(images)
                if outputs and isinstance(outputs[0], list):  # clips: one list of frames per clip
                    outputs = [frame for clip in outputs for frame in clip]
                frames = [f for item in images for f in (item if item.dim() == 4 else [item])]
                predictions.extend(outputs)
                for frame, target in zip(frames, targets, strict=True):
                    truths.append({**target, "height": frame.shape[-2], "width": frame.shape[-1]})
            bar.update(items)
    model.train(was_training)
    if skipped:
        shown = ", ".join(sorted(skipped)[:5]) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(
            f"evaluation left out {len(skipped)} unreadable image files: {shown}", LstmdetWarning, stacklevel=2
        )
    if not truths:
        raise LstmdetError(
            "the evaluation dataset is empty" + (f" ({len(skipped)} unreadable files left out)" if skipped else "")
        )
    if model.task == "classify":
        y_true = [int(t["labels"]) for t in truths]
        y_pred = [int(p["labels"]) for p in predictions]
        return {**classification_metrics(y_true, y_pred, len(model.classes), model.classes), "skipped": len(skipped)}
    gt = [
        {"boxes": t["boxes"].numpy(), "labels": t["labels"].numpy(), "width": t["width"], "height": t["height"]}
        for t in truths
    ]
    preds = [{k: v.numpy() for k, v in p.items()} for p in predictions]
    return {**coco_detection_metrics(gt, preds, model.classes), "skipped": len(skipped)}


def headline(metrics: dict[str, Any], task: str) -> float:
    """The number that decides ``best.pt``: accuracy (classify) or mAP@[.5:.95] (detect)."""
    return float(metrics["accuracy"] if task == "classify" else metrics["map"])


def evaluate_checkpoint(
    weights: str | Path,
    *,
    data: dict[str, Any] | None = None,
    batch_size: int = 16,
    workers: int = 0,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """``lstmdet eval``: load a checkpoint (or an exported ``.onnx`` model) and score it on a dataset.

    Args:
        weights: Checkpoint path, ``default``, or a ``.onnx`` file ``lstmdet export`` wrote (run by ONNX
            Runtime; its metadata holds the config, so its ``data.test`` / ``data.val`` are the defaults).
        data: A dataset spec ``{name: ..., **options}``; default: the checkpoint config's
            ``data.test``, else ``data.val``.
        batch_size: Images (clips) per batch.
        workers: DataLoader worker processes.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]``.
        progress: Show progress over the items on stderr.

    Raises:
        LstmdetError: A bad checkpoint, no dataset to score on, or a dataset of another task than
            the model's (a detector on classification data, or the reverse), named with both tasks.
    """
    from lstmdet.checkpoint import load_model

    if Path(weights).suffix.lower() == ".onnx":
        from lstmdet.export.runtime import OnnxModel

        model = OnnxModel(weights, device=str(device))
    else:
        model = load_model(weights, map_location=resolve_device(device))
    config = model.config
    given = data is not None
    if data is None:
        data = config["data"].get("test") or config["data"].get("val")
        if data is None:
            raise LstmdetError(f"{weights} has no data.test or data.val in its config: pass --data")
    field = "--data" if given else "data.test" if config["data"].get("test") else "data.val"
    dataset = AugmentedDataset(
        build_dataset(data, field, task=model.task), task=model.task, split="eval",
        augment=config["data"].get("augment"), seed=0,
    )  # fmt: skip
    return evaluate(model, dataset, batch_size=batch_size, workers=workers, progress=progress)
