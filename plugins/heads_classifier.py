"""Built-in classification head: ``classifier`` (pool one feature level, dropout, linear).

The head takes the ordered feature dict that the sequence encoder returns, picks one level (the last
one unless ``level`` names another), pools it over ``(h, w)`` and maps the pooled vector to class
logits. With ``pool="last"`` the pooled vector is the feature at the last spatial position
``(h - 1, w - 1)``: after a top-to-bottom, left-to-right LSTM sweep that is the final step, the one
that has seen the whole image.

Padding: when the batch ``ImageList`` is padded (an image smaller than ``images.tensors``), pooling
only looks at the part of the map that covers the image itself, so a padded batch gives the same
result as each image on its own (up to what the backbone and encoder see of the padding).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from lstmdet import hookimpl
from lstmdet.errors import AssemblyError
from lstmdet.options import check_choice, check_float, check_int

if TYPE_CHECKING:
    from lstmdet.registry import Registrar

POOLS: tuple[str, ...] = ("mean", "max", "last")


class ClassifierHead(nn.Module):
    """Pooling + dropout + linear classifier over one feature level.

    Args:
        in_channels: Channels ``C`` of the feature maps.
        num_classes: Number of classes ``K``.
        pool: How to pool a ``(C, h, w)`` map to a ``(C,)`` vector: ``"mean"``, ``"max"`` or
            ``"last"`` (the feature at ``(h - 1, w - 1)``).
        dropout: Dropout probability applied to the pooled vector, in ``[0, 1)``.
        level: Key of the feature level to use; ``None`` uses the last key of the features dict.

    Raises:
        ValueError: An option is out of range; the message says which values are allowed.
    """

    task = "classify"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        pool: str = "mean",
        dropout: float = 0.0,
        level: str | None = None,
    ) -> None:
        super().__init__()
        owner = "classifier head"
        check_int(in_channels, "in_channels", owner, minimum=1)
        check_int(num_classes, "num_classes", owner, minimum=1)
        check_choice(pool, "pool", owner, choices=POOLS)
        check_float(dropout, "dropout", owner, low=0.0, high=1.0, high_open=True)
        if level is not None and (not isinstance(level, str) or not level):
            raise ValueError(
                f"classifier head: level must be the name of a feature level (a string) or None, got {level!r}"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.pool = pool
        self.level = level
        self.dropout = nn.Dropout(float(dropout))
        self.fc = nn.Linear(in_channels, num_classes)

    def extra_repr(self) -> str:
        return f"pool={self.pool!r}, level={self.level!r}"

    def select(self, features: dict[str, Tensor]) -> Tensor:
        """Return the feature level this head classifies from.

        Args:
            features: Ordered dict of ``(N, C, h, w)`` maps.

        Returns:
            The selected ``(N, C, h, w)`` map.

        Raises:
            AssemblyError: ``features`` is empty, lacks ``level``, or the map does not have
                ``in_channels`` channels.
        """
        if not features:
            raise AssemblyError("classifier head received no feature maps; the encoder returned an empty dict")
        name = self.level if self.level is not None else next(reversed(features))
        if name not in features:
            raise AssemblyError(
                f"classifier head: level {name!r} is not among the feature levels {list(features)}; "
                "set the head's level option to one of them (or leave it unset for the last level)"
            )
        x = features[name]
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise AssemblyError(
                f"classifier head expects level {name!r} of shape (N, {self.in_channels}, h, w), got "
                f"{tuple(x.shape)}; build the head with in_channels equal to the encoder's out_channels"
            )
        return x

    def pooled(self, x: Tensor, images: ImageList | None = None) -> Tensor:
        """Pool a feature map over its spatial dimensions.

        Args:
            x: ``(N, C, h, w)`` feature map.
            images: The batch, used only to ignore the padded part of the map; ``None`` pools the
                whole map.

        Returns:
            ``(N, C)`` pooled features.
        """
        valid = _valid_extent(x, images)
        if valid is None:  # every image fills the map: plain pooling
            if self.pool == "mean":
                return x.mean(dim=(2, 3))
            if self.pool == "max":
                return x.amax(dim=(2, 3))
            return x[:, :, -1, -1]
        vh, vw = valid  # (N,) valid rows / columns per image
        if self.pool == "last":
            rows = torch.arange(x.shape[0], device=x.device)
            return x[rows, :, vh - 1, vw - 1]
        h_ok = torch.arange(x.shape[2], device=x.device)[None, :] < vh[:, None]  # (N, h)
        w_ok = torch.arange(x.shape[3], device=x.device)[None, :] < vw[:, None]  # (N, w)
        mask = (h_ok[:, :, None] & w_ok[:, None, :])[:, None]  # (N, 1, h, w)
        if self.pool == "max":
            return x.masked_fill(~mask, float("-inf")).amax(dim=(2, 3))
        count = (vh * vw).to(x.dtype)[:, None]  # (N, 1)
        return (x * mask).sum(dim=(2, 3)) / count

    def logits(self, features: dict[str, Tensor], images: ImageList | None = None) -> Tensor:
        """Class logits.

        Args:
            features: Ordered dict of ``(N, C, h, w)`` maps.
            images: Optional batch; when given, the padded part of the maps is left out of pooling.

        Returns:
            ``(N, num_classes)`` logits.
        """
        x = self.pooled(self.select(features), images)
        return self.fc(self.dropout(x))

    def forward(
        self,
        features: dict[str, Tensor],
        images: ImageList | None = None,
        targets: list[dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (with ``targets``) or per-image predictions (without).

        Args:
            features: Ordered dict of ``(N, C, h, w)`` maps.
            images: The batch (``images.tensors`` ``(N, 3, H, W)``); may be ``None`` when the batch
                is not padded.
            targets: One dict per image with ``labels``, an int64 scalar (shape ``()`` or ``(1,)``).

        Returns:
            With targets: ``{"loss_cls": ()}`` mean cross-entropy. Without: one dict per image with
            ``scores`` ``(num_classes,)`` softmax probabilities and ``labels`` ``()`` the arg-max.

        Raises:
            ValueError: ``targets`` has the wrong length or a label outside ``[0, num_classes)``.
        """
        logits = self.logits(features, images)
        if targets is not None:
            return {"loss_cls": F.cross_entropy(logits, self._labels(targets, logits))}
        probs = logits.softmax(dim=1)
        labels = probs.argmax(dim=1)
        return [{"scores": p, "labels": lab} for p, lab in zip(probs, labels, strict=True)]

    def _labels(self, targets: list[dict[str, Tensor]], logits: Tensor) -> Tensor:
        if len(targets) != logits.shape[0]:
            raise ValueError(
                f"classifier head got {len(targets)} targets for a batch of {logits.shape[0]} images; "
                "give one target dict per image"
            )
        try:
            labels = torch.stack([torch.as_tensor(t["labels"]).reshape(()) for t in targets])
        except KeyError:
            raise ValueError("classifier head: every target dict needs a 'labels' entry") from None
        except RuntimeError as exc:
            raise ValueError(f"classifier head: each target 'labels' must be one integer ({exc})") from None
        labels = labels.to(device=logits.device, dtype=torch.int64)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"classifier head: labels must lie in [0, {self.num_classes}); got "
                f"{sorted(set(labels.tolist()))}; check num_classes against the dataset's classes"
            )
        return labels


def _valid_extent(x: Tensor, images: ImageList | None) -> tuple[Tensor, Tensor] | None:
    """Rows and columns of ``x`` that cover each image (``None`` when every image fills the map).

    Args:
        x: ``(N, C, h, w)`` feature map.
        images: Batch with ``tensors`` ``(N, 3, H, W)`` and ``image_sizes``.

    Returns:
        ``(vh, vw)``, two ``(N,)`` int64 tensors with ``1 <= vh <= h`` and ``1 <= vw <= w``, or
        ``None``.
    """
    if images is None:
        return None
    big_h, big_w = images.tensors.shape[-2:]
    h, w = x.shape[-2:]
    sizes = list(images.image_sizes)
    if len(sizes) != x.shape[0]:
        raise AssemblyError(f"classifier head: {len(sizes)} image sizes for a batch of {x.shape[0]} feature maps")
    if all(int(ih) == big_h and int(iw) == big_w for ih, iw in sizes):
        return None
    vh = [min(h, max(1, math.ceil(int(ih) * h / big_h))) for ih, _ in sizes]
    vw = [min(w, max(1, math.ceil(int(iw) * w / big_w))) for _, iw in sizes]
    return (
        torch.tensor(vh, dtype=torch.int64, device=x.device),
        torch.tensor(vw, dtype=torch.int64, device=x.device),
    )


@hookimpl
def lstmdet_register_heads(registry: Registrar) -> None:
    """Register the ``classifier`` head."""
    registry.add("classifier", ClassifierHead)
