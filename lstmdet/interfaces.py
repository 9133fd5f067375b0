"""Contracts of the three model parts: backbone, sequence encoder, head.

These are :class:`typing.Protocol` classes: a plugin does not inherit from them, it only has to
provide the attributes and ``forward`` behaviour described here. ``tests/unit/test_contracts.py``
checks every registered component against them.

Shapes use ``B`` batch, ``T`` time steps (frames; 1 for still images), ``N = B*T`` frames, ``C``
channels, ``H, W`` image or feature-map height and width.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: `import lstmdet` (e.g. by the job client) does not load torch
    from torch import Tensor
    from torchvision.models.detection.image_list import ImageList


class FeatureInfo(NamedTuple):
    """One feature map a backbone returns.

    Attributes:
        name: Key of the map in the backbone's output dict (e.g. ``"c5"``).
        channels: Number of channels ``C`` of the map.
        stride: Ratio between the input height and the map height (the map is
            ``ceil(H / stride)`` high).
    """

    name: str
    channels: int
    stride: int


@runtime_checkable
class Backbone(Protocol):
    """Images to named feature maps.

    ``forward(images)`` takes ``(N, 3, H, W)`` normalised images and returns a ``dict`` with one
    ``(N, C_i, ceil(H/s_i), ceil(W/s_i))`` tensor per entry of ``feature_info``, in that order.

    Optional: an ``input_width: int`` attribute says the backbone takes images of exactly that width
    (e.g. ``rows``); model assembly then checks that ``model.input`` resizes images to it.
    """

    feature_info: list[FeatureInfo]

    def __call__(self, images: Tensor) -> dict[str, Tensor]: ...


@runtime_checkable
class SequenceEncoder(Protocol):
    """Feature-map sequences to feature-map sequences of ``out_channels`` channels.

    ``forward(x, state=None)`` takes ``x`` of shape ``(B, T, C, H, W)`` and returns ``(y, state)``
    with ``y`` of shape ``(B, T, out_channels, H, W)``. Feeding a clip in pieces, passing each
    call's returned ``state`` to the next, must equal feeding it whole.
    """

    out_channels: int

    def __call__(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]: ...


@runtime_checkable
class Head(Protocol):
    """Feature maps to losses (training) or predictions (inference).

    ``forward(features, images, targets=None)``:

    * ``features``: ordered ``dict`` of ``(N, C, h, w)`` maps, all with the head's ``in_channels``.
    * ``images``: the batch as torchvision's ``ImageList``: ``images.tensors`` ``(N, 3, H, W)``
      (padded) and ``images.image_sizes`` (each image's size before padding).
    * ``targets``: given in training, one dict per image: ``labels`` (``()`` int64 for
      classification, ``(M,)`` for detection) and for detection ``boxes`` ``(M, 4)`` xyxy pixels in
      the frame of ``images``.

    Returns a dict of scalar losses when ``targets`` is given. Otherwise one dict per image:
    detection heads give ``boxes`` ``(K, 4)`` xyxy in the frame of ``images.image_sizes``,
    ``scores`` ``(K,)`` and ``labels`` ``(K,)``; classification heads give ``scores`` ``(num_classes,)``
    (probabilities) and ``labels`` ``()`` (the arg-max).
    """

    task: str

    def __call__(
        self, features: dict[str, Tensor], images: ImageList, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]: ...
