"""Small building blocks that several components share (one home each)."""

from __future__ import annotations

from torch import nn

#: Values of the recurrent encoders' ``init`` option: PyTorch's initialisation, or start as the identity.
ENCODER_INITS: tuple[str, ...] = ("default", "identity")


def zero_projection(in_features: int, out_channels: int) -> nn.Conv2d:
    """A 1x1 convolution from ``in_features`` to ``out_channels`` whose weights and bias start at zero.

    An encoder that returns ``x + proj(y)`` with it returns ``x`` until trained (``init: identity``):
    inserting it into a pretrained detector changes nothing at first, and the gradient reaches
    ``proj`` from the first step (then the encoder behind it).

    Shapes:
        ``(N, in_features, H, W)`` -> ``(N, out_channels, H, W)``.
    """
    conv = nn.Conv2d(in_features, out_channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv
