"""MNIST IDX files, the digits shipped with lstmdet, and the two splits they are used in.

lstmdet ships the 10,000 official MNIST test digits (``lstmdet/data/mnist-t10k/``, see the README
there for provenance and licence), so the MNIST dataset and the generated digit scenes work on any
machine. Which digits are used is decided by the folder (:func:`mnist_root`):

* a folder with only the official ``t10k`` files (the shipped one): the **MNIST-10k protocol**.
  The 10,000 test digits are split with ``numpy.random.RandomState(0).permutation(10000)``; the first
  8,000 are for training (carve validation out of them), the last 2,000 are held out. Every figure in
  ``benchmarks/RESULTS.md`` uses this protocol.
* a folder that also holds the official training files (``train-images-idx3-ubyte[.gz]`` and
  ``train-labels-idx1-ubyte[.gz]``, compressed or not, directly or under ``MNIST/raw/`` as
  torchvision's ``datasets.MNIST(root)`` lays them out): the **official split**, 60,000 training and
  10,000 test digits.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from lstmdet.errors import LstmdetError

#: Environment variable naming the default MNIST folder (instead of the shipped digits).
ROOT_ENV = "LSTMDET_MNIST_ROOT"
IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
LABELS_FILE = "t10k-labels-idx1-ubyte.gz"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def shipped_mnist_root() -> Path:
    """The folder of the MNIST test digits shipped inside the package."""
    return Path(__file__).resolve().parent / "mnist-t10k"


def default_mnist_root() -> Path:
    """``$LSTMDET_MNIST_ROOT`` when set (and not empty), else :func:`shipped_mnist_root`."""
    value = os.environ.get(ROOT_ENV, "").strip()
    return Path(value).expanduser() if value else shipped_mnist_root()


def _find(root: Path, stem: str) -> Path | None:
    """``root/stem[.gz]`` or ``root/MNIST/raw/stem[.gz]``, whichever exists first."""
    for folder in (root, root / "MNIST" / "raw"):
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def _pair(root: Path, prefix: str) -> tuple[Path, Path] | None:
    images = _find(root, f"{prefix}-images-idx3-ubyte")
    labels = _find(root, f"{prefix}-labels-idx1-ubyte")
    return (images, labels) if images is not None and labels is not None else None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into an array of its declared shape.

    Raises:
        LstmdetError: The file is missing or not a valid IDX file.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise LstmdetError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise LstmdetError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise LstmdetError(f"{path} is truncated or padded: {len(raw)} bytes, header says {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(dims)


def _read_pair(pair: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(pair[0]), read_idx(pair[1]).astype(np.int64)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise LstmdetError(
            f"{pair[0]} and {pair[1]} do not match: {images.shape[0]} images of shape {images.shape[1:]} "
            f"but {labels.shape[0]} labels; give the official MNIST files"
        )
    return images, labels


def mnist_split(root: str | Path | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The training and held-out MNIST digits of ``root``.

    Args:
        root: Folder with the official IDX files; ``None``: :func:`default_mnist_root`. With the
            ``t10k`` files only, the MNIST-10k protocol; with the training files too, the official
            60k / 10k split (see the module docstring).

    Returns:
        ``{"train": (images, labels), "test": (images, labels)}`` with images ``(N, 28, 28)`` uint8 and
        labels ``(N,)`` int64: 8,000 and 2,000 digits (protocol) or 60,000 and 10,000 (official).

    Raises:
        LstmdetError: The folder holds no MNIST test files, or a file is not a valid IDX file.
    """
    where = f" (from ${ROOT_ENV})" if root is None and os.environ.get(ROOT_ENV, "").strip() else ""
    root = default_mnist_root() if root is None else Path(root).expanduser()
    test = _pair(root, "t10k")
    if test is None:
        raise LstmdetError(
            f"no MNIST files in {root}{where}: expected t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] "
            f"(and train-* for the official split); leave root unset to use the digits shipped with lstmdet"
        )
    images, labels = _read_pair(test)
    train = _pair(root, "train")
    if train is not None:
        train_images, train_labels = _read_pair(train)
        return {
            "train": (torch.from_numpy(train_images.copy()), torch.from_numpy(train_labels)),
            "test": (torch.from_numpy(images.copy()), torch.from_numpy(labels)),
        }
    perm = np.random.RandomState(0).permutation(images.shape[0])
    cut = round(0.8 * len(perm))  # 8,000 of the 10,000 official test digits
    return {
        "train": (torch.from_numpy(images[perm[:cut]].copy()), torch.from_numpy(labels[perm[:cut]])),
        "test": (torch.from_numpy(images[perm[cut:]].copy()), torch.from_numpy(labels[perm[cut:]])),
    }
