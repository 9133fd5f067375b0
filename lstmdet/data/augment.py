"""Data augmentation with albumentations, and conversion of dataset items to model inputs.

The pipeline between a dataset and the model::

    dataset[i] -> (image, target)            numpy, see ``lstmdet_register_datasets``
    Augment(image, target) -> (image, target) same formats, augmented
    to_tensors(image, target, task)          (3, H, W) / (T, 3, H, W) float in [0, 1] + model targets
    collate(batch)                           list of images, list of targets (clip-major for clips)

``lstmdet.engine.data.AugmentedDataset`` chains the first three for a ``DataLoader``.

Config (``data.augment``)::

    augment:
      preset: standard          # none | light | standard (default: none)
      rotate: 5                 # optional overrides of the preset's knobs, see PRESET_KNOBS
      hflip: 0.0
      min_visibility: 0.5       # detection: drop boxes with less of their area left in the image
      transforms:               # optional: albumentations transforms by name, after the preset's
        - {name: GaussNoise, p: 0.2}
        - {name: OneOf, transforms: [{name: Blur}, {name: MedianBlur, blur_limit: 3}]}

When ``transforms`` is given without ``preset``, the preset is ``none`` (only the listed transforms).
Knobs whose value is zero add nothing, so ``{hflip: 0.5}`` alone is just a horizontal flip.

Presets (train split only; the eval split never augments, whatever the spec):

* ``classify``: small ``Affine`` (shift, rotation, scale) and ``RandomBrightnessContrast``.
* ``detect``: ``Affine`` scale and shift (no rotation: rotating a box enlarges it) and
  ``RandomBrightnessContrast``.
* Flips are off in every preset (``hflip: 0``, ``vflip: 0``): the built-in data are digits and a
  mirrored 2, 3, 4, 5, 7 or 9 is not a digit of that class. Set ``hflip: 0.5`` for flip-symmetric data.

Boxes (detection) follow every geometric transform (``A.BboxParams(format="pascal_voc")``); boxes
keeping less than ``min_visibility`` of their area inside the image are dropped; the rest are clipped
to the image, and boxes thinner or shorter than ``min_size`` pixels are dropped. ``labels`` and
``track_ids`` stay aligned with the surviving boxes.

Clips ``(T, H, W, 3)``: every frame gets the same random transform (albumentations' multi-image
``images`` target, one parameter draw per clip); the boxes of all frames are transformed in the same
call, so they move exactly as their frames do.

Randomness: each :class:`Augment` owns one random stream shared by all its transforms (albumentations
2 would otherwise seed every transform identically and correlate them). It is seeded from
``spec["seed"]``, else ``torch.initial_seed()``, so ``torch.manual_seed`` makes runs repeatable; in a
``DataLoader`` worker it is re-seeded from the worker's torch seed, so workers never repeat each other.
:meth:`Augment.set_seed` before an item overrides both (the training engine seeds every item from
``(seed, epoch, index)``).
"""

from __future__ import annotations

import difflib
import inspect
import os
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.core.type_definitions import Targets
from torch import Tensor

from lstmdet.boxes import clip_boxes
from lstmdet.errors import ConfigError, LstmdetError
from lstmdet.options import check_choice, check_int, is_number

TASKS = ("classify", "detect")
SPLITS = ("train", "eval")
PRESETS = ("none", "light", "standard")
DEFAULT_PRESET = "none"
FIELD = "data.augment"
PER_BOX_KEYS = ("labels", "track_ids", "iscrowd", "occluded")
"""Keys of a detection target (per frame) that hold one value per box and follow the boxes."""

_ZERO_KNOBS: dict[str, Any] = {
    "rotate": 0.0,  # degrees, uniform in [-rotate, rotate]
    "translate": 0.0,  # fraction of the image side, uniform in [-translate, translate]
    "scale": [1.0, 1.0],  # zoom range [low, high] (a number s means [1 - s, 1 + s])
    "brightness": 0.0,  # RandomBrightnessContrast brightness_limit
    "contrast": 0.0,  # RandomBrightnessContrast contrast_limit
    "hflip": 0.0,  # probability of a horizontal flip
    "vflip": 0.0,  # probability of a vertical flip
    "p": 0.8,  # probability of the Affine and of the brightness/contrast change
    "fill": 0,  # value of pixels that Affine brings in from outside the image
}
PRESET_KNOBS: dict[str, dict[str, dict[str, Any]]] = {
    "classify": {
        "none": dict(_ZERO_KNOBS),
        "light": {**_ZERO_KNOBS, "rotate": 5.0, "translate": 0.05, "scale": [0.95, 1.05], "brightness": 0.1,
                  "contrast": 0.1},
        "standard": {**_ZERO_KNOBS, "rotate": 10.0, "translate": 0.1, "scale": [0.9, 1.1], "brightness": 0.2,
                     "contrast": 0.2},
    },
    "detect": {
        "none": dict(_ZERO_KNOBS),
        "light": {**_ZERO_KNOBS, "translate": 0.05, "scale": [0.9, 1.1], "brightness": 0.1, "contrast": 0.1},
        "standard": {**_ZERO_KNOBS, "translate": 0.1, "scale": [0.75, 1.25], "brightness": 0.2, "contrast": 0.2},
    },
}  # fmt: skip
BOX_KEYS = {"min_visibility": 0.5, "min_size": 1.0}
_PYDANTIC_TYPE = re.compile(r"\s*\[type=.*$")
SPEC_KEYS = ("preset", "transforms", "seed", *BOX_KEYS, *_ZERO_KNOBS)


class Augment:
    """Apply an albumentations pipeline to one dataset item (still image or clip).

    Build it with :func:`build_augment`. Instances are picklable (``DataLoader`` workers).

    Args:
        task: ``"classify"`` or ``"detect"``.
        transforms: albumentations transforms, applied in order; empty for the identity.
        min_visibility: Detection: boxes keeping less than this fraction of their area are dropped.
        min_size: Detection: boxes narrower or shorter than this many pixels are dropped.
        seed: Seed of the random stream; ``None`` uses ``torch.initial_seed()``.
    """

    def __init__(
        self,
        task: str,
        transforms: Sequence[Any] = (),
        *,
        min_visibility: float = BOX_KEYS["min_visibility"],
        min_size: float = BOX_KEYS["min_size"],
        seed: int | None = None,
    ) -> None:
        self.task = task
        self.transforms = list(transforms)
        self.min_visibility = float(min_visibility)
        self.min_size = float(min_size)
        self.seed = seed
        self._compose: A.Compose | None = None
        if self.transforms:
            bbox_params = None
            if task == "detect":
                bbox_params = A.BboxParams(
                    format="pascal_voc",
                    label_fields=["box_index"],
                    min_visibility=self.min_visibility,
                    min_width=self.min_size,
                    min_height=self.min_size,
                    clip=True,
                )
            self._compose = A.Compose(self.transforms, bbox_params=bbox_params)
        self._seeded_for: tuple[int, int | None] | None = None

    @property
    def identity(self) -> bool:
        """True when no transform is applied (boxes are still clipped and filtered)."""
        return self._compose is None

    def __repr__(self) -> str:
        names = ", ".join(type(t).__name__ for t in self.transforms) or "identity"
        return f"Augment(task={self.task!r}, transforms=[{names}])"

    def set_seed(self, seed: int) -> None:
        """Restart the random stream from ``seed`` (one stream shared by all transforms).

        Call it before an item to make that item's augmentation a function of ``seed`` alone
        (e.g. ``seed`` derived from ``(run seed, epoch, index)``), whichever process runs it. Without
        calls to it, the stream is seeded once per process (see the module docstring).
        """
        if self._compose is not None:
            self._compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        self._seeded_for = _process_key()

    def _ensure_seeded(self) -> None:
        key = _process_key()
        if key == self._seeded_for:
            return
        base = self.seed if self.seed is not None else torch.initial_seed()
        if key[1] is None:
            seed = int(base)
        else:  # a DataLoader worker: mix in its seed so workers (and epochs) differ
            seed = int(np.random.SeedSequence([int(base) % 2**63, key[1] % 2**63]).generate_state(1)[0])
        self.set_seed(seed)

    def __call__(self, image: np.ndarray, target: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """Augment one item.

        Args:
            image: ``(H, W, 3)`` uint8 RGB, or a clip ``(T, H, W, 3)``.
            target: ``{"label": int}`` (classify); ``{"boxes": (N, 4) xyxy pixels, "labels": (N,)}``
                (detect, optionally ``track_ids``); for a detection clip ``{"frames": [T such dicts]}``.

        Returns:
            ``(image, target)`` in the same formats; boxes ``float32``, clipped to the new image.

        Raises:
            LstmdetError: The image or target is malformed, or a transform failed on this item.
        """
        image = _check_image(image)
        is_clip = image.ndim == 4
        if self.task != "detect":
            if self._compose is not None:
                self._ensure_seeded()
                key = "images" if is_clip else "image"
                image = self._run(**{key: image})[key]
            return image, dict(target)

        frames = _frame_targets(target, image)
        boxes, frame_of, index_in_frame = _stack_boxes(frames)
        height, width = image.shape[-3:-1]
        keep = _valid(boxes, width, height, self.min_size)  # albumentations rejects degenerate input boxes
        boxes, frame_of, index_in_frame = clip_boxes(boxes[keep], width, height), frame_of[keep], index_in_frame[keep]
        if self._compose is not None:
            self._ensure_seeded()
            key = "images" if is_clip else "image"
            out = self._run(**{key: image}, bboxes=boxes, box_index=np.arange(len(boxes)))
            image = out[key]
            kept = np.asarray(out["box_index"], dtype=np.int64).reshape(-1)
            boxes = np.asarray(out["bboxes"], dtype=np.float64).reshape(-1, 4)[:, :4]
            frame_of, index_in_frame = frame_of[kept], index_in_frame[kept]
            height, width = image.shape[-3:-1]
            boxes = clip_boxes(boxes, width, height)
            keep = _valid(boxes, width, height, self.min_size)
            boxes, frame_of, index_in_frame = boxes[keep], frame_of[keep], index_in_frame[keep]
        new_frames = [
            _select(frame, boxes[frame_of == f], index_in_frame[frame_of == f]) for f, frame in enumerate(frames)
        ]
        if is_clip:
            return image, {**{k: v for k, v in target.items() if k != "frames"}, "frames": new_frames}
        return image, new_frames[0]

    def _run(self, **data: Any) -> dict[str, Any]:
        assert self._compose is not None
        try:
            return self._compose(**data)
        except Exception as exc:
            raise LstmdetError(
                f"augmentation {self!r} failed on an item: {type(exc).__name__}: {exc}. Check data.augment "
                "(a transform may need inputs lstmdet does not pass, e.g. masks or extra images)"
            ) from exc


def _process_key() -> tuple[int, int | None]:
    """Identifies the process (and DataLoader worker seed) that is running an :class:`Augment`."""
    info = torch.utils.data.get_worker_info()
    return os.getpid(), None if info is None else int(info.seed)


def build_augment(task: str, split: str, spec: Mapping[str, Any] | None = None) -> Augment:
    """The augmentation for ``task`` and ``split`` from a ``data.augment`` section.

    Args:
        task: ``"classify"`` or ``"detect"``.
        split: ``"train"`` (augments as ``spec`` says) or ``"eval"`` (identity; ``spec`` is only
            validated, and box settings ``min_size`` apply).
        spec: The ``data.augment`` mapping or ``None`` (preset ``none``). See the module docstring.

    Returns:
        An :class:`Augment`.

    Raises:
        ConfigError: The spec is malformed; the field is named (``data.augment.transforms[2].name``).
    """
    check_choice(task, "task", choices=TASKS)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    spec = {} if spec is None else spec
    if not isinstance(spec, Mapping):
        raise ConfigError(FIELD, f"must be a mapping like {{preset: light}}, got {type(spec).__name__}")
    for key in spec:
        if key not in SPEC_KEYS:
            raise ConfigError(f"{FIELD}.{key}", f"unknown key; allowed keys: {', '.join(SPEC_KEYS)}")
    preset = check_choice(spec.get("preset", DEFAULT_PRESET), f"{FIELD}.preset", choices=PRESETS)
    knobs = {**PRESET_KNOBS[task][preset], **{k: spec[k] for k in _ZERO_KNOBS if k in spec}}
    knobs = {k: _check_knob(k, v) for k, v in knobs.items()}
    box = {k: _check_fraction_or_size(k, spec.get(k, v)) for k, v in BOX_KEYS.items()}
    seed = spec.get("seed")
    if seed is not None:
        check_int(seed, f"{FIELD}.seed", minimum=0)
    raw = spec.get("transforms") or []
    if not isinstance(raw, list):
        raise ConfigError(f"{FIELD}.transforms", f"must be a list of {{name: Transform, ...}} mappings, got {raw!r}")
    extra = [_resolve(item, f"{FIELD}.transforms[{i}]", task) for i, item in enumerate(raw)]
    transforms = [*_preset_transforms(task, knobs), *extra] if split == "train" else []
    return Augment(task, transforms, seed=seed, **box)


def _check_knob(key: str, value: Any) -> Any:
    field = f"{FIELD}.{key}"
    if key == "scale":
        if is_number(value):
            value = [1.0 - float(value), 1.0 + float(value)]
        if not (isinstance(value, list | tuple) and len(value) == 2 and all(is_number(v) for v in value)):
            raise ConfigError(field, f"must be a number s (range [1-s, 1+s]) or [low, high], got {value!r}")
        low, high = float(value[0]), float(value[1])
        if not 0 < low <= high:
            raise ConfigError(field, f"needs 0 < low <= high, got {value!r}")
        return [low, high]
    if not is_number(value) or value < 0:
        raise ConfigError(field, f"must be a non-negative number, got {value!r}")
    if key in ("hflip", "vflip", "p", "translate", "brightness", "contrast") and value > 1:
        raise ConfigError(field, f"must be between 0 and 1, got {value!r}")
    return value


def _check_fraction_or_size(key: str, value: Any) -> float:
    if not is_number(value) or value < 0 or (key == "min_visibility" and value > 1):
        allowed = "between 0 and 1" if key == "min_visibility" else "a non-negative number of pixels"
        raise ConfigError(f"{FIELD}.{key}", f"must be {allowed}, got {value!r}")
    return float(value)


def _preset_transforms(task: str, knobs: dict[str, Any]) -> list[Any]:
    transforms: list[Any] = []
    if knobs["hflip"] > 0:
        transforms.append(A.HorizontalFlip(p=knobs["hflip"]))
    if knobs["vflip"] > 0:
        transforms.append(A.VerticalFlip(p=knobs["vflip"]))
    rotate, translate, scale = knobs["rotate"], knobs["translate"], knobs["scale"]
    if rotate > 0 or translate > 0 or scale != [1.0, 1.0]:
        transforms.append(
            A.Affine(
                scale=tuple(scale),
                translate_percent=(-translate, translate),
                rotate=(-rotate, rotate),
                border_mode=cv2.BORDER_CONSTANT,
                fill=knobs["fill"],
                rotate_method="ellipse" if task == "detect" else "largest_box",
                p=knobs["p"],
            )
        )
    if knobs["brightness"] > 0 or knobs["contrast"] > 0:
        transforms.append(
            A.RandomBrightnessContrast(
                brightness_limit=knobs["brightness"], contrast_limit=knobs["contrast"], p=knobs["p"]
            )
        )
    return transforms


def _transform_names() -> list[str]:
    return sorted(
        name
        for name, obj in vars(A).items()
        if isinstance(obj, type) and issubclass(obj, A.BasicTransform | A.BaseCompose) and not name.startswith("_")
    )


def _resolve(item: Any, field: str, task: str) -> Any:
    """Build one albumentations transform from ``{name: ..., **arguments}``."""
    if not isinstance(item, Mapping):
        raise ConfigError(field, f"must be a mapping like {{name: HorizontalFlip, p: 0.5}}, got {item!r}")
    name = item.get("name")
    cls = getattr(A, name, None) if isinstance(name, str) and not name.startswith("_") else None
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform | A.BaseCompose)):
        close = difflib.get_close_matches(str(name), _transform_names(), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(
            f"{field}.name",
            f"{name!r} is not an albumentations transform; {hint}names are the class names of albumentations "
            f"{A.__version__} (https://albumentations.ai/docs/), case-sensitive, e.g. HorizontalFlip, Affine",
        )
    if cls in (A.Compose, A.ReplayCompose):
        raise ConfigError(f"{field}.name", f"{name} is the pipeline itself; list its transforms directly instead")
    args = {k: v for k, v in item.items() if k != "name"}
    if issubclass(cls, A.BaseCompose):
        inner = args.get("transforms")
        if not isinstance(inner, list) or not inner:
            raise ConfigError(f"{field}.transforms", f"{name} needs a non-empty list of transforms")
        args["transforms"] = [_resolve(t, f"{field}.transforms[{j}]", task) for j, t in enumerate(inner)]
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        allowed = [p for p in params if p != "self"]
        unknown = sorted(set(args) - set(allowed))
        if unknown:
            raise ConfigError(field, f"{name} takes no argument(s) {', '.join(unknown)}; it takes {', '.join(allowed)}")
    try:
        transform = cls(**args)
    except (ValueError, TypeError) as exc:
        raise ConfigError(field, f"{name}: invalid arguments: {_short_error(exc)}") from None
    if task == "detect" and isinstance(transform, A.DualTransform) and not _supports_bboxes(transform):
        raise ConfigError(f"{field}.name", f"{name} cannot move bounding boxes, so it cannot be used for detection")
    return transform


def _supports_bboxes(transform: Any) -> bool:
    targets = getattr(transform, "_targets", ())
    return Targets.BBOXES in (targets if isinstance(targets, tuple) else (targets,))


def _short_error(exc: Exception) -> str:
    """One line from an exception; pydantic's multi-line validation reports become ``loc: message; ...``."""
    lines = [line for line in str(exc).splitlines() if line.strip() and "For further information" not in line]
    if len(lines) > 1 and "validation error" in lines[0]:  # pydantic: header, then (location, indented message)
        parts, loc = [], ""
        for line in lines[1:]:
            if line.startswith(" "):
                message = _PYDANTIC_TYPE.sub("", line.strip())
                parts.append(f"{loc}: {message}")
            else:
                loc = line.strip()
        return "; ".join(parts)
    return "; ".join(line.strip() for line in lines) or type(exc).__name__


# ----------------------------------------------------------------------------------------------- boxes


def _check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim not in (3, 4) or image.shape[-1] != 3:
        shape = getattr(image, "shape", None)
        raise LstmdetError(
            f"augmentation takes an (H, W, 3) or (T, H, W, 3) numpy RGB image, got {type(image).__name__} "
            f"of shape {shape}; datasets must return numpy HWC images (see lstmdet_register_datasets)"
        )
    return np.ascontiguousarray(image)


def _frame_targets(target: Mapping[str, Any], image: np.ndarray) -> list[Mapping[str, Any]]:
    if image.ndim == 3:
        return [target]
    frames = target.get("frames")
    if not isinstance(frames, list | tuple) or len(frames) != image.shape[0]:
        got = "no 'frames' list" if frames is None else f"{len(frames)} frames"
        raise LstmdetError(
            f"a clip of {image.shape[0]} frames needs target {{'frames': [one dict per frame]}}; got {got}"
        )
    return list(frames)


def _stack_boxes(frames: list[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All frames' boxes ``(N, 4)`` float64, each box's frame index and its index within its frame."""
    boxes, frame_of, index = [], [], []
    for f, frame in enumerate(frames):
        b = np.asarray(frame.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
        boxes.append(b)
        frame_of.append(np.full(len(b), f, dtype=np.int64))
        index.append(np.arange(len(b), dtype=np.int64))
    return np.concatenate(boxes), np.concatenate(frame_of), np.concatenate(index)


def _valid(boxes: np.ndarray, width: int, height: int, min_size: float) -> np.ndarray:
    """Boxes that are finite and, once clipped to the image, at least ``min_size`` (> 0) on each side."""
    clipped = clip_boxes(np.nan_to_num(boxes, nan=-1.0), width, height)
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    size = max(min_size, 1e-6)
    return np.isfinite(boxes).all(axis=1) & (w >= size) & (h >= size)


def _select(frame: Mapping[str, Any], boxes: np.ndarray, index: np.ndarray) -> dict[str, Any]:
    """A frame's target with ``boxes`` replaced and per-box fields reduced to the kept ``index``."""
    out: dict[str, Any] = {k: v for k, v in frame.items() if k not in PER_BOX_KEYS and k != "boxes"}
    out["boxes"] = boxes.astype(np.float32).reshape(-1, 4)
    for key in PER_BOX_KEYS:
        if key in frame:
            values = np.asarray(frame[key])
            out[key] = values[index] if values.ndim else values
    if "labels" not in out:
        out["labels"] = np.zeros(0, dtype=np.int64)
    out["labels"] = np.asarray(out["labels"], dtype=np.int64)
    return out


# ------------------------------------------------------------------------------------------ tensors


def to_tensors(
    image: np.ndarray, target: Mapping[str, Any], task: str
) -> tuple[Tensor, dict[str, Tensor] | list[dict[str, Tensor]]]:
    """Turn an (augmented) dataset item into the model's input formats.

    Args:
        image: ``(H, W, 3)`` or clip ``(T, H, W, 3)`` uint8 RGB (a float image is taken as already in ``[0, 1]``).
        target: The dataset target (see :class:`Augment`).
        task: ``"classify"`` or ``"detect"``.

    Returns:
        ``(image, target)``: image ``(3, H, W)`` or ``(T, 3, H, W)`` float32 in ``[0, 1]``; target for a
        still image ``{"labels": int64 scalar}`` (classify) or ``{"boxes": float32 (M, 4) xyxy pixels,
        "labels": int64 (M,)}`` plus ``track_ids`` int64 when present (detect); for a clip a list of
        ``T`` such per-frame dicts (a classify clip with a single ``label`` repeats it on every frame).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    array = _check_image(image)
    tensor = torch.from_numpy(array)
    tensor = tensor.float().div_(255.0) if array.dtype == np.uint8 else tensor.float()
    tensor = tensor.movedim(-1, -3).contiguous()
    if array.ndim == 3:
        return tensor, _model_target(target, task)
    frames = target.get("frames")
    if frames is None and task == "classify":
        frames = [target] * array.shape[0]
    if not isinstance(frames, list | tuple) or len(frames) != array.shape[0]:
        raise LstmdetError(f"a clip of {array.shape[0]} frames needs target {{'frames': [one dict per frame]}}")
    return tensor, [_model_target(frame, task) for frame in frames]


def _model_target(target: Mapping[str, Any], task: str) -> dict[str, Tensor]:
    if task == "classify":
        label = target.get("label", target.get("labels"))
        if label is None:
            raise LstmdetError(f"a classification target needs 'label' (int), got keys {sorted(target)}")
        return {"labels": torch.as_tensor(int(label), dtype=torch.int64)}
    boxes = torch.as_tensor(np.asarray(target.get("boxes", np.zeros((0, 4))), dtype=np.float32)).reshape(-1, 4)
    labels = torch.as_tensor(np.asarray(target.get("labels", np.zeros(0)), dtype=np.int64)).reshape(-1)
    if len(labels) != len(boxes):
        raise LstmdetError(f"a detection target has {len(boxes)} boxes but {len(labels)} labels; give one per box")
    out = {"boxes": boxes, "labels": labels}
    if "track_ids" in target:
        out["track_ids"] = torch.as_tensor(np.asarray(target["track_ids"], dtype=np.int64)).reshape(-1)
    return out


def collate(batch: Sequence[tuple[Tensor, Any]]) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """``DataLoader`` ``collate_fn`` for :func:`to_tensors` items (images may differ in size).

    Args:
        batch: ``(image, target)`` pairs: still images ``(3, H, W)`` with one target dict each, or clips
            ``(T, 3, H, W)`` with a list of ``T`` per-frame dicts each.

    Returns:
        ``(images, targets)``: the images as a list (not stacked), and the targets as one flat list,
        clip-major for clips (all frames of clip 0, then of clip 1, ...), which is what
        :meth:`lstmdet.model.LstmdetModel.forward` expects: ``len(targets) == B * T``.
    """
    images: list[Tensor] = []
    targets: list[dict[str, Tensor]] = []
    for image, target in batch:
        images.append(image)
        if isinstance(target, list | tuple):
            targets.extend(target)
        else:
            targets.append(target)
    return images, targets
