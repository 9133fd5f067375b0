"""Built-in detection datasets for image files: ``coco`` and ``yolo``.

* ``coco``: a COCO json file and its image folder (:func:`lstmdet.data.coco.load_coco`). Labels are
  ``0..K-1`` in order of increasing category id; ``category_ids`` maps them back to the file's ids.
  Crowd regions (``iscrowd: 1``) are not training targets and are left out of items.
* ``yolo``: Ultralytics layout ``root/images/**/*.jpg``, ``root/labels/**/*.txt`` (``class cx cy w h``
  normalised), ``root/names.yaml``. A missing label file is an image without objects (YOLO's
  convention). ``category_ids`` is ``0..K-1`` (the class indices), as in :func:`lstmdet.data.coco.yolo_to_coco`.

Both follow the ``lstmdet_register_datasets`` contract: items are ``(image, target)`` with ``image``
``(H, W, 3)`` uint8 RGB as displayed (EXIF orientation applied) and ``target`` ``{"boxes": (N, 4)
float32 xyxy pixels, "labels": (N,) int64, "file": str}``; ``task == "detect"``.

Bad data: malformed annotations raise :class:`lstmdet.data.coco.DataFormatError` at construction
naming the file (and line or entry); boxes outside the image are clipped with a warning naming the
file and degenerate ones dropped; unreadable images are left out with a warning and counted in
``skipped`` (headers are checked at construction; a file whose pixels fail to decode is left out on
first access and the next image served).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import Dataset

from lstmdet import hookimpl
from lstmdet.data.coco import (
    check_missing_labels,
    coco_target,
    load_coco,
    read_yolo_names,
    sanitize_boxes,
    yolo_boxes,
    yolo_label_path,
    yolo_layout,
)
from lstmdet.data.images import DEFAULT_MAX_PIXELS, SkipsUnreadable, find_images, read_image
from lstmdet.data.video_dataset import CocoVideo
from lstmdet.errors import LstmdetError

if TYPE_CHECKING:
    from lstmdet.registry import Registrar


class _FileDetection(SkipsUnreadable, Dataset):
    """Shared item logic: a list of ``(path, boxes, labels)`` records with boxes in displayed pixels."""

    task = "detect"
    classes: list[str]
    category_ids: list[int]
    records: list[tuple[Path, np.ndarray, np.ndarray]]
    max_pixels: int

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        return self._read_with_fallback(index, len(self.records), lambda i: self.records[i][0], self._load)

    def _load(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        path, boxes, labels = self.records[index]
        image = read_image(path, max_pixels=self.max_pixels)
        return image, {"boxes": boxes.copy(), "labels": labels.copy(), "file": str(path)}


class CocoDetection(_FileDetection):
    """Images and boxes of a COCO json file.

    Args:
        annotations: The COCO json file.
        images: Folder the json's ``file_name`` entries are relative to; default ``images/`` next
            to the json file if it exists, else the json file's folder.
        max_pixels: Largest ``width * height`` accepted per image.

    Attributes:
        classes: Category names by increasing category id.
        category_ids: COCO category id of each label.
        skipped: Number of images left out as unreadable.
        task: ``"detect"``.

    Raises:
        DataFormatError: The json file is missing or malformed.
    """

    def __init__(
        self,
        annotations: str | os.PathLike,
        images: str | os.PathLike | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        coco = load_coco(annotations, images)
        if not coco.categories:
            raise LstmdetError(f"COCO file {coco.path} defines no categories; a detection dataset needs at least one")
        self.coco = coco
        self.classes = coco.classes
        self.category_ids = coco.category_ids
        self.max_pixels = max_pixels
        self.skipped_files = {}
        entries = {coco.images_dir / img["file_name"]: img for img in coco.images}
        self.records = []
        for path, (width, height) in self._probe_all(entries, max_pixels):
            img = entries[path]
            if (img.get("width"), img.get("height")) not in ((width, height), (None, None)):
                self._note_skipped(
                    path,
                    f"the file is {width}x{height} but {coco.path} says {img.get('width')}x{img.get('height')} "
                    "(wrong file, or EXIF orientation the annotations ignore)",
                )
                continue
            boxes, labels = coco_target(coco, img["id"])
            boxes, keep = sanitize_boxes(boxes, width, height, source=path)
            self.records.append((path, boxes[keep], labels[keep]))


class YoloDetection(_FileDetection):
    """Images and boxes of a dataset in YOLO (Ultralytics) layout.

    Args:
        root: Folder with ``images/`` (searched recursively) and ``labels/`` (same relative paths, ``.txt``).
        names: Class-names YAML (``names:`` list or ``{id: name}``); default ``root/names.yaml``.
        max_pixels: Largest ``width * height`` accepted per image.
        missing_labels: ``"error"`` (default): an image without a label file raises, naming the file;
            ``"empty"``: such an image has no objects (YOLO's convention for background images).

    Attributes:
        classes: Class names from ``names``.
        category_ids: ``list(range(len(classes)))``.
        skipped: Number of images left out as unreadable.
        task: ``"detect"``.

    Raises:
        DataFormatError: No ``images/`` folder, bad ``names``, a missing label file, a malformed label
            line or an unknown class id (naming the file and line).
        ValueError: ``missing_labels`` is neither ``"error"`` nor ``"empty"``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        names: str | os.PathLike | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        missing_labels: str = "error",
    ) -> None:
        check_missing_labels(missing_labels)
        root = Path(root)
        images_dir, labels_dir = yolo_layout(root)
        self.classes = read_yolo_names(root / "names.yaml" if names is None else names)
        self.category_ids = list(range(len(self.classes)))
        self.max_pixels = max_pixels
        self.skipped_files = {}
        self.records = []
        for path, (width, height) in self._probe_all(find_images(images_dir), max_pixels):
            label_file = yolo_label_path(path, images_dir, labels_dir)
            boxes, labels = yolo_boxes(
                label_file, width, height, len(self.classes), source=label_file, missing_labels=missing_labels
            )
            self.records.append((path, boxes, labels))


@hookimpl
def lstmdet_register_datasets(registry: Registrar) -> None:
    """Register ``coco``, ``yolo`` and ``coco_video`` (clips read from video files)."""
    registry.add("coco", CocoDetection)
    registry.add("yolo", YoloDetection)
    registry.add("coco_video", CocoVideo)
