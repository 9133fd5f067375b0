"""Built-in backbones for small images: ``small_cnn`` and ``rows``.

* ``small_cnn``: a few stride-2 stages of two 3x3 convolutions each, for images such as MNIST
  digits or the synthetic ``digits_det`` scenes; trained from scratch in seconds.
* ``rows``: no convolution and no parameters. Each image row becomes one position of a ``(H, 1)``
  feature map whose channel vector is that row's pixels, so ``rows`` + ``lstm`` + ``classifier``
  is the classic row-by-row LSTM on MNIST (28 steps of 28 pixels).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import Tensor, nn

from lstmdet import FeatureInfo, hookimpl
from lstmdet.levels import level_name, parse_levels
from lstmdet.options import check_int, check_list, is_int

if TYPE_CHECKING:
    from lstmdet.registry import Registrar


def _check_images(images: Tensor, channels: tuple[int, ...], who: str) -> None:
    if images.dim() != 4 or images.shape[1] not in channels:
        allowed = " or ".join(str(c) for c in channels)
        raise ValueError(
            f"backbone {who!r} expects images of shape (B, C, H, W) with C = {allowed}, got {tuple(images.shape)}"
        )


class SmallCNN(nn.Module):
    """A small plain CNN: stage ``i`` halves the resolution and has ``widths[i]`` channels.

    Stage ``i`` is conv3x3 (stride 2) + BatchNorm + ReLU + conv3x3 + BatchNorm + ReLU, so level
    ``c{i+1}`` has stride ``2**(i+1)`` and ``widths[i]`` channels. Stages deeper than the deepest
    requested level are not built.

    Args:
        widths: Channels of each stage (non-empty list of positive ints).
        levels: Feature maps to return (``"c1"`` .. ``f"c{len(widths)}"``), returned in order of
            stride; default: the last level only.
        image_channels: Channels of the input images (3 for RGB).

    Attributes:
        feature_info: One :class:`FeatureInfo` per returned map, in output order.

    Shapes:
        ``forward``: images ``(B, image_channels, H, W)`` -> ``{name: (B, C, ceil(H/s), ceil(W/s))}``.

    Raises:
        ValueError: Invalid ``widths``, ``image_channels`` or an unknown level name.
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128),
        levels: Sequence[str] | str | None = None,
        image_channels: int = 3,
    ) -> None:
        super().__init__()
        owner = "small_cnn backbone"
        of = "positive integers such as [32, 64, 128]"
        widths = check_list(widths, "widths", owner, of=of, item=lambda w: is_int(w, minimum=1))
        check_int(image_channels, "image_channels", owner, minimum=1)
        available = [level_name(2 ** (i + 1)) for i in range(len(widths))]
        wanted = parse_levels(levels, "levels", owner, default=available[-1:])
        unknown = [name for name in wanted if name not in available]
        if unknown:
            raise ValueError(
                f"small_cnn with widths {list(widths)} has no level(s) {unknown}; "
                f"available levels: {', '.join(available)} (add widths for deeper levels)"
            )

        self.image_channels = image_channels
        chosen = sorted(wanted, key=available.index)
        self.feature_info = [FeatureInfo(n, widths[available.index(n)], 2 ** (available.index(n) + 1)) for n in chosen]
        self._outputs = {available.index(n): n for n in chosen}
        depth = max(self._outputs) + 1
        stages = []
        c_in = image_channels
        for c_out in widths[:depth]:
            stages.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                )
            )
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Compute the requested feature maps.

        Args:
            images: ``(B, image_channels, H, W)``.

        Returns:
            ``{name: (B, C, ceil(H/stride), ceil(W/stride))}`` in the order of ``feature_info``.
        """
        _check_images(images, (self.image_channels,), "small_cnn")
        out: dict[str, Tensor] = {}
        x = images
        for index, stage in enumerate(self.stages):
            x = stage(x)
            name = self._outputs.get(index)
            if name is not None:
                out[name] = x
        return out


class RowsBackbone(nn.Module):
    """Each image row is one step: ``(B, 3, H, W)`` -> one map ``rows`` of shape ``(B, C*W, H, 1)``.

    No convolution and no parameters. The channel vector at position ``(h, 0)`` is row ``h`` of
    the image flattened channel-major (``[c0 w0..wW-1, c1 w0..., ...]``). With ``grayscale`` the
    three RGB channels are averaged first (``C = 1``); a one-channel input is taken as is.

    Args:
        width: Expected image width ``W``; the number of values per step is ``C * width``.
        grayscale: Average RGB to one channel (``C = 1``); otherwise keep three (``C = 3``).

    Attributes:
        feature_info: ``[FeatureInfo("rows", C * width, 1)]``.
        input_width: ``width``: model assembly checks that ``model.input`` resizes images to it.

    Shapes:
        ``forward``: images ``(B, 3, H, width)`` (or ``(B, 1, H, width)`` with ``grayscale``)
        -> ``{"rows": (B, C * width, H, 1)}``.

    Raises:
        ValueError: ``width`` is not a positive int; at run time, images of another width.
    """

    def __init__(self, width: int = 28, grayscale: bool = True) -> None:
        super().__init__()
        check_int(width, "width", "rows backbone", minimum=1, hint="it is the image width in pixels")
        self.width = self.input_width = width
        self.grayscale = bool(grayscale)
        channels = 1 if self.grayscale else 3
        self.feature_info = [FeatureInfo("rows", channels * width, 1)]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Turn every image row into one feature vector.

        Args:
            images: ``(B, 3, H, width)`` (``(B, 1, H, width)`` also accepted with ``grayscale``).

        Returns:
            ``{"rows": (B, C * width, H, 1)}`` with ``out[b, c * width + w, h, 0] == x[b, c, h, w]``,
            where ``x`` is the (grayscale-converted) input.
        """
        _check_images(images, (1, 3) if self.grayscale else (3,), "rows")
        if images.shape[-1] != self.width:
            raise ValueError(
                f"backbone 'rows' got images {images.shape[-1]} pixels wide but is configured for width "
                f"{self.width}; resize the images to width {self.width} or set the backbone's width option "
                f"to {images.shape[-1]}"
            )
        x = images.mean(dim=1, keepdim=True) if self.grayscale and images.shape[1] == 3 else images
        b, c, h, w = x.shape
        return {"rows": x.transpose(2, 3).reshape(b, c * w, h, 1)}

    def extra_repr(self) -> str:
        return f"width={self.width}, grayscale={self.grayscale}"


@hookimpl
def lstmdet_register_backbones(registry: Registrar) -> None:
    """Register ``small_cnn`` and ``rows``."""
    registry.add("small_cnn", SmallCNN)
    registry.add("rows", RowsBackbone)
