"""The MNIST digits shipped in the package, the environment variable, and the two splits."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from lstmdet.data.mnist import ROOT_ENV, default_mnist_root, mnist_split, shipped_mnist_root
from lstmdet.errors import LstmdetError
from lstmdet.plugins.datasets_classification import MnistIdx
from lstmdet.plugins.datasets_digits import DigitsDet


def _write_idx(path: Path, array: np.ndarray, *, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if compress else raw)


def _fake_mnist(folder: Path, *, train: int | None, test: int = 30, compress: bool = True) -> None:
    """IDX files whose image ``i`` is filled with value ``i`` (train: ``100 + i``), label ``i % 10``."""
    suffix = ".gz" if compress else ""
    images = np.stack([np.full((28, 28), i, np.uint8) for i in range(test)])
    _write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", images, compress=compress)
    _write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", np.arange(test) % 10, compress=compress)
    if train is not None:
        images = np.stack([np.full((28, 28), 100 + i, np.uint8) for i in range(train)])
        _write_idx(folder / f"train-images-idx3-ubyte{suffix}", images, compress=compress)
        _write_idx(folder / f"train-labels-idx1-ubyte{suffix}", np.arange(train) % 10, compress=compress)


def test_shipped_digits_are_the_official_test_files() -> None:
    root = shipped_mnist_root()
    assert root.is_relative_to(Path(__import__("lstmdet").__file__).parent)
    digests = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in root.glob("*.gz")}
    assert digests == {
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    assert (root / "README.md").read_text().count("CC BY-SA 3.0") == 1


def test_default_is_the_mnist10k_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ROOT_ENV, raising=False)
    assert default_mnist_root() == shipped_mnist_root()
    split = mnist_split()
    assert [len(split[k][0]) for k in ("train", "test")] == [8000, 2000]
    perm = np.random.RandomState(0).permutation(10000)
    from lstmdet.data.mnist import read_idx

    labels = read_idx(shipped_mnist_root() / "t10k-labels-idx1-ubyte.gz")
    assert split["test"][1].tolist() == labels[perm[8000:]].tolist()
    assert np.bincount(split["train"][1].numpy(), minlength=10).min() > 600  # every class present


def test_environment_variable_names_the_default_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_mnist(tmp_path, train=None, test=20)
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    assert default_mnist_root() == tmp_path
    split = mnist_split()
    assert [len(split[k][0]) for k in ("train", "test")] == [16, 4]  # the protocol's 80/20 cut
    assert len(MnistIdx(split="test")) == 4


def test_full_files_give_the_official_split(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, train=50, test=20)
    split = mnist_split(tmp_path)
    assert split["train"][0][:, 0, 0].tolist() == [100 + i for i in range(50)]  # in file order, not permuted
    assert split["test"][0][:, 0, 0].tolist() == list(range(20))
    assert split["train"][1].tolist() == [i % 10 for i in range(50)]
    val = MnistIdx(root=tmp_path, split="val", val_count=10)
    assert len(val) == 10 and len(MnistIdx(root=tmp_path, split="train", val_count=10)) == 40
    scenes = DigitsDet(root=tmp_path, images=2, size=64, split="test")
    assert scenes.digits.shape == (20, 28, 28)


def test_torchvision_layout_uncompressed(tmp_path: Path) -> None:
    _fake_mnist(tmp_path / "MNIST" / "raw", train=12, test=10, compress=False)
    split = mnist_split(tmp_path)
    assert [len(split[k][0]) for k in ("train", "test")] == [12, 10]


def test_folder_without_mnist_files_names_what_it_expected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LstmdetError, match=r"no MNIST files in .*t10k-images-idx3-ubyte\[\.gz\]"):
        mnist_split(tmp_path)
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(LstmdetError, match=rf"from \${ROOT_ENV}"):
        mnist_split()


def test_mismatched_files_are_refused(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, train=None, test=10)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(9), compress=True)
    with pytest.raises(LstmdetError, match=r"10 images .* but 9 labels"):
        mnist_split(tmp_path)
