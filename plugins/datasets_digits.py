"""Built-in generated datasets from real MNIST digits: ``digits_det`` (scenes) and ``digits_video`` (clips).

Both draw real handwritten digits of :func:`lstmdet.data.mnist.mnist_split`: ``split="train"`` uses
only its training digits (the MNIST-10k protocol's 8,000 by default; the official 60,000 given the full
files), ``split="test"`` only the held-out ones, so a detector trained on ``train`` scenes is
evaluated on digits it never saw.

Every item is generated on the fly in ``__getitem__`` from its own random stream
``numpy.random.default_rng([seed, index])``: items are deterministic, independent of access order
and of ``DataLoader`` workers, and a dataset holds only the 28x28 source digits in memory.

Rendering: a digit is resized (``cv2.INTER_AREA`` when shrinking, ``INTER_LINEAR`` when enlarging)
to ``round(28 * s)`` pixels with ``s`` drawn from ``scale``; its **ink** is the pixels brighter than
:data:`INK_THRESHOLD` (``0.2 * 255``) of the resized digit, and its box is **tight** around that ink,
in pixel-edge coordinates (``x2 = last ink column + 1``). Digits are white on a dark background of
uniform level drawn from ``[0, background]``, combined by per-pixel maximum; then Gaussian noise of
std ``noise`` (on the ``[0, 1]`` scale) is added and the image clipped and stored as grey in RGB.
Classes are ``"0"`` .. ``"9"``; label ``i`` is digit ``i`` and ``category_ids == list(range(10))``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from torch.utils.data import Dataset

from lstmdet import hookimpl
from lstmdet.data.mnist import mnist_split
from lstmdet.errors import OptionError
from lstmdet.options import check_choice, check_float, check_int, check_list

if TYPE_CHECKING:
    from lstmdet.registry import Registrar

#: A pixel of a resized digit is ink when brighter than this fraction of white.
INK_THRESHOLD = 0.2
#: Intensity of a faded (nearly invisible) digit in ``digits_video``.
FADE_LEVEL = 0.1
#: Placement attempts per digit before ``digits_det`` gives the digit up.
PLACEMENT_ATTEMPTS = 50
DIGIT_SPLITS = ("train", "test")


# --------------------------------------------------------------------------- option checks


def _range_option(value: Any, option: str, owner: str, *, integer: bool, minimum: float) -> tuple[Any, Any]:
    """A ``(low, high)`` pair with ``minimum <= low <= high`` (ints if ``integer``).

    Raises:
        OptionError: Not such a pair; the message names ``owner`` and ``option``.
    """
    pair = check_list(value, option, owner, of="numbers [low, high]", length=2)
    if integer:
        low, high = (check_int(v, option, owner, minimum=int(minimum)) for v in pair)
    else:
        low, high = (check_float(v, option, owner, low=minimum) for v in pair)
    if low > high:
        raise OptionError(owner, option, f"must be [low, high] with low <= high, got {pair}")
    return low, high


def _split_option(split: Any, owner: str) -> str:
    hint = "'train' draws the 8,000 protocol training digits, 'test' the 2,000 held-out digits"
    return check_choice(split, "split", owner, choices=DIGIT_SPLITS, hint=hint)


# --------------------------------------------------------------------------- rendering


def digit_patch(digit: np.ndarray, side: int) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """Resize a 28x28 uint8 digit to ``side`` x ``side`` and find its ink box.

    Returns:
        ``(patch, box)``: ``(side, side)`` float32 in ``[0, 1]`` and the tight ink box
        ``(x1, y1, x2, y2)`` in patch pixels (exclusive ends), ``None`` if the patch has no ink.
    """
    interpolation = cv2.INTER_AREA if side < digit.shape[0] else cv2.INTER_LINEAR
    patch = cv2.resize(digit, (side, side), interpolation=interpolation).astype(np.float32) / 255.0
    ink = patch > INK_THRESHOLD
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        return patch, None
    return patch, (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _finish(canvas: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Add noise, clip, quantise; grey ``(H, W)`` float -> ``(H, W, 3)`` uint8."""
    if noise > 0:
        canvas = canvas + rng.normal(0.0, noise, canvas.shape).astype(np.float32)
    grey = np.rint(np.clip(canvas, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


class _DigitSource(Dataset):
    """Common options and the protocol digits of one split."""

    task = "detect"

    def _common_options(
        self,
        owner: str,
        *,
        seed: int,
        size: int,
        scale: Sequence[float],
        split: str,
        noise: float,
        background: float,
        root: str | os.PathLike | None,
    ) -> None:
        """Check the options both generators take, then load the protocol digits of ``split``."""
        self.seed = check_int(seed, "seed", owner, minimum=0)
        self.size = check_int(size, "size", owner, minimum=8)
        self.scale = _range_option(scale, "scale", owner, integer=False, minimum=0.1)
        self.split = _split_option(split, owner)
        self.noise = check_float(noise, "noise", owner, low=0.0, high=1.0)
        self.background = check_float(background, "background", owner, low=0.0, high=1.0)
        self._load_digits(root, self.split)

    def _load_digits(self, root: str | os.PathLike | None, split: str) -> None:
        self.classes = [str(i) for i in range(10)]
        self.category_ids = list(range(10))
        digits, labels = mnist_split(root)[split]
        self.digits = digits.numpy()
        self.digit_labels = labels.numpy()

    def _draw_digit(self, rng: np.random.Generator, scale: tuple[float, float], size: int) -> tuple:
        """Draw a source digit and a size: ``(source index, patch, ink box)`` (box ``None``: no ink)."""
        source = int(rng.integers(len(self.digits)))
        side = min(size, max(4, round(28 * rng.uniform(*scale))))
        patch, box = digit_patch(self.digits[source], side)
        return source, patch, box


@dataclass
class Scene:
    """How one ``digits_det`` image was made (for tests and inspection).

    Attributes:
        image: ``(size, size, 3)`` uint8.
        boxes: ``(N, 4)`` float32 tight xyxy ink boxes.
        labels: ``(N,)`` int64 digit classes.
        sources: ``(N,)`` int64 indices of the digits in the split's protocol array.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    sources: np.ndarray


class DigitsDet(_DigitSource):
    """Scenes of real MNIST digits scattered on a dark canvas, with tight boxes.

    Args:
        images: Number of scenes (the dataset's length).
        seed: Seed; scene ``i`` comes from ``numpy.random.default_rng([seed, i])``.
        size: Side of the square images in pixels.
        digits: ``(min, max)`` digits per scene, drawn uniformly; a digit that finds no place
            satisfying ``max_overlap`` within 50 attempts is left out, so a scene can hold fewer.
        scale: ``(min, max)`` digit size factor relative to 28 pixels, drawn uniformly per digit.
        split: ``"train"`` (draw from the 8,000 protocol training digits) or ``"test"`` (only the
            2,000 held-out digits).
        max_overlap: Largest IoU allowed between the boxes of two digits in a scene.
        noise: Std of the Gaussian pixel noise on the ``[0, 1]`` scale (0 for none).
        background: Each scene's background grey level is drawn from ``[0, background]``.
        root: Folder of the MNIST IDX files (default: :func:`lstmdet.data.mnist.default_mnist_root`).

    Attributes:
        classes: ``["0", ..., "9"]``.
        task: ``"detect"``.

    Items:
        ``(image (size, size, 3) uint8, {"boxes": (N, 4) float32 xyxy, "labels": (N,) int64})``.
    """

    def __init__(
        self,
        images: int = 1000,
        seed: int = 0,
        size: int = 128,
        digits: Sequence[int] = (1, 5),
        scale: Sequence[float] = (0.8, 2.0),
        split: str = "train",
        max_overlap: float = 0.1,
        noise: float = 0.05,
        background: float = 0.1,
        root: str | os.PathLike | None = None,
    ) -> None:
        owner = "digits_det"
        self.images = check_int(images, "images", owner, minimum=1)
        self.digits_range = _range_option(digits, "digits", owner, integer=True, minimum=0)
        self.max_overlap = check_float(max_overlap, "max_overlap", owner, low=0.0, high=1.0)
        self._common_options(
            owner, seed=seed, size=size, scale=scale, split=split, noise=noise, background=background, root=root
        )

    def __len__(self) -> int:
        return self.images

    def scene(self, index: int) -> Scene:
        """Generate scene ``index`` with its provenance (see :class:`Scene`)."""
        if not 0 <= index < self.images:
            raise IndexError(f"digits_det index {index} out of range for {self.images} images")
        rng = np.random.default_rng([self.seed, index])
        size = self.size
        canvas = np.full((size, size), rng.uniform(0.0, self.background), dtype=np.float32)
        boxes: list[tuple[int, int, int, int]] = []
        labels, sources = [], []
        for _ in range(int(rng.integers(self.digits_range[0], self.digits_range[1] + 1))):
            source, patch, ink = self._draw_digit(rng, self.scale, size)
            if ink is None:
                continue
            side = patch.shape[0]
            for _attempt in range(PLACEMENT_ATTEMPTS):
                x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
                box = (x + ink[0], y + ink[1], x + ink[2], y + ink[3])
                if all(_iou(box, other) <= self.max_overlap for other in boxes):
                    region = canvas[y : y + side, x : x + side]
                    np.maximum(region, patch, out=region)
                    boxes.append(box)
                    labels.append(int(self.digit_labels[source]))
                    sources.append(source)
                    break
        return Scene(
            image=_finish(canvas, self.noise, rng),
            boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.array(labels, dtype=np.int64),
            sources=np.array(sources, dtype=np.int64),
        )

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        scene = self.scene(index)
        return scene.image, {"boxes": scene.boxes, "labels": scene.labels}


class DigitsVideo(_DigitSource):
    """Moving-MNIST-style clips: real digits drift and bounce off the frame edges, sometimes occluded.

    Each digit gets a size, a start position (the whole digit inside the frame) and a constant
    velocity (speed drawn from ``speed``, direction uniform); each frame it moves by its velocity and
    is reflected at the frame edges (the digit's square patch bounces, so the digit stays fully
    visible). Digits may pass over one another (per-pixel maximum).

    Occlusion: each digit-frame is, independently with probability ``occlusion``, either **faded**
    (drawn at :data:`FADE_LEVEL` = 10% intensity) or **covered** by a grey noisy bar spanning
    40-70% of the digit's box along one axis (after all digits are drawn, so it may also cover
    others). The digit keeps moving and keeps its labelled box: a box is always the tight ink box the
    digit has at that position, whether visible or not. Frame targets carry ``occluded`` flags.

    Args:
        clips: Number of clips (the dataset's length).
        frames: Frames per clip ``T``.
        seed: Seed; clip ``i`` comes from ``numpy.random.default_rng([seed, i])``.
        size: Side of the square frames in pixels.
        digits: ``(min, max)`` digits per clip, drawn uniformly.
        split: ``"train"`` (the 8,000 protocol training digits) or ``"test"`` (the 2,000 held-out digits).
        occlusion: Expected share of digit-frames that are faded or covered (0 to 1).
        scale: ``(min, max)`` digit size factor relative to 28 pixels.
        speed: ``(min, max)`` speed in pixels per frame; a box moves at most ``max + 1`` pixels
            per coordinate between frames (positions are rounded to whole pixels).
        noise: Std of the Gaussian pixel noise on the ``[0, 1]`` scale, drawn anew for each frame.
        background: Each clip's background grey level is drawn from ``[0, background]``.
        root: Folder of the MNIST IDX files (default: :func:`lstmdet.data.mnist.default_mnist_root`).

    Attributes:
        classes: ``["0", ..., "9"]``.
        frames: ``T``.
        task: ``"detect"``.

    Items:
        ``(clip (T, size, size, 3) uint8, {"frames": [{"boxes": (N, 4) float32 xyxy, "labels": (N,)
        int64, "track_ids": (N,) int64, "occluded": (N,) bool} for each frame]})``; digit ``k`` of a
        clip has track id ``k`` in every frame, and every digit is present in every frame.
    """

    def __init__(
        self,
        clips: int = 200,
        frames: int = 8,
        seed: int = 0,
        size: int = 96,
        digits: Sequence[int] = (1, 3),
        split: str = "train",
        occlusion: float = 0.25,
        scale: Sequence[float] = (1.0, 1.5),
        speed: Sequence[float] = (1.0, 3.0),
        noise: float = 0.05,
        background: float = 0.1,
        root: str | os.PathLike | None = None,
    ) -> None:
        owner = "digits_video"
        self.clips = check_int(clips, "clips", owner, minimum=1)
        self.frames = check_int(frames, "frames", owner, minimum=1)
        self.digits_range = _range_option(digits, "digits", owner, integer=True, minimum=1)
        self.occlusion = check_float(occlusion, "occlusion", owner, low=0.0, high=1.0)
        self.speed = _range_option(speed, "speed", owner, integer=False, minimum=0.0)
        self._common_options(
            owner, seed=seed, size=size, scale=scale, split=split, noise=noise, background=background, root=root
        )

    def __len__(self) -> int:
        return self.clips

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, list[dict[str, np.ndarray]]]]:
        if not 0 <= index < self.clips:
            raise IndexError(f"digits_video index {index} out of range for {self.clips} clips")
        rng = np.random.default_rng([self.seed, index])
        size, steps = self.size, self.frames
        background = rng.uniform(0.0, self.background)
        movers = []  # (patch, ink box, label, position, velocity, limit)
        for _ in range(int(rng.integers(self.digits_range[0], self.digits_range[1] + 1))):
            source, patch, ink = self._draw_digit(rng, self.scale, size)
            while ink is None:  # cannot happen with MNIST digits; keeps the track count exact
                source, patch, ink = self._draw_digit(rng, self.scale, size)
            limit = float(size - patch.shape[0])
            position = rng.uniform(0.0, limit, size=2) if limit > 0 else np.zeros(2)
            angle, speed = rng.uniform(0.0, 2 * math.pi), rng.uniform(*self.speed)
            velocity = np.array([math.cos(angle), math.sin(angle)]) * speed
            movers.append((patch, ink, int(self.digit_labels[source]), position, velocity, limit))
        count = len(movers)
        occluded = rng.random((steps, count)) < self.occlusion
        covered = occluded & (rng.random((steps, count)) < 0.5)  # the rest of the occluded ones fade
        clip = np.empty((steps, size, size, 3), dtype=np.uint8)
        targets = []
        for t in range(steps):
            canvas = np.full((size, size), background, dtype=np.float32)
            boxes = np.zeros((count, 4), dtype=np.float32)
            for k, (patch, ink, _label, position, velocity, limit) in enumerate(movers):
                if t > 0:
                    _bounce(position, velocity, limit)
                x, y = (int(min(max(round(v), 0), limit)) for v in position)
                side = patch.shape[0]
                level = FADE_LEVEL if occluded[t, k] and not covered[t, k] else 1.0
                region = canvas[y : y + side, x : x + side]
                np.maximum(region, patch * level, out=region)
                boxes[k] = (x + ink[0], y + ink[1], x + ink[2], y + ink[3])
            for k in np.flatnonzero(covered[t]):
                _cover(canvas, boxes[k], rng)
            clip[t] = _finish(canvas, self.noise, rng)
            targets.append(
                {
                    "boxes": boxes,
                    "labels": np.array([m[2] for m in movers], dtype=np.int64),
                    "track_ids": np.arange(count, dtype=np.int64),
                    "occluded": occluded[t].copy(),
                }
            )
        return clip, {"frames": targets}


def _bounce(position: np.ndarray, velocity: np.ndarray, limit: float) -> None:
    """Move by ``velocity`` in place, reflecting position and velocity at ``0`` and ``limit``."""
    position += velocity
    for axis in range(2):
        if limit <= 0:
            position[axis] = 0.0
            continue
        while not 0.0 <= position[axis] <= limit:  # a loop only matters for speeds above ``limit``
            if position[axis] < 0.0:
                position[axis] = -position[axis]
            else:
                position[axis] = 2 * limit - position[axis]
            velocity[axis] = -velocity[axis]


def _cover(canvas: np.ndarray, box: np.ndarray, rng: np.random.Generator) -> None:
    """Paint a grey noisy bar over 40-70% of ``box`` along a random axis (full extent on the other)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    share = rng.uniform(0.4, 0.7)
    if rng.random() < 0.5:  # horizontal bar: covers a band of rows
        band = max(1, round((y2 - y1) * share))
        start = int(rng.integers(y1, y2 - band + 1))
        y1, y2 = start, start + band
    else:
        band = max(1, round((x2 - x1) * share))
        start = int(rng.integers(x1, x2 - band + 1))
        x1, x2 = start, start + band
    shape = (y2 - y1, x2 - x1)
    canvas[y1:y2, x1:x2] = np.clip(rng.uniform(0.35, 0.65) + rng.normal(0.0, 0.1, shape), 0.0, 1.0)


@hookimpl
def lstmdet_register_datasets(registry: Registrar) -> None:
    """Register ``digits_det`` and ``digits_video``."""
    registry.add("digits_det", DigitsDet)
    registry.add("digits_video", DigitsVideo)
