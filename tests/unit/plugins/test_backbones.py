"""Tests of the built-in backbones (``plugins/backbones_torchvision.py``, ``plugins/backbones_small.py``).

The classes are built directly from the plugin modules, independent of the plugin registry.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.models as tvm
from helpers import HubCache
from torch import Tensor

from lstmdet import FeatureInfo
from lstmdet.errors import LstmdetError
from lstmdet.plugins.backbones_small import RowsBackbone, SmallCNN
from lstmdet.plugins.backbones_small import lstmdet_register_backbones as register_small
from lstmdet.plugins.backbones_torchvision import (
    ARCHITECTURES,
    TorchvisionBackbone,
    pretrained_cache_path,
)
from lstmdet.plugins.backbones_torchvision import lstmdet_register_backbones as register_torchvision


def assert_matches_feature_info(out: dict[str, Tensor], info: list[FeatureInfo], batch: int, h: int, w: int):
    assert list(out) == [f.name for f in info]
    for f in info:
        assert out[f.name].shape == (batch, f.channels, math.ceil(h / f.stride), math.ceil(w / f.stride)), f


# --------------------------------------------------------------------------------------------------
# torchvision backbones


EXPECTED_DEFAULT = {
    "resnet18": [128, 256, 512],
    "resnet34": [128, 256, 512],
    "resnet50": [512, 1024, 2048],
    "mobilenet_v3_small": [24, 48, 576],
    "mobilenet_v3_large": [40, 112, 960],
    "vgg16": [512, 512, 512],
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_torchvision_default_levels(arch: str) -> None:
    backbone = TorchvisionBackbone(arch).eval()
    assert [f.name for f in backbone.feature_info] == ["c3", "c4", "c5"]
    assert [f.stride for f in backbone.feature_info] == [8, 16, 32]
    assert [f.channels for f in backbone.feature_info] == EXPECTED_DEFAULT[arch]
    with torch.no_grad():  # odd sizes: every map is ceil(H / stride) (VGG's pools run in ceil mode)
        out = backbone(torch.rand(2, 3, 49, 37))
    assert_matches_feature_info(out, backbone.feature_info, 2, 49, 37)
    assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize(
    ("arch", "levels", "expected"),
    [
        ("resnet18", ["c1", "c2"], [("c1", 64, 2), ("c2", 64, 4)]),
        ("resnet18", ["c5", "c2"], [("c2", 64, 4), ("c5", 512, 32)]),  # returned in stride order
        ("resnet50", "c4", [("c4", 1024, 16)]),
        ("mobilenet_v3_small", ["c1", "c4"], [("c1", 16, 2), ("c4", 48, 16)]),
        ("mobilenet_v3_large", ["c2"], [("c2", 24, 4)]),
        ("vgg16", ["c1", "c3"], [("c1", 128, 2), ("c3", 256 * 2, 8)]),
    ],
)
def test_torchvision_level_choice(arch: str, levels, expected) -> None:
    backbone = TorchvisionBackbone(arch, levels=levels).eval()
    assert backbone.feature_info == [FeatureInfo(*e) for e in expected]
    with torch.no_grad():
        out = backbone(torch.rand(1, 3, 64, 48))
    assert_matches_feature_info(out, backbone.feature_info, 1, 64, 48)


def test_torchvision_keeps_only_needed_layers() -> None:
    shallow = TorchvisionBackbone("resnet18", levels=["c2"])
    assert not hasattr(shallow, "layer2")
    full = TorchvisionBackbone("resnet18")
    assert sum(p.numel() for p in shallow.parameters()) < sum(p.numel() for p in full.parameters())
    assert not any(name.startswith("fc") for name, _ in full.named_parameters())


def test_torchvision_unknown_level_and_arch() -> None:
    with pytest.raises(ValueError, match=r"no level\(s\) \['c7'\].*available levels: c1, c2, c3, c4, c5"):
        TorchvisionBackbone("resnet18", levels=["c3", "c7"])
    with pytest.raises(ValueError, match="available: resnet18"):
        TorchvisionBackbone("resnet101")
    with pytest.raises(ValueError, match="repeat"):
        TorchvisionBackbone("resnet18", levels=["c3", "c3"])


def test_torchvision_init_is_real() -> None:
    """Parameters come out of ``to_empty`` initialised like torchvision, not as garbage memory."""
    backbone = TorchvisionBackbone("resnet18", levels=["c2"])
    w = backbone.conv1.weight
    assert abs(w.std().item() - math.sqrt(2 / (64 * 7 * 7))) < 0.01
    assert torch.equal(backbone.bn1.weight, torch.ones(64))
    assert torch.equal(backbone.bn1.running_var, torch.ones(64))
    assert torch.equal(backbone.bn1.running_mean, torch.zeros(64))


def test_torchvision_matches_torchvision_model() -> None:
    """Same weights, same maps as running torchvision's model layer by layer."""
    reference = tvm.resnet18().eval()
    backbone = TorchvisionBackbone("resnet18", levels=["c2", "c5"]).eval()
    missing, unexpected = backbone.load_state_dict(reference.state_dict(), strict=False)
    assert missing == [] and set(unexpected) == {"fc.weight", "fc.bias"}
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = backbone(x)
        r = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        c2 = reference.layer1(r)
        c5 = reference.layer4(reference.layer3(reference.layer2(c2)))
    torch.testing.assert_close(out["c2"], c2)
    torch.testing.assert_close(out["c5"], c5)


def test_torchvision_frozen() -> None:
    backbone = TorchvisionBackbone("mobilenet_v3_small", levels=["c3"], frozen=True)
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert all(not m.training for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = backbone.features[0][1].running_mean.clone()
    backbone(torch.rand(2, 3, 32, 32))
    assert torch.equal(before, backbone.features[0][1].running_mean)


def test_torchvision_register_hook() -> None:
    added: dict[str, object] = {}

    class FakeRegistry:
        def add(self, name: str, factory) -> None:
            added[name] = factory

    register_torchvision(FakeRegistry())
    assert sorted(added) == sorted(ARCHITECTURES)
    import inspect

    assert list(inspect.signature(added["resnet18"]).parameters) == ["levels", "pretrained", "frozen"]
    backbone = added["mobilenet_v3_small"](levels=["c2"])
    assert backbone.feature_info == [FeatureInfo("c2", 16, 4)]


# --------------------------------------------------------------------------------------------------
# pretrained weights through torchvision's weights API and the torch hub cache


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_pretrained_loads_from_hub_cache(arch: str, hub: HubCache) -> None:
    url = tvm.get_model_weights(arch).DEFAULT.url
    path, got_url = pretrained_cache_path(arch)
    assert got_url == url
    assert path == hub.dir / "checkpoints" / url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True)
    saved = tvm.get_model(arch).state_dict()
    for value in saved.values():  # make BN statistics non-default too
        if value.is_floating_point():
            value.add_(torch.rand_like(value))
    torch.save(saved, path)

    backbone = TorchvisionBackbone(arch, pretrained=True)
    state = backbone.state_dict()
    assert state, "backbone has no tensors"
    for key, value in state.items():
        assert torch.equal(value, saved[key]), key
    assert hub.calls == []


def test_pretrained_missing_file_is_clear_error(hub: HubCache) -> None:
    path, url = pretrained_cache_path("resnet18")
    with pytest.raises(LstmdetError) as info:
        TorchvisionBackbone("resnet18", pretrained=True)
    message = str(info.value)
    assert str(path) in message
    assert url in message
    assert "pretrained: false" in message
    assert "copy" in message
    assert hub.calls == [url]


def test_pretrained_corrupt_file_is_clear_error(hub: HubCache) -> None:
    path, _ = pretrained_cache_path("mobilenet_v3_small")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(LstmdetError, match="corrupt"):
        TorchvisionBackbone("mobilenet_v3_small", pretrained=True)


def test_pretrained_wrong_architecture_is_clear_error(hub: HubCache) -> None:
    path, _ = pretrained_cache_path("resnet34")
    path.parent.mkdir(parents=True)
    torch.save(tvm.resnet18().state_dict(), path)  # fewer blocks than resnet34
    with pytest.raises(LstmdetError, match="resnet34"):
        TorchvisionBackbone("resnet34", pretrained=True)


# --------------------------------------------------------------------------------------------------
# small_cnn


def test_small_cnn_default_is_last_level() -> None:
    backbone = SmallCNN()
    assert backbone.feature_info == [FeatureInfo("c3", 128, 8)]
    out = backbone(torch.rand(2, 3, 28, 28))
    assert_matches_feature_info(out, backbone.feature_info, 2, 28, 28)


@pytest.mark.parametrize(
    ("widths", "levels", "expected"),
    [
        ([8, 16, 24], ["c1", "c2", "c3"], [("c1", 8, 2), ("c2", 16, 4), ("c3", 24, 8)]),
        ([8, 16, 24, 32], ["c4", "c2"], [("c2", 16, 4), ("c4", 32, 16)]),
        ((4,), None, [("c1", 4, 2)]),
        ([8, 16, 24], "c2", [("c2", 16, 4)]),
    ],
)
def test_small_cnn_levels(widths, levels, expected) -> None:
    backbone = SmallCNN(widths=widths, levels=levels)
    assert backbone.feature_info == [FeatureInfo(*e) for e in expected]
    out = backbone(torch.rand(2, 3, 33, 20))
    assert_matches_feature_info(out, backbone.feature_info, 2, 33, 20)


def test_small_cnn_builds_only_needed_stages() -> None:
    assert len(SmallCNN(widths=[8, 16, 24], levels=["c2"]).stages) == 2


def test_small_cnn_backward() -> None:
    backbone = SmallCNN(widths=[8, 16], levels=["c1", "c2"], image_channels=1)
    out = backbone(torch.rand(3, 1, 28, 28))
    sum(v.square().mean() for v in out.values()).backward()
    for name, p in backbone.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in backbone.parameters())


@pytest.mark.parametrize("widths", [[], [32, 0], [16, -3], [8.0], "32", [True], None])
def test_small_cnn_rejects_bad_widths(widths) -> None:
    with pytest.raises(ValueError, match="widths"):
        SmallCNN(widths=widths)


def test_small_cnn_rejects_bad_levels_and_input() -> None:
    with pytest.raises(ValueError, match=r"no level\(s\) \['c4'\].*available levels: c1, c2, c3"):
        SmallCNN(levels=["c4"])
    with pytest.raises(ValueError, match="levels"):
        SmallCNN(levels=[])
    with pytest.raises(ValueError, match="image_channels"):
        SmallCNN(image_channels=0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) with C = 3"):
        SmallCNN()(torch.rand(1, 1, 28, 28))


# --------------------------------------------------------------------------------------------------
# rows


def test_rows_grayscale_equals_image_rows() -> None:
    images = torch.rand(2, 3, 5, 7)
    backbone = RowsBackbone(width=7)
    assert backbone.feature_info == [FeatureInfo("rows", 7, 1)]
    assert list(backbone.parameters()) == []
    out = backbone(images)["rows"]
    assert out.shape == (2, 7, 5, 1)
    gray = (images[:, 0] + images[:, 1] + images[:, 2]) / 3
    for b in range(2):
        for h in range(5):
            torch.testing.assert_close(out[b, :, h, 0], gray[b, h, :])


def test_rows_color_is_channel_major() -> None:
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    backbone = RowsBackbone(width=6, grayscale=False)
    assert backbone.feature_info == [FeatureInfo("rows", 18, 1)]
    out = backbone(images)["rows"]
    assert out.shape == (2, 18, 4, 1)
    for b in range(2):
        for h in range(4):
            expected = torch.cat([images[b, 0, h], images[b, 1, h], images[b, 2, h]])
            assert torch.equal(out[b, :, h, 0], expected)


def test_rows_mnist_shape_and_single_channel_input() -> None:
    backbone = RowsBackbone()
    out = backbone(torch.rand(4, 3, 28, 28))
    assert_matches_feature_info(out, backbone.feature_info, 4, 28, 1)  # one column: W collapses
    gray = torch.rand(1, 1, 28, 28)
    assert torch.equal(backbone(gray)["rows"][0, :, 3, 0], gray[0, 0, 3])


def test_rows_wrong_width_is_clear_error() -> None:
    with pytest.raises(ValueError, match=r"32 pixels wide.*width 28.*resize"):
        RowsBackbone(width=28)(torch.rand(1, 3, 28, 32))
    with pytest.raises(ValueError, match="width"):
        RowsBackbone(width=0)
    with pytest.raises(ValueError, match="C = 3"):
        RowsBackbone(grayscale=False)(torch.rand(1, 1, 28, 28))


def test_small_register_hook() -> None:
    added: dict[str, object] = {}

    class FakeRegistry:
        def add(self, name: str, factory) -> None:
            added[name] = factory

    register_small(FakeRegistry())
    assert added == {"small_cnn": SmallCNN, "rows": RowsBackbone}
