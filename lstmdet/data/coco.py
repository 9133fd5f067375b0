"""COCO json and YOLO txt annotations: reading, validating, converting, writing.

Conventions every part of lstmdet follows (the engine, evaluation and batch detection rely on them):

* **Boxes** inside lstmdet are ``xyxy`` float pixels on the image *as displayed* (EXIF orientation
  applied, see :mod:`lstmdet.data.images`); COCO files hold ``[x, y, w, h]`` pixel boxes with the
  same origin (top-left corner of the top-left pixel).
* **Category ids.** A dataset's label ``i`` (index into its ``classes``) has COCO category id
  ``category_ids[i]``. Files that lstmdet writes (:func:`write_coco_dataset`, :func:`yolo_to_coco`)
  use ``category_id == label index`` (0-based; for YOLO data the class index of ``names.yaml``), so
  ``category_ids == list(range(len(classes)))``. A foreign COCO file (e.g. official COCO with ids
  1..90 and gaps) is read with labels ``0..K-1`` in order of increasing category id and
  ``category_ids`` maps them back; detections written for it must use ``category_ids[label]``.
* **Ids.** Written files number images and annotations from 1 (pycocotools' matcher treats 0 as
  "unmatched", so annotation id 0 must never be used), images in order of sorted ``file_name``,
  which is the path relative to the images folder, with ``/`` separators. Join detections to ground
  truth by ``file_name`` when the two files were produced separately.
* **Clip datasets** (items whose target holds ``"frames"``) are written with one image entry per
  frame carrying ``video_id`` and ``frame_index`` (0-based), a top-level ``videos`` list, and
  ``track_id`` on annotations, unique over the whole file (from 1).
* **YOLO labels** (``class cx cy w h``, normalised to the displayed image, as Ultralytics reads
  them) are converted with the displayed size from the image header (no decoding). A missing label
  file is an error naming it, unless ``missing_labels="empty"`` asks for YOLO's convention (an image
  without a label file has no objects). Polygon lines (``class x1 y1 x2 y2 ...``) become their
  bounding box.
* **Bad boxes.** Boxes reaching outside the image by more than :data:`CLIP_TOLERANCE` pixels are
  clipped with a warning naming the file; boxes narrower or lower than :data:`MIN_BOX_SIZE` pixels
  after clipping are dropped (also with a warning). Malformed lines, unknown class ids and broken
  json raise :class:`DataFormatError` naming the file (and line or entry).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from lstmdet.boxes import clip_boxes
from lstmdet.data.images import DEFAULT_MAX_PIXELS, ImageReadError, find_images, image_size
from lstmdet.errors import LstmdetError, LstmdetWarning
from lstmdet.fileio import atomic_write_json, prepare_file, prepare_folder, remove_outputs
from lstmdet.options import is_int, is_number

#: Boxes may reach this many pixels outside the image before a clipping warning is given.
CLIP_TOLERANCE = 0.5
#: Boxes with a side shorter than this (pixels) after clipping are dropped.
MIN_BOX_SIZE = 0.01
#: What :func:`write_coco_dataset` writes in its folder (and ``exist_ok`` removes first).
WRITTEN = ("images", "annotations.json")
#: Image formats :func:`write_coco_dataset` can write.
WRITE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}
#: What a missing YOLO label file means: an error, or an image without objects.
MISSING_LABELS = ("error", "empty")


class DataFormatError(LstmdetError):
    """An annotation file (COCO json, YOLO txt, names.yaml) is malformed; the message names it."""


# --------------------------------------------------------------------------- boxes


def sanitize_boxes(
    boxes: np.ndarray, width: float, height: float, *, source: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray]:
    """Clip ``xyxy`` boxes to the image and find the degenerate ones.

    Args:
        boxes: ``(N, 4)`` xyxy pixel boxes.
        width: Image width in pixels.
        height: Image height in pixels.
        source: File named in warnings.

    Returns:
        ``(clipped, keep)``: ``(N, 4)`` float32 boxes inside ``[0, width] x [0, height]`` and an
        ``(N,)`` bool mask of boxes whose sides are at least :data:`MIN_BOX_SIZE`.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    limits = np.array([width, height, width, height], dtype=np.float64)
    outside = (boxes < -CLIP_TOLERANCE) | (boxes > limits + CLIP_TOLERANCE)
    clipped = clip_boxes(boxes, width, height)
    keep = ((clipped[:, 2] - clipped[:, 0]) >= MIN_BOX_SIZE) & ((clipped[:, 3] - clipped[:, 1]) >= MIN_BOX_SIZE)
    n_out, n_bad = int(outside.any(axis=1).sum()), int((~keep).sum())
    if n_out or n_bad:
        warnings.warn(
            f"{source}: {n_out} box(es) reach outside the {width:g}x{height:g} image and were clipped; "
            f"{n_bad} empty or degenerate box(es) dropped",
            LstmdetWarning,
            stacklevel=2,
        )
    return clipped.astype(np.float32), keep


# --------------------------------------------------------------------------- COCO reading


@dataclass
class CocoData:
    """A validated COCO detection file.

    Attributes:
        path: The json file.
        images_dir: Folder that image ``file_name`` entries are relative to.
        images: Image entries (dicts with ``id``, ``file_name``, optional ``width``/``height``), in file order.
        annotations: ``{image_id: [annotation dicts]}``; every image id of ``images`` is a key.
        categories: Category entries sorted by ``id``.
    """

    path: Path
    images_dir: Path
    images: list[dict[str, Any]]
    annotations: dict[int, list[dict[str, Any]]]
    categories: list[dict[str, Any]]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def classes(self) -> list[str]:
        """Category names; label ``i`` is ``classes[i]``."""
        return [str(c["name"]) for c in self.categories]

    @property
    def category_ids(self) -> list[int]:
        """COCO category id of each label."""
        return [int(c["id"]) for c in self.categories]


def _entries(data: dict, key: str, path: Path, required: bool = True) -> list:
    if key not in data:
        if required:
            raise DataFormatError(f"COCO file {path} has no {key!r} list; it needs 'images' and 'categories'")
        return []
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise DataFormatError(f"COCO file {path}: {key!r} must be a list of objects")
    return value


def load_coco(json_path: str | os.PathLike, images_dir: str | os.PathLike | None = None) -> CocoData:
    """Read and validate a COCO detection json file.

    Args:
        json_path: The annotation file.
        images_dir: Folder the ``file_name`` entries are relative to; default ``images/`` next to
            the json file if that folder exists, else the json file's folder.

    Returns:
        The validated :class:`CocoData`.

    Raises:
        DataFormatError: The file is missing, not json, or an entry is malformed (the message
            names the file and the entry).
    """
    path = Path(json_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"cannot read COCO annotations {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(
            f"COCO file {path} is not valid json: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(data, dict):
        raise DataFormatError(f"COCO file {path} must hold a json object with 'images', 'annotations', 'categories'")
    if images_dir is None:
        images_dir = path.parent / "images" if (path.parent / "images").is_dir() else path.parent

    images = _entries(data, "images", path)
    image_ids: set[int] = set()
    for i, img in enumerate(images):
        where = f"COCO file {path}: images[{i}]"
        if not is_int(img.get("id")) or img["id"] in image_ids:
            raise DataFormatError(f"{where}: 'id' must be an integer unique among images, got {img.get('id')!r}")
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            raise DataFormatError(f"{where}: 'file_name' must be a non-empty string")
        for key in ("width", "height"):
            if key in img and not (is_int(img[key]) and img[key] > 0):
                raise DataFormatError(f"{where}: {key!r} must be a positive integer, got {img[key]!r}")
        image_ids.add(img["id"])

    categories = _entries(data, "categories", path)
    cat_ids: set[int] = set()
    for i, cat in enumerate(categories):
        if not is_int(cat.get("id")) or cat["id"] in cat_ids or not isinstance(cat.get("name"), str):
            raise DataFormatError(
                f"COCO file {path}: categories[{i}] needs a unique integer 'id' and a string 'name', got {cat!r}"
            )
        cat_ids.add(cat["id"])

    by_image: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in images}
    for i, ann in enumerate(_entries(data, "annotations", path, required=False)):
        where = f"COCO file {path}: annotations[{i}]"
        if ann.get("image_id") not in image_ids:
            raise DataFormatError(f"{where}: image_id {ann.get('image_id')!r} is not the id of any image")
        if ann.get("category_id") not in cat_ids:
            raise DataFormatError(
                f"{where}: category_id {ann.get('category_id')!r} is not a category; known ids: {sorted(cat_ids)}"
            )
        bbox = ann.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(is_number(v) for v in bbox)
            or bbox[2] < 0
            or bbox[3] < 0
        ):
            raise DataFormatError(f"{where}: 'bbox' must be [x, y, width, height] finite numbers >= 0, got {bbox!r}")
        by_image[ann["image_id"]].append(ann)
    return CocoData(
        path=path,
        images_dir=Path(images_dir),
        images=images,
        annotations=by_image,
        categories=sorted(categories, key=lambda c: c["id"]),
        raw=data,
    )


def coco_target(coco: CocoData, image_id: int, *, include_crowd: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(N, 4)`` float32 xyxy and labels ``(N,)`` int64 of one image (crowd regions left out by default)."""
    label_of = {cid: i for i, cid in enumerate(coco.category_ids)}
    anns = [a for a in coco.annotations[image_id] if include_crowd or not a.get("iscrowd", 0)]
    boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    labels = np.array([label_of[a["category_id"]] for a in anns], dtype=np.int64)
    return boxes.astype(np.float32), labels


# --------------------------------------------------------------------------- YOLO


def read_yolo_names(path: str | os.PathLike) -> list[str]:
    """Class names from a YOLO ``names.yaml`` / ``data.yaml`` (``names:`` as a list or ``{id: name}``).

    Raises:
        DataFormatError: Missing file, invalid YAML, no ``names``, or ids not exactly ``0..K-1``.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"cannot read YOLO class names {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise DataFormatError(f"YOLO class names {path} is not valid YAML: {exc}") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    if isinstance(names, dict) and names and all(is_int(k) for k in names):
        if sorted(names) != list(range(len(names))):
            raise DataFormatError(f"YOLO class names {path}: ids must be 0..{len(names) - 1} without gaps")
        return [str(names[k]) for k in range(len(names))]
    raise DataFormatError(f"YOLO class names {path} needs a 'names:' list or mapping of id -> name")


def check_missing_labels(value: object) -> str:
    """Check a ``missing_labels`` option.

    Args:
        value: The option as given.

    Returns:
        ``value``: ``"error"`` or ``"empty"`` (see :data:`MISSING_LABELS`).

    Raises:
        ValueError: Any other value; the message lists the choices.
    """
    if value not in MISSING_LABELS:
        raise ValueError(
            f"missing_labels must be 'error' (an image without a label file is an error) or 'empty' (it has no "
            f"objects, YOLO's convention), got {value!r}"
        )
    return str(value)


def parse_yolo_labels(
    path: str | os.PathLike, num_classes: int, *, missing_labels: str = "error"
) -> tuple[np.ndarray, np.ndarray]:
    """Parse a YOLO label file.

    Args:
        path: ``.txt`` file with one ``class cx cy w h`` (or ``class x1 y1 x2 y2 ...`` polygon) per line,
            coordinates normalised to ``[0, 1]``.
        num_classes: Number of classes; class ids must lie in ``0..num_classes-1``.
        missing_labels: What a missing file means: ``"error"`` raises, ``"empty"`` gives no objects.

    Returns:
        ``(labels, boxes)``: ``(N,)`` int64 and ``(N, 4)`` float64 normalised xyxy boxes.

    Raises:
        DataFormatError: The file is missing (with ``missing_labels="error"``), a malformed line
            (the message names file and line) or an unknown class id.
        ValueError: ``missing_labels`` is neither ``"error"`` nor ``"empty"``.
    """
    check_missing_labels(missing_labels)
    path = Path(path)
    if not path.exists():
        if missing_labels == "empty":
            return np.zeros(0, dtype=np.int64), np.zeros((0, 4), dtype=np.float64)
        raise DataFormatError(
            f"YOLO label file {path} is missing; every image needs a label file at the same path under labels/ "
            "(an empty file for an image without objects), or set missing_labels: empty (`lstmdet data convert "
            "yolo --missing-labels empty`) to treat images without one as having no objects"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"cannot read YOLO label file {path}: {exc}") from None
    labels, boxes = [], []
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"YOLO label file {path}, line {number}"
        try:
            values = [float(v) for v in parts[1:]]
            cls = float(parts[0])
        except ValueError:
            raise DataFormatError(f"{where}: expected numbers 'class cx cy w h', got {line.strip()!r}") from None
        if len(values) < 4 or (len(values) > 4 and (len(values) % 2 or len(values) < 6)):
            raise DataFormatError(
                f"{where}: expected 'class cx cy w h' (5 values) or a polygon 'class x1 y1 x2 y2 x3 y3 ...', "
                f"got {len(parts)} values: {line.strip()!r}"
            )
        if not all(math.isfinite(v) for v in values) or not cls.is_integer():
            raise DataFormatError(f"{where}: class must be an integer and coordinates finite, got {line.strip()!r}")
        if not 0 <= cls < num_classes:
            raise DataFormatError(
                f"{where}: unknown class id {int(cls)}; names.yaml defines {num_classes} classes (0..{num_classes - 1})"
            )
        if len(values) == 4:
            cx, cy, w, h = values
            if w < 0 or h < 0:
                raise DataFormatError(f"{where}: negative box width or height in {line.strip()!r}")
            boxes.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        else:
            xs, ys = values[0::2], values[1::2]
            boxes.append((min(xs), min(ys), max(xs), max(ys)))
        labels.append(int(cls))
    return np.array(labels, dtype=np.int64), np.array(boxes, dtype=np.float64).reshape(-1, 4)


def yolo_label_path(image: Path, images_dir: Path, labels_dir: Path) -> Path:
    """The label file of ``image``: same path relative to ``labels_dir``, suffix ``.txt``."""
    return (labels_dir / image.relative_to(images_dir)).with_suffix(".txt")


def yolo_boxes(
    label_file: Path,
    width: int,
    height: int,
    num_classes: int,
    *,
    source: str | os.PathLike | None = None,
    missing_labels: str = "error",
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel boxes of one YOLO label file for an image of the given displayed size.

    ``missing_labels`` is passed to :func:`parse_yolo_labels`.

    Returns:
        ``(boxes, labels)``: ``(N, 4)`` float32 xyxy pixels (clipped, degenerate dropped) and ``(N,)`` int64.
    """
    labels, norm = parse_yolo_labels(label_file, num_classes, missing_labels=missing_labels)
    pixels = norm * np.array([width, height, width, height], dtype=np.float64)
    boxes, keep = sanitize_boxes(pixels, width, height, source=source or label_file)
    return boxes[keep], labels[keep]


def yolo_layout(root: str | os.PathLike) -> tuple[Path, Path]:
    """``(images_dir, labels_dir)`` of a YOLO dataset folder, checked to exist."""
    root = Path(root)
    images_dir, labels_dir = root / "images", root / "labels"
    if not images_dir.is_dir():
        raise DataFormatError(
            f"YOLO dataset {root} has no images/ folder; expected images/*.jpg with labels/*.txt beside it"
        )
    return images_dir, labels_dir


def yolo_to_coco(
    yolo_root: str | os.PathLike,
    out_json: str | os.PathLike,
    *,
    names: str | os.PathLike | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    missing_labels: str = "error",
) -> dict[str, Any]:
    """Convert a YOLO dataset (``images/``, ``labels/``, ``names.yaml``) to one COCO json file.

    Image sizes are the displayed sizes read from the headers (EXIF orientation applied, no pixel
    decoding), which is the grid Ultralytics' normalised labels refer to. ``file_name`` is the path
    relative to ``images/``; image ids are 1..N in sorted path order; ``category_id`` is the YOLO
    class index and category names come from ``names``. Unreadable images are left out with a warning.

    Args:
        yolo_root: Folder with ``images/`` (searched recursively) and ``labels/``.
        out_json: Output file (parent folders are created).
        names: Class-names YAML; default ``yolo_root/names.yaml``.
        max_pixels: Header size limit passed to :func:`lstmdet.data.images.image_size`.
        missing_labels: ``"error"``: an image without a label file raises; ``"empty"``: it has no objects.

    Returns:
        Summary ``{"json", "images", "annotations", "categories", "skipped"}``.

    Raises:
        DataFormatError: Missing folders, names or label files, malformed label lines, unknown class ids.
        ValueError: ``missing_labels`` is neither ``"error"`` nor ``"empty"``.
    """
    check_missing_labels(missing_labels)
    prepare_file(out_json, "OUT_JSON")
    root = Path(yolo_root)
    images_dir, labels_dir = yolo_layout(root)
    classes = read_yolo_names(names if names is not None else root / "names.yaml")
    images, annotations, skipped = [], [], []
    for path in find_images(images_dir):
        try:
            width, height = image_size(path, max_pixels=max_pixels)
        except ImageReadError as exc:
            warnings.warn(f"skipping unreadable image {path}: {exc.reason}", LstmdetWarning, stacklevel=2)
            skipped.append(str(path))
            continue
        image_id = len(images) + 1
        images.append(
            {"id": image_id, "file_name": path.relative_to(images_dir).as_posix(), "width": width, "height": height}
        )
        label_file = yolo_label_path(path, images_dir, labels_dir)
        boxes, labels = yolo_boxes(label_file, width, height, len(classes), missing_labels=missing_labels)
        for box, label in zip(boxes.astype(np.float64), labels, strict=True):
            annotations.append(_annotation(len(annotations) + 1, image_id, int(label), box))
    categories = [{"id": i, "name": name} for i, name in enumerate(classes)]
    atomic_write_json(out_json, {"info": _info(f"converted from YOLO dataset {root}"), "images": images,
                                 "annotations": annotations, "categories": categories}, indent=None)  # fmt: skip
    return {
        "json": str(out_json),
        "images": len(images),
        "annotations": len(annotations),
        "categories": len(categories),
        "skipped": len(skipped),
    }


# --------------------------------------------------------------------------- writing


def _annotation(ann_id: int, image_id: int, category_id: int, box_xyxy: np.ndarray, **extra: Any) -> dict[str, Any]:
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    w, h = x2 - x1, y2 - y1
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x1, y1, w, h],
        "area": w * h,
        "iscrowd": 0,
        **extra,
    }


def _info(description: str) -> dict[str, Any]:
    from lstmdet import __version__

    return {"description": description, "version": f"lstmdet {__version__}"}


def _save(array: np.ndarray, path: Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"compress_level": 1} if fmt == "PNG" else {"quality": 95}
    Image.fromarray(np.ascontiguousarray(array)).save(path, format=fmt, **options)


def _frame_annotations(target: dict[str, Any], where: str) -> tuple[np.ndarray, np.ndarray]:
    if "boxes" not in target or "labels" not in target:
        raise LstmdetError(
            f"{where}: target has no 'boxes'/'labels'; only detection datasets can be written as COCO "
            f"(got keys {sorted(target)})"
        )
    boxes = np.asarray(target["boxes"], dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(target["labels"], dtype=np.int64).reshape(-1)
    return boxes, labels


def write_coco_dataset(
    dataset: Any,
    out_dir: str | os.PathLike,
    *,
    image_format: str = "png",
    on_item: Callable[[], None] | None = None,
    exist_ok: bool = False,
) -> dict[str, Any]:
    """Write a detection dataset (still images or clips) as image files plus ``annotations.json``.

    Layout: ``out_dir/images/000001.png`` per still image, or ``out_dir/images/000001/000.png`` per
    frame of a clip; ``out_dir/annotations.json`` in COCO format (see the module docstring for ids,
    ``videos``, ``video_id``, ``frame_index`` and ``track_id``). Read it back with
    ``load_coco(out_dir / "annotations.json")`` or the ``coco`` dataset.

    Args:
        dataset: Map-style dataset with ``classes`` (and optionally ``category_ids``) whose items are
            ``(image (H, W, 3) uint8, {"boxes", "labels"})`` or ``(clip (T, H, W, 3) uint8,
            {"frames": [{"boxes", "labels", "track_ids"?}, ...]})``.
        out_dir: Output folder (created); it must be empty, so that files of an earlier, larger
            generation never mix with these.
        image_format: ``"png"`` (lossless, default) or ``"jpg"``.
        on_item: Called after each dataset item (image or clip) is written, e.g. to show progress.
        exist_ok: Accept a non-empty ``out_dir``: first remove what an earlier generation wrote
            there (:data:`WRITTEN`: ``images/`` and ``annotations.json``), leaving anything else.

    Returns:
        Summary ``{"out", "json", "images", "annotations", "videos", "categories"}``.

    Raises:
        LstmdetError: Unknown ``image_format``, a non-empty ``out_dir`` without ``exist_ok``, or items
            that are not detection items.
    """
    fmt = WRITE_FORMATS.get(image_format.lower().lstrip("."))
    if fmt is None:
        raise LstmdetError(f"image_format {image_format!r} is not supported; use one of {sorted(WRITE_FORMATS)}")
    ext = "jpg" if fmt == "JPEG" else "png"
    out = prepare_folder(out_dir)
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not exist_ok:
        raise LstmdetError(
            f"{out} is not empty (it holds {', '.join(held[:3])}{', ...' if len(held) > 3 else ''}); a generated "
            "dataset goes into an empty folder so that old images never mix with new ones. Pass --exist-ok to "
            "replace images/ and annotations.json of an earlier generation, or choose another folder"
        )
    remove_outputs(out, WRITTEN)
    images_dir = prepare_folder(out / "images")
    classes = list(dataset.classes)
    category_ids = list(getattr(dataset, "category_ids", range(len(classes))))
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    videos: list[dict[str, Any]] = []
    tracks: dict[tuple[int, int], int] = {}

    def add_image(array: np.ndarray, name: str, target: dict[str, Any], where: str, **extra: Any) -> None:
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise LstmdetError(f"{where}: expected an (H, W, 3) uint8 image, got {array.dtype} {array.shape}")
        _save(array, images_dir / name, fmt)
        image_id = len(images) + 1
        height, width = array.shape[:2]
        images.append({"id": image_id, "file_name": name, "width": width, "height": height, **extra})
        boxes, labels = _frame_annotations(target, where)
        track_ids = target.get("track_ids")
        occluded = target.get("occluded")
        for k, (box, label) in enumerate(zip(boxes, labels, strict=True)):
            if not 0 <= label < len(classes):
                raise LstmdetError(f"{where}: label {label} outside the dataset's {len(classes)} classes")
            more: dict[str, Any] = {}
            if track_ids is not None:
                key = (extra.get("video_id", 0), int(track_ids[k]))
                more["track_id"] = tracks.setdefault(key, len(tracks) + 1)
            if occluded is not None:
                more["occluded"] = bool(occluded[k])
            annotations.append(_annotation(len(annotations) + 1, image_id, category_ids[label], box, **more))

    for index in range(len(dataset)):
        array, target = dataset[index]
        array = np.asarray(array)
        where = f"dataset item {index}"
        if "frames" in target:
            if array.ndim != 4 or len(target["frames"]) != array.shape[0]:
                raise LstmdetError(f"{where}: a clip needs a (T, H, W, 3) array and T frame targets")
            video_id = len(videos) + 1
            videos.append(
                {"id": video_id, "name": f"{video_id:06d}", "frames": int(array.shape[0]),
                 "width": int(array.shape[2]), "height": int(array.shape[1])}
            )  # fmt: skip
            for t, frame_target in enumerate(target["frames"]):
                name = f"{video_id:06d}/{t:03d}.{ext}"
                add_image(array[t], name, frame_target, f"{where} frame {t}", video_id=video_id, frame_index=t)
        else:
            add_image(array, f"{len(images) + 1:06d}.{ext}", target, where)
        if on_item is not None:
            on_item()

    data: dict[str, Any] = {
        "info": _info(f"written by lstmdet from {type(dataset).__name__}"),
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name} for cid, name in zip(category_ids, classes, strict=True)],
    }
    if videos:
        data["videos"] = videos
    json_path = out / "annotations.json"
    atomic_write_json(json_path, data, indent=None)
    return {
        "out": str(out),
        "json": str(json_path),
        "images": len(images),
        "annotations": len(annotations),
        "videos": len(videos),
        "categories": len(classes),
    }
