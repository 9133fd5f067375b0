"""Shared fixtures: the real MNIST-10k split, seeds and threads."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from helpers import HubCache

from lstmdet.data.mnist import mnist_split


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def mnist():
    """The MNIST-10k protocol split: {"train": (uint8 (8000,28,28), labels), "test": (2000 ...)}."""
    return mnist_split()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``faults`` run only when ``-m`` names them (``make test-faults``); tests marked
    ``gpu`` need CUDA: on a machine without it they are reported as skipped."""
    if "faults" not in (config.getoption("markexpr") or ""):
        deselected = [item for item in items if "faults" in item.keywords]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if "faults" not in item.keywords]
    if torch.cuda.is_available():
        return
    no_cuda = pytest.mark.skip(reason="marked gpu and this machine has no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(no_cuda)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubCache:
    """An empty torch hub cache under ``tmp_path``; any download attempt fails at once."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # undo any torch.hub.set_dir() by others
    calls: list[str] = []

    def offline(url: str, dst: str, *args, **kwargs) -> None:
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution (simulated)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert Path(torch.hub.get_dir()) == tmp_path / "torch" / "hub"
    return HubCache(tmp_path / "torch" / "hub", calls)
