"""Fixtures of the integration tests: a third-party plugin installed the way pip installs one, generated scenes
and the in-process detect run that queued runs of them must equal."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import install_plugin, run_cli
from queue_harness import DETECT

import lstmdet

PLUGIN_SOURCE = '''
"""A GRU sweep encoder and a tiny backbone, registered the way any third party would."""
import torch
from torch import nn

from lstmdet import FeatureInfo, hookimpl


class GRURowSweep(nn.Module):
    """(B, T, C, H, W) -> (B, T, hidden, H, W): a GRU along each row."""

    def __init__(self, in_channels, hidden=16):
        super().__init__()
        self.out_channels = hidden
        self.gru = nn.GRU(in_channels, hidden, batch_first=True)

    def forward(self, x, state=None):
        b, t, c, h, w = x.shape
        rows = x.reshape(b * t, c, h, w).permute(0, 2, 3, 1).reshape(b * t * h, w, c)
        y, _ = self.gru(rows)
        return y.reshape(b, t, h, w, -1).permute(0, 1, 4, 2, 3), None


class TinyCNN(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.feature_info = [FeatureInfo("c1", width, 2)]

    def forward(self, x):
        return {"c1": torch.relu(self.conv(x))}


@hookimpl
def lstmdet_register_encoders(registry):
    registry.add("gru_sweep", GRURowSweep)


@hookimpl
def lstmdet_register_backbones(registry):
    registry.add("tiny_cnn", TinyCNN)
'''


@pytest.fixture()
def plugin_site(tmp_path: Path) -> Path:
    """A site folder holding the GRU plugin (an encoder and a backbone)."""
    return install_plugin(tmp_path / "site", "lstmdet_gru_plugin", PLUGIN_SOURCE, "gru")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """160 generated digit scenes (128 px), shared by the module's tests (read only)."""
    root = tmp_path_factory.mktemp("queue-data")
    done = run_cli("data", "digits-det", str(root / "scenes"), "--images", "160", "--seed", "4", "--split", "test")
    assert done.returncode == 0, done.stderr
    return root / "scenes" / "images"


@pytest.fixture(scope="module")
def reference(scenes, tmp_path_factory) -> Path:
    """The in-process run that every queued detect of ``scenes`` must equal."""
    out = tmp_path_factory.mktemp("reference") / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lstmdet.detect(scenes, out, progress=False, **DETECT)
    finally:
        torch.set_num_threads(threads)
    return out
