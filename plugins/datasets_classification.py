"""Built-in classification datasets: ``mnist_idx`` and ``image_folder``.

* ``mnist_idx``: MNIST digits from IDX files under the project's MNIST-10k protocol
  (:mod:`lstmdet.data.mnist`): ``train``/``val`` come from the 8,000 protocol training digits
  (validation is their last ``val_count``), ``test`` is the 2,000 held-out digits.
* ``image_folder``: ``root/<class name>/**/<image>`` (class names sorted), read with
  :func:`lstmdet.data.images.read_image`.

Both follow the ``lstmdet_register_datasets`` contract: items are ``(image, {"label": int})`` with
``image`` an ``(H, W, 3)`` uint8 RGB array; ``task == "classify"``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch.utils.data import Dataset

from lstmdet import hookimpl
from lstmdet.data.images import DEFAULT_MAX_PIXELS, SkipsUnreadable, find_images, read_image
from lstmdet.data.mnist import mnist_split
from lstmdet.errors import LstmdetError
from lstmdet.options import check_choice, check_int

if TYPE_CHECKING:
    from lstmdet.registry import Registrar

MNIST_SPLITS = ("train", "val", "test", "trainval")


class MnistIdx(Dataset):
    """MNIST digits of one split: the MNIST-10k protocol, or the official split given the full files.

    Args:
        root: Folder with the official IDX files; default :func:`lstmdet.data.mnist.default_mnist_root`
            (``$LSTMDET_MNIST_ROOT``, else the test digits shipped with lstmdet). With only the ``t10k``
            files the training pool is the protocol's 8,000 digits and ``test`` its 2,000 held-out ones;
            with ``train-*`` files too, the pool is the official 60,000 and ``test`` the 10,000.
        split: ``"train"`` (the pool less its last ``val_count`` digits), ``"val"`` (those last
            ``val_count``), ``"trainval"`` (the whole pool) or ``"test"`` (held out, for final results only).
        val_count: Digits carved out of the training pool for validation (below the pool's size).
        images: Use only the first ``images`` digits of the split (``None``: all).

    Attributes:
        classes: ``["0", ..., "9"]``.
        task: ``"classify"``.

    Items:
        ``(image, {"label": int})``, ``image`` ``(28, 28, 3)`` uint8 (the grey digit in all three channels).
    """

    task = "classify"

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        val_count: int = 1000,
        images: int | None = None,
    ) -> None:
        check_choice(split, "split", "mnist_idx", choices=MNIST_SPLITS)
        val_count = check_int(val_count, "val_count", "mnist_idx", minimum=0)
        protocol = mnist_split(root)
        digits, labels = (t.numpy() for t in protocol["test" if split == "test" else "train"])
        if val_count >= len(digits) and split in ("train", "val"):
            raise ValueError(f"mnist_idx val_count must be below the {len(digits)} training digits, got {val_count}")
        if split == "train":
            digits, labels = digits[: len(digits) - val_count], labels[: len(labels) - val_count]
        elif split == "val":
            digits, labels = digits[len(digits) - val_count :], labels[len(labels) - val_count :]
        if images is not None:
            images = check_int(images, "images", "mnist_idx", minimum=1)
            if images > len(digits):
                raise ValueError(f"mnist_idx images={images} but split {split!r} has only {len(digits)} digits")
            digits, labels = digits[:images], labels[:images]
        self.digits = digits
        self.labels = labels
        self.split = split
        self.classes = [str(i) for i in range(10)]

    def __len__(self) -> int:
        return len(self.digits)

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, int]]:
        digit = self.digits[index]
        return np.repeat(digit[:, :, None], 3, axis=2), {"label": int(self.labels[index])}


class ImageFolder(SkipsUnreadable, Dataset):
    """Images sorted into one sub-folder per class.

    Args:
        root: Folder whose sub-folders (sorted by name, hidden ones ignored) are the classes; each
            is searched recursively for files with an image extension.
        max_pixels: Largest ``width * height`` accepted (see :func:`lstmdet.data.images.read_image`).

    Attributes:
        classes: Sub-folder names, sorted; label ``i`` is ``classes[i]``.
        samples: ``(path, label)`` of every readable image.
        skipped: Number of unreadable files left out (headers are checked at construction; a file
            whose pixels fail to decode is left out on first access and the next image served).
        task: ``"classify"``.

    Items:
        ``(image, {"label": int})``, ``image`` ``(H, W, 3)`` uint8 RGB as displayed (EXIF applied).

    Raises:
        LstmdetError: ``root`` is missing or has no class sub-folders.
    """

    task = "classify"

    def __init__(self, root: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        root = Path(root)
        if not root.is_dir():
            raise LstmdetError(f"image_folder root {root} does not exist or is not a folder")
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise LstmdetError(f"image_folder root {root} has no class sub-folders (expected root/<class>/<image>)")
        self.root = root
        self.max_pixels = max_pixels
        self.skipped_files = {}
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            for path, _size in self._probe_all(find_images(root / name), max_pixels):
                self.samples.append((path, label))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, int]]:
        def load(i: int) -> tuple[np.ndarray, dict[str, int]]:
            path, label = self.samples[i]
            return read_image(path, max_pixels=self.max_pixels), {"label": label}

        return self._read_with_fallback(index, len(self.samples), lambda i: self.samples[i][0], load)


@hookimpl
def lstmdet_register_datasets(registry: Registrar) -> None:
    """Register ``mnist_idx`` and ``image_folder``."""
    registry.add("mnist_idx", MnistIdx)
    registry.add("image_folder", ImageFolder)
