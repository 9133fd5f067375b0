"""MNIST IDX files and the project's MNIST-10k protocol.

The protocol (``shared/data/README.md``): the 10,000 official MNIST test digits are split with
``numpy.random.RandomState(0).permutation(10000)``; the first 8,000 are for training (carve
validation out of them), the last 2,000 are the held-out test digits.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from lstmdet.errors import LstmdetError

IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
LABELS_FILE = "t10k-labels-idx1-ubyte.gz"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def default_mnist_root() -> Path:
    """``../shared/data/mnist-t10k`` relative to the project root (the source checkout)."""
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist-t10k"


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


def mnist10k_split(root: str | Path | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The MNIST-10k protocol split.

    Args:
        root: Folder with the official t10k IDX files; default :func:`default_mnist_root`.

    Returns:
        ``{"train": (images, labels), "test": (images, labels)}`` with images ``(N, 28, 28)``
        uint8 and labels ``(N,)`` int64; 8,000 train and 2,000 test digits.
    """
    root = default_mnist_root() if root is None else Path(root)
    images = read_idx(root / IMAGES_FILE)
    labels = read_idx(root / LABELS_FILE).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise LstmdetError(f"{root}: {images.shape[0]} images but {labels.shape[0]} labels")
    perm = np.random.RandomState(0).permutation(images.shape[0])
    cut = round(0.8 * len(perm))  # 8,000 of the 10,000 official test digits
    return {
        "train": (torch.from_numpy(images[perm[:cut]].copy()), torch.from_numpy(labels[perm[:cut]])),
        "test": (torch.from_numpy(images[perm[cut:]].copy()), torch.from_numpy(labels[perm[cut:]])),
    }
