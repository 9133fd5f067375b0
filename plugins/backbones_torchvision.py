"""Built-in backbones from ``torchvision.models``: ResNet, MobileNetV3 and VGG16.

Registered names: ``resnet18``, ``resnet34``, ``resnet50``, ``mobilenet_v3_small``,
``mobilenet_v3_large`` and ``vgg16``. Every one is a :class:`TorchvisionBackbone` that keeps the
feature part of the classification network (its stem and stages, without pooling and classifier)
and returns the feature maps named in ``levels``.

Levels are named by stride: ``cK`` is the output of the *last* layer whose output has stride
``2**K`` (``c1`` .. ``c5``). Which layers those are, and their channels, is found once at
construction by running the network on a ``meta``-device dummy image (shapes only, no compute), so
the same code serves every architecture. Layers deeper than the deepest requested level are not
kept. Parameter names match torchvision's (``layer1.0.conv1.weight``, ``features.3.block.0.0.weight``),
so a torchvision state dict loads into a backbone with ``strict=False``.

``pretrained: true`` loads ImageNet weights through torchvision's weights API
(``torchvision.models.get_model_weights(name).DEFAULT``), which reads
``torch.hub.get_dir()/checkpoints/<file name of the weights URL>`` when that file exists and tries
to download it otherwise. Offline, copy the file there (``TORCH_HOME`` moves the cache) or keep
``pretrained: false``. Pretrained weights expect images normalised with the ImageNet mean and std.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torchvision.models as tvm
from torch import Tensor, nn

from lstmdet import FeatureInfo, hookimpl
from lstmdet.errors import LstmdetError
from lstmdet.levels import level_name, parse_levels
from lstmdet.pretrained import hub_state_dict, weights_file

if TYPE_CHECKING:
    from lstmdet.registry import Registrar

ARCHITECTURES: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "vgg16",
)
DEFAULT_LEVELS: tuple[str, ...] = ("c3", "c4", "c5")
_RESNET_LAYERS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_PROBE_SIZE = 256  # divisible by every stride up to 256, so strides come out exact


def _feature_layers(arch: str, model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The feature part of a torchvision classifier as ``(attribute path, module)`` in run order."""
    if arch.startswith("resnet"):
        return [(name, getattr(model, name)) for name in _RESNET_LAYERS]
    features = model.features
    assert isinstance(features, nn.Sequential)
    return [(f"features.{i}", layer) for i, layer in enumerate(features)]


def _init_like_torchvision(module: nn.Module) -> None:
    """Initialise ``module`` the way torchvision's ResNet, MobileNetV3 and VGG constructors do.

    Convolutions: Kaiming normal (fan out, ReLU gain), zero bias. Batch norms: weight 1, bias 0,
    fresh running statistics. Linear layers: normal(0, 0.01), zero bias.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def pretrained_cache_path(arch: str) -> tuple[Path, str]:
    """Where torchvision looks for the default ImageNet weights of ``arch``: ``(file in the torch hub cache,
    URL)`` (:func:`lstmdet.pretrained.weights_file`)."""
    return weights_file(arch)


def load_pretrained_state(arch: str) -> dict[str, Tensor]:
    """The default ImageNet state dict of the torchvision classifier ``arch`` (hub cache, else download).

    Raises:
        LstmdetError: Missing and not downloadable, or unreadable; the message names the cache path and
            the URL (:func:`lstmdet.pretrained.hub_state_dict`).
    """
    return hub_state_dict(arch, f"the pretrained weights of backbone {arch!r}", ", or set pretrained: false")


class TorchvisionBackbone(nn.Module):
    """Feature part of a torchvision classifier, returning the maps named in ``levels``.

    Args:
        arch: One of :data:`ARCHITECTURES`.
        levels: Feature maps to return, named ``cK`` for stride ``2**K`` (see the module
            docstring); default ``["c3", "c4", "c5"]``. They are returned in order of stride.
        pretrained: Load torchvision's default ImageNet weights (from the torch hub cache, or
            downloaded). Otherwise initialise like torchvision does.
        frozen: Freeze every parameter and keep batch-norm layers in eval mode (fixed statistics).

    Attributes:
        feature_info: One :class:`FeatureInfo` per returned map, in output order.
        arch: The torchvision model name.

    Shapes:
        ``forward``: images ``(B, 3, H, W)`` -> ``{name: (B, C, ceil(H/s), ceil(W/s))}``.

    Raises:
        ValueError: Unknown architecture or level name (the message lists the available ones).
        LstmdetError: ``pretrained`` is set and the weights cannot be found or downloaded.
    """

    def __init__(
        self,
        arch: str,
        levels: Sequence[str] | str | None = None,
        pretrained: bool = False,
        frozen: bool = False,
    ) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown torchvision backbone {arch!r}; available: {', '.join(ARCHITECTURES)}")
        wanted = parse_levels(levels, "levels", f"{arch} backbone", default=DEFAULT_LEVELS)
        self.arch = arch
        self.frozen = bool(frozen)

        # Build on the meta device: no memory, no init cost (VGG16's classifier alone is 120M params).
        with torch.device("meta"):
            model = tvm.get_model(arch)
        layers = _feature_layers(arch, model)
        if arch.startswith("vgg"):
            for _, layer in layers:
                if isinstance(layer, nn.MaxPool2d):
                    layer.ceil_mode = True  # maps are ceil(H / stride) for every input size

        available = self._probe(layers)  # level name -> (layer index, channels, stride)
        unknown = [name for name in wanted if name not in available]
        if unknown:
            raise ValueError(f"backbone {arch!r} has no level(s) {unknown}; available levels: {', '.join(available)}")
        chosen = sorted(wanted, key=lambda name: available[name][0])
        self.feature_info = [FeatureInfo(n, available[n][1], available[n][2]) for n in chosen]
        self._outputs = {available[n][0]: n for n in chosen}
        depth = max(self._outputs) + 1

        self._paths = [path for path, _ in layers[:depth]]
        for path, layer in layers[:depth]:
            parent, _, child = path.rpartition(".")
            owner: nn.Module = self
            if parent:
                if not hasattr(self, parent):
                    self.add_module(parent, nn.Sequential())
                owner = getattr(self, parent)
            owner.add_module(child, layer)
        self.to_empty(device="cpu")

        if pretrained:
            self._load_pretrained()
        else:
            _init_like_torchvision(self)
        if self.frozen:
            self.requires_grad_(False)
        self.train()

    @staticmethod
    def _probe(layers: list[tuple[str, nn.Module]]) -> dict[str, tuple[int, int, int]]:
        """Find each ``cK`` level's layer index, channels and stride with a meta-device dummy image."""
        found: dict[int, tuple[int, int, int]] = {}  # stride -> (layer index, channels, stride)
        x = torch.empty(1, 3, _PROBE_SIZE, _PROBE_SIZE, device="meta")
        with torch.no_grad():
            for index, (_, layer) in enumerate(layers):
                was_training = layer.training
                layer.eval()
                x = layer(x)
                layer.train(was_training)
                stride = _PROBE_SIZE // x.shape[-2]
                if x.shape[-2] * stride == _PROBE_SIZE and stride > 1 and stride & (stride - 1) == 0:
                    found[stride] = (index, int(x.shape[1]), stride)
        return {level_name(stride): found[stride] for stride in sorted(found)}

    def _load_pretrained(self) -> None:
        state = load_pretrained_state(self.arch)
        path, _ = pretrained_cache_path(self.arch)
        try:
            missing, _unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatch
            raise LstmdetError(
                f"the pretrained weights in {path} do not fit backbone {self.arch!r}: {exc}. "
                "Replace the file with torchvision's original one or set pretrained: false"
            ) from exc
        if missing:
            raise LstmdetError(
                f"the pretrained weights in {path} lack {len(missing)} tensor(s) of backbone "
                f"{self.arch!r} (first: {missing[0]}). Replace the file with torchvision's original one "
                "or set pretrained: false"
            )

    def train(self, mode: bool = True) -> TorchvisionBackbone:
        """Set training mode; batch norms of a ``frozen`` backbone stay in eval mode."""
        super().train(mode)
        if getattr(self, "frozen", False):
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Compute the requested feature maps.

        Args:
            images: ``(B, 3, H, W)`` normalised images.

        Returns:
            ``{name: (B, C, ceil(H/stride), ceil(W/stride))}`` in the order of ``feature_info``.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"backbone {self.arch!r} expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        out: dict[str, Tensor] = {}
        x = images
        for index, path in enumerate(self._paths):
            x = self.get_submodule(path)(x)
            name = self._outputs.get(index)
            if name is not None:
                out[name] = x
        return out

    def extra_repr(self) -> str:
        levels = ", ".join(f"{f.name}: {f.channels}ch/{f.stride}" for f in self.feature_info)
        return f"arch={self.arch}, levels=[{levels}], frozen={self.frozen}"


def _factory(arch: str) -> Callable[..., TorchvisionBackbone]:
    """A registry factory for ``arch`` whose signature lists exactly the user options."""

    def factory(
        levels: Sequence[str] | str | None = None, pretrained: bool = False, frozen: bool = False
    ) -> TorchvisionBackbone:
        return TorchvisionBackbone(arch, levels=levels, pretrained=pretrained, frozen=frozen)

    factory.__name__ = factory.__qualname__ = arch
    factory.__doc__ = (
        f"torchvision ``{arch}`` backbone; see :class:`TorchvisionBackbone` for ``levels``, "
        "``pretrained`` and ``frozen``."
    )
    return factory


@hookimpl
def lstmdet_register_backbones(registry: Registrar) -> None:
    """Register the torchvision backbones under their torchvision names."""
    for arch in ARCHITECTURES:
        registry.add(arch, _factory(arch))
