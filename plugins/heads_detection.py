"""Built-in detection heads ``fcos`` and ``retinanet``, built on torchvision's detection models.

Both heads subclass torchvision's :class:`~torchvision.models.detection.FCOS` /
:class:`~torchvision.models.detection.RetinaNet` *without* running their constructors (no backbone,
no transform, no anchor generator is built). They set only what the inherited
``compute_loss`` and ``postprocess_detections`` use, so matching (FCOS centre sampling and scale
ranges, RetinaNet IoU ``Matcher``), losses (sigmoid focal, GIoU / L1, centre-ness), box coding
(``BoxLinearCoder`` / ``BoxCoder``), score filtering, top-k, clipping and ``batched_nms`` are
torchvision's own code. What lstmdet adds is the :class:`lstmdet.interfaces.Head` ``forward``:

* ``features`` (ordered dict) become the list of levels torchvision's heads expect;
* the head is told the name, channels and stride of every level it reads when it is built
  (``feature_info``, as detectron2 passes ``ShapeSpec``s; model assembly passes the backbone's),
  and never guesses a stride from map sizes. One
  :class:`~torchvision.models.detection.anchor_utils.AnchorGenerator` is built for those strides and
  its ``grid_anchors`` is called with them (its own ``forward`` would use ``H // h``, which is wrong
  when ``H`` is not a multiple of the stride);
* detections are returned in the frame of ``images`` (boxes clipped to ``images.image_sizes``);
  there is no resize back to original image sizes here: the model does that.

Class labels are ``0 .. num_classes - 1``; there is no background class (both heads use one sigmoid
per class).

Normalisation in the conv towers (``norm``): torchvision's FCOS head always uses
``GroupNorm(32, C)``, which needs ``C`` divisible by 32; with ``norm="group"`` and any other ``C``
the head raises ``ValueError`` (rather than silently picking another group count, which would no
longer be torchvision's head). ``norm="batch"`` (``BatchNorm2d``) and ``norm="none"`` work for any
``C``; they are passed as ``norm_layer`` to torchvision's sub-heads. RetinaNet's default is
``norm="none"``, torchvision's original (v1) head; ``"group"`` is the v2 head.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops.misc import Conv2dNormActivation

from lstmdet import FeatureInfo, hookimpl
from lstmdet.errors import AssemblyError
from lstmdet.options import check_bool, check_choice, check_float, check_int, check_list, is_number

if TYPE_CHECKING:
    from lstmdet.registry import Registrar

NORMS: tuple[str, ...] = ("group", "batch", "none")


# --------------------------------------------------------------------------------------------------
# option checks
# --------------------------------------------------------------------------------------------------


#: Values of the heads' ``anchor_steps`` option.
ANCHOR_STEPS = ("stride", "grid")


def _norm_layer(head: str, norm: str, channels: int) -> Callable[..., nn.Module] | None:
    """Map the ``norm`` option to a torchvision ``norm_layer`` (``None`` means no normalisation)."""
    check_choice(norm, "norm", f"{head} head", choices=NORMS)
    if norm == "group":
        if channels % 32:
            raise ValueError(
                f"{head} head: norm='group' uses torchvision's GroupNorm(32, C), which needs in_channels "
                f"divisible by 32, got in_channels={channels}; give the encoder a multiple of 32 output "
                "channels, or set the head option norm to 'batch' or 'none'"
            )
        return partial(nn.GroupNorm, 32)
    if norm == "batch":
        return nn.BatchNorm2d
    return None


def _check_offsets(head: str, offsets: object) -> tuple[tuple[float, float], ...]:
    """``offsets`` as a tuple of ``(dx, dy)`` float pairs, each in ``[0, 1)``, without repeats."""
    hint = "give a list of [dx, dy] pairs in units of the stride, each in [0, 1), e.g. [[0, 0], [0.5, 0]]"
    if isinstance(offsets, (str, bytes)) or not isinstance(offsets, Sequence) or not offsets:
        raise ValueError(f"{head} head: anchor_offsets must be a non-empty list; {hint}; got {offsets!r}")
    pairs = []
    for pair in offsets:
        ok = isinstance(pair, Sequence) and not isinstance(pair, (str, bytes)) and len(pair) == 2
        ok = ok and all(is_number(v, low=0.0, high=1.0, high_open=True) for v in pair)
        if not ok:
            raise ValueError(f"{head} head: anchor_offsets has {pair!r}; {hint}")
        pairs.append((float(pair[0]), float(pair[1])))
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"{head} head: anchor_offsets repeats a point ({offsets!r}); {hint}")
    return tuple(pairs)


# --------------------------------------------------------------------------------------------------
# shared forward
# --------------------------------------------------------------------------------------------------


def check_feature_info(owner: str, feature_info: object, in_channels: int) -> tuple[FeatureInfo, ...]:
    """The levels a detection head reads, validated: ``FeatureInfo(name, channels, stride)`` each.

    Raises:
        ValueError: Missing, empty, or a level whose channels are not ``in_channels``, whose stride is
            not a positive int, or whose name repeats; the message says what to pass.
    """
    hint = (
        "pass feature_info=[FeatureInfo(name, channels, stride), ...] for the levels the head reads, in order "
        "(lstmdet's model assembly passes the backbone's)"
    )
    if not isinstance(feature_info, Sequence) or isinstance(feature_info, str) or not feature_info:
        raise ValueError(f"{owner} needs the feature levels it reads: {hint}")
    levels = []
    for item in feature_info:
        if not isinstance(item, tuple) or len(item) != 3:
            raise ValueError(f"{owner}: feature_info entry {item!r} is not (name, channels, stride); {hint}")
        level = FeatureInfo(*item)
        if not isinstance(level.name, str) or not level.name:
            raise ValueError(f"{owner}: feature_info names must be non-empty strings, got {level.name!r}")
        check_int(level.stride, f"feature_info stride of level {level.name!r}", owner, minimum=1)
        if level.channels != in_channels:
            raise ValueError(
                f"{owner}: level {level.name!r} has {level.channels} channels but the head was built with "
                f"in_channels={in_channels}; every level must have in_channels channels"
            )
        levels.append(level)
    names = [level.name for level in levels]
    if len(set(names)) != len(names):
        raise ValueError(f"{owner}: feature_info names repeat: {names}")
    return tuple(levels)


class _HeadForward(abc.ABC):
    """The lstmdet ``Head`` protocol on top of a torchvision one-stage detector.

    Subclasses set ``head``, ``in_channels``, ``num_classes``, ``num_anchors``, ``feature_info`` and
    implement ``_make_anchor_generator`` and ``_losses``; ``postprocess_detections`` comes from
    torchvision.
    """

    task = "detect"
    head: nn.Module
    in_channels: int
    num_classes: int
    num_anchors: int
    feature_info: tuple[FeatureInfo, ...]
    _anchor_generators: dict[tuple[int, ...], AnchorGenerator]
    _name: str

    def forward(
        self,
        features: dict[str, Tensor],
        images: ImageList,
        targets: list[dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (with ``targets``) or detections (without).

        Args:
            features: Ordered dict of ``(N, C, h_i, w_i)`` maps, ``C == in_channels``: the levels of
                ``feature_info``, in that order (``h_i = ceil(H / stride_i)``).
            images: ``images.tensors`` ``(N, 3, H, W)`` (padded) and ``images.image_sizes``.
            targets: One dict per image: ``boxes`` ``(M, 4)`` xyxy pixels in the frame of
                ``images`` and ``labels`` ``(M,)`` int64 in ``[0, num_classes)``; ``M`` may be 0.

        Returns:
            With targets: torchvision's loss dict of scalars (FCOS: ``classification``,
            ``bbox_regression``, ``bbox_ctrness``; RetinaNet: ``classification``,
            ``bbox_regression``). Without: one dict per image with ``boxes`` ``(K, 4)`` xyxy inside
            that image's ``image_sizes``, ``scores`` ``(K,)`` and ``labels`` ``(K,)`` int64,
            best first.

        Raises:
            AssemblyError: Levels other than ``feature_info``'s, or a level with the wrong channel
                count or batch size.
            ValueError: Malformed targets (count, shapes, labels out of range, empty-area boxes).
        """
        levels = self._levels(features, images)
        head_outputs = self.head(levels)
        anchors = self._anchors(levels, images)
        per_level = [x.shape[-2] * x.shape[-1] * self.num_anchors for x in levels]
        if targets is not None:
            checked = self._checked_targets(targets, levels[0].shape[0], levels[0].device)
            return self._losses(checked, head_outputs, anchors, per_level)
        split_outputs = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(per_level)) for a in anchors]
        sizes = [(int(h), int(w)) for h, w in images.image_sizes]
        return self.postprocess_detections(split_outputs, split_anchors, sizes)  # type: ignore[attr-defined]

    # -- pieces ------------------------------------------------------------------------------------

    def _levels(self, features: dict[str, Tensor], images: ImageList) -> list[Tensor]:
        if not features:
            raise AssemblyError(f"{self._name} head received no feature maps; the encoder returned an empty dict")
        expected = [level.name for level in self.feature_info]
        if list(features) != expected:
            raise AssemblyError(
                f"{self._name} head was built for levels {expected} (feature_info) but received {list(features)}; "
                "build it with the feature_info of the levels it is given"
            )
        n = images.tensors.shape[0]
        if len(images.image_sizes) != n:
            raise AssemblyError(f"{self._name} head: images has {len(images.image_sizes)} image_sizes for {n} images")
        for name, x in features.items():
            if x.dim() != 4 or x.shape[0] != n or x.shape[1] != self.in_channels:
                raise AssemblyError(
                    f"{self._name} head expects every level as (N={n}, C={self.in_channels}, h, w); level "
                    f"{name!r} is {tuple(x.shape)}; build the head with in_channels equal to the encoder's "
                    "out_channels"
                )
        return list(features.values())

    def _anchors(self, levels: list[Tensor], images: ImageList) -> list[Tensor]:
        """Anchors ``(A_total, 4)`` xyxy, one (shared) tensor per image."""
        strides = tuple(level.stride for level in self.feature_info)
        generator = self._anchor_generators.get(strides)  # a dict, not an attribute: no submodule
        if generator is None:
            generator = self._anchor_generators[strides] = self._make_anchor_generator(strides)
        x0 = levels[0]
        # The cached cells stay float32 (fp16 features under autocast would round them in place).
        generator.set_cell_anchors(torch.float32, x0.device)
        grid_sizes = [list(x.shape[-2:]) for x in levels]
        if self.anchor_steps == "grid":  # torchvision's: padded image size // map size, per level and axis
            height, width = images.tensors.shape[-2:]
            step = [[torch.tensor(height // g[0], device=x0.device), torch.tensor(width // g[1], device=x0.device)]
                    for g in grid_sizes]  # fmt: skip
        else:
            step = [[torch.tensor(s, dtype=torch.int64, device=x0.device)] * 2 for s in strides]
        anchors = torch.cat(generator.grid_anchors(grid_sizes, step)).to(x0.dtype)
        return [anchors] * images.tensors.shape[0]

    def _checked_targets(
        self, targets: list[dict[str, Tensor]], batch: int, device: torch.device
    ) -> list[dict[str, Tensor]]:
        """Copies of ``targets`` on ``device`` (boxes float32, labels int64), after checking them."""
        if len(targets) != batch:
            raise ValueError(
                f"{self._name} head got {len(targets)} targets for a batch of {batch} images; "
                "give one target dict per image (with empty boxes for an image without objects)"
            )
        out = []
        for i, t in enumerate(targets):
            if "boxes" not in t or "labels" not in t:
                raise ValueError(
                    f"{self._name} head: target {i} needs 'boxes' (M, 4) and 'labels' (M,); got keys {sorted(t)}"
                )
            boxes = torch.as_tensor(t["boxes"]).to(device=device, dtype=torch.float32)
            labels = torch.as_tensor(t["labels"]).to(device=device, dtype=torch.int64)
            if boxes.numel() == 0:
                boxes = boxes.reshape(0, 4)
            if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
                raise ValueError(
                    f"{self._name} head: target {i} has boxes {tuple(boxes.shape)} and labels "
                    f"{tuple(labels.shape)}; expected (M, 4) and (M,)"
                )
            out.append({**t, "boxes": boxes, "labels": labels})
        labels = torch.cat([t["labels"] for t in out])
        boxes = torch.cat([t["boxes"] for t in out])
        bad_label = (labels < 0) | (labels >= self.num_classes)
        bad_box = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1) | ~torch.isfinite(boxes).all(dim=1)
        if bool(torch.cat([bad_label, bad_box]).any()):  # one device sync for all checks
            self._raise_bad_targets(out)
        return out

    def _raise_bad_targets(self, targets: list[dict[str, Tensor]]) -> None:
        for i, t in enumerate(targets):
            labels, boxes = t["labels"], t["boxes"]
            bad = (labels < 0) | (labels >= self.num_classes)
            if bool(bad.any()):
                raise ValueError(
                    f"{self._name} head: target {i} has label {int(labels[bad][0])}; labels must lie in "
                    f"[0, {self.num_classes}) (no background class); check num_classes against the dataset"
                )
            bad = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1) | ~torch.isfinite(boxes).all(dim=1)
            if bool(bad.any()):
                raise ValueError(
                    f"{self._name} head: target {i} has box {boxes[bad][0].tolist()}, which is not finite "
                    "or has no area; boxes must be xyxy pixels with x2 > x1 and y2 > y1 (drop empty boxes "
                    "after augmentation)"
                )

    @abc.abstractmethod
    def _make_anchor_generator(self, strides: tuple[int, ...]) -> AnchorGenerator:
        """The anchor generator for feature levels of these strides."""

    @abc.abstractmethod
    def _losses(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        num_anchors_per_level: list[int],
    ) -> dict[str, Tensor]:
        """torchvision's losses of this head for the matched targets."""


# --------------------------------------------------------------------------------------------------
# FCOS
# --------------------------------------------------------------------------------------------------


class FCOSDetectionHead(_HeadForward, FCOS):
    """FCOS head (torchvision's ``FCOSHead``, matching, losses and post-processing).

    Anchor points: by default one per location, at ``(j * stride, i * stride)`` as in torchvision.
    Each anchor point is a square whose side is the level's stride, which FCOS uses for centre
    sampling (radius ``center_sampling_radius * stride``) and to assign boxes to levels (maximum
    regression distance in ``(4 * stride, 8 * stride)``, open-ended on the first and last level).

    FCOS takes a location as a positive only when its anchor point lies strictly inside a box, so a
    box narrower (or flatter) than the stride can fall between two points and be trained as
    background. ``anchor_offsets`` adds points between the locations: ``[[0, 0], [0.5, 0]]`` gives
    each location a second point half a stride to its right (points every ``stride / 2`` in x, so
    every box wider than half a stride holds one; smaller steps cover thinner boxes), and
    the head predicts classes, box and centre-ness separately for each point of a location
    (``num_anchors = len(anchor_offsets)`` outputs per location, as RetinaNet does for anchors).

    Args:
        in_channels: Channels ``C`` of every feature level.
        num_classes: Number of object classes (labels ``0 .. num_classes - 1``).
        feature_info: The levels the head reads, in order: ``FeatureInfo(name, channels, stride)``
            each, with ``channels == in_channels`` (model assembly passes the backbone's; required).
        num_convs: Conv layers in each of the classification and regression towers.
        score_thresh: Minimum score ``sqrt(sigmoid(cls) * sigmoid(ctrness))`` kept at inference.
        nms_thresh: IoU threshold of the per-class NMS.
        detections_per_img: Maximum detections per image after NMS.
        topk_candidates: Candidates kept per level before NMS.
        center_sampling_radius: Centre-sampling radius in units of the level stride.
        norm: Normalisation in the towers: ``"group"`` (torchvision's ``GroupNorm(32, C)``; needs
            ``C`` divisible by 32), ``"batch"`` or ``"none"``.
        anchor_offsets: Anchor points of a location as ``(dx, dy)`` pairs in units of the stride,
            each in ``[0, 1)``, without repeats; ``[[0, 0]]`` is torchvision's FCOS.
        anchor_steps: Distance between anchor points: ``"stride"`` (the level's stride) or ``"grid"``
            (torchvision's: the padded image size divided by the map size, which differs from the
            stride where the image is not a multiple of it, e.g. on P6 and P7).

    Raises:
        ValueError: An option is out of range; the message names it and the allowed values.
    """

    _name = "fcos"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        feature_info: Sequence[FeatureInfo] | None = None,
        num_convs: int = 4,
        score_thresh: float = 0.2,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
        topk_candidates: int = 1000,
        center_sampling_radius: float = 1.5,
        norm: str = "group",
        anchor_offsets: Sequence[Sequence[float]] = ((0.0, 0.0),),
        anchor_steps: str = "stride",
    ) -> None:
        nn.Module.__init__(self)  # torchvision's FCOS.__init__ would build a backbone and transform
        name = self._name
        owner = f"{name} head"
        self.in_channels = check_int(in_channels, "in_channels", owner, minimum=1)
        self.num_classes = check_int(num_classes, "num_classes", owner, minimum=1)
        self.feature_info = check_feature_info(owner, feature_info, self.in_channels)
        num_convs = check_int(num_convs, "num_convs", owner, minimum=0)
        norm_layer = _norm_layer(name, norm, in_channels)
        self.norm = norm
        self.anchor_offsets = _check_offsets(name, anchor_offsets)
        self.anchor_steps = check_choice(anchor_steps, "anchor_steps", owner, choices=ANCHOR_STEPS)
        self.num_anchors = a = len(self.anchor_offsets)
        if norm == "group":
            self.head = FCOSHead(in_channels, a, num_classes, num_convs=num_convs)
        else:  # FCOSHead hard-codes GroupNorm; its sub-heads take norm_layer ("none": identity)
            self.head = FCOSHead(in_channels, a, num_classes, num_convs=0)
            layer = norm_layer if norm_layer is not None else nn.Identity
            self.head.classification_head = FCOSClassificationHead(
                in_channels, a, num_classes, num_convs=num_convs, norm_layer=layer
            )
            self.head.regression_head = FCOSRegressionHead(in_channels, a, num_convs=num_convs, norm_layer=layer)
        self.box_coder = det_utils.BoxLinearCoder(normalize_by_size=True)
        self.center_sampling_radius = check_float(
            center_sampling_radius, "center_sampling_radius", owner, low=0.0, low_open=True
        )
        self.score_thresh = check_float(score_thresh, "score_thresh", owner, low=0.0, high=1.0)
        self.nms_thresh = check_float(nms_thresh, "nms_thresh", owner, low=0.0, high=1.0)
        self.detections_per_img = check_int(detections_per_img, "detections_per_img", owner, minimum=1)
        self.topk_candidates = check_int(topk_candidates, "topk_candidates", owner, minimum=1)
        self._anchor_generators = {}
        self._has_warned = False

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, norm={self.norm!r}, score_thresh={self.score_thresh}, "
            f"nms_thresh={self.nms_thresh}, center_sampling_radius={self.center_sampling_radius}, "
            f"anchor_offsets={[list(o) for o in self.anchor_offsets]}"
        )

    def _make_anchor_generator(self, strides: tuple[int, ...]) -> AnchorGenerator:
        # As torchvision's FCOS default: square anchors, side = the level stride, centred on the
        # location, moved by each offset (offset (0, 0) leaves torchvision's cell as it is). Cells
        # are offset-minor, the order in which the head's outputs come per location.
        # (The generator's sizes still describe one anchor; only its cells, used below, hold A.)
        generator = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
        offsets = torch.tensor(self.anchor_offsets, dtype=torch.float32).repeat(1, 2)  # (A, 4): dx, dy, dx, dy
        generator.cell_anchors = [offsets * s + cell for s, cell in zip(strides, generator.cell_anchors, strict=True)]
        return generator

    def _losses(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        num_anchors_per_level: list[int],
    ) -> dict[str, Tensor]:
        return self.compute_loss(targets, head_outputs, anchors, num_anchors_per_level)


# --------------------------------------------------------------------------------------------------
# RetinaNet
# --------------------------------------------------------------------------------------------------


def _retinanet_tower(channels: int, num_convs: int, norm_layer: Callable[..., nn.Module] | None) -> nn.Sequential:
    """A RetinaNet conv tower of ``num_convs`` layers (torchvision's head hard-codes 4).

    Same layers (``Conv2dNormActivation``) and initialisation (normal, std 0.01; zero bias) as
    torchvision's ``RetinaNetClassificationHead`` / ``RetinaNetRegressionHead``.
    """
    tower = nn.Sequential(*(Conv2dNormActivation(channels, channels, norm_layer=norm_layer) for _ in range(num_convs)))
    for module in tower.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return tower


class RetinaNetDetectionHead(_HeadForward, RetinaNet):
    """RetinaNet head (torchvision's ``RetinaNetHead``, ``Matcher``, losses and post-processing).

    Anchors per level: sizes ``anchor_scale * stride * 2 ** (i / scales_per_octave)`` for
    ``i < scales_per_octave``, each with every aspect ratio (height / width).

    Args:
        in_channels: Channels ``C`` of every feature level.
        num_classes: Number of object classes (labels ``0 .. num_classes - 1``).
        feature_info: The levels the head reads, in order: ``FeatureInfo(name, channels, stride)``
            each, with ``channels == in_channels`` (model assembly passes the backbone's; required).
        num_convs: Conv layers in each of the classification and regression towers.
        anchor_scale: Base anchor size in units of the level stride.
        scales_per_octave: Anchor sizes per level (octave subdivisions).
        aspect_ratios: Anchor aspect ratios (height / width), all positive.
        score_thresh: Minimum sigmoid score kept at inference.
        nms_thresh: IoU threshold of the per-class NMS.
        detections_per_img: Maximum detections per image after NMS.
        topk_candidates: Candidates kept per level before NMS.
        fg_iou_thresh: Anchors with IoU >= this with a box are foreground.
        bg_iou_thresh: Anchors with IoU < this with every box are background (in between: ignored).
        norm: Normalisation in the towers: ``"none"`` (torchvision's v1 head), ``"group"`` (v2 head,
            ``GroupNorm(32, C)``, needs ``C`` divisible by 32) or ``"batch"``.
        anchor_steps: Distance between anchor centres: ``"stride"`` (the level's stride) or
            ``"grid"`` (torchvision's: the padded image size divided by the map size, which differs
            from the stride where the image is not a multiple of it, e.g. on P6 and P7).
        integer_sizes: Round anchor sizes down to whole pixels, as torchvision's COCO RetinaNet
            (32, 40, 50 instead of 32, 40.3, 50.8).

    Raises:
        ValueError: An option is out of range; the message names it and the allowed values.
    """

    _name = "retinanet"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        feature_info: Sequence[FeatureInfo] | None = None,
        num_convs: int = 4,
        anchor_scale: float = 4.0,
        scales_per_octave: int = 3,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        topk_candidates: int = 1000,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.4,
        norm: str = "none",
        anchor_steps: str = "stride",
        integer_sizes: bool = False,
    ) -> None:
        nn.Module.__init__(self)  # torchvision's RetinaNet.__init__ would build a backbone and transform
        name = self._name
        owner = f"{name} head"
        self.in_channels = check_int(in_channels, "in_channels", owner, minimum=1)
        self.num_classes = check_int(num_classes, "num_classes", owner, minimum=1)
        self.feature_info = check_feature_info(owner, feature_info, self.in_channels)
        num_convs = check_int(num_convs, "num_convs", owner, minimum=0)
        self.anchor_scale = check_float(anchor_scale, "anchor_scale", owner, low=0.0, low_open=True)
        self.scales_per_octave = check_int(scales_per_octave, "scales_per_octave", owner, minimum=1)
        self.anchor_steps = check_choice(anchor_steps, "anchor_steps", owner, choices=ANCHOR_STEPS)
        self.integer_sizes = check_bool(integer_sizes, "integer_sizes", owner)
        positive = partial(is_number, low=0.0, low_open=True)
        ratios = check_list(aspect_ratios, "aspect_ratios", owner, of="positive numbers", item=positive)
        self.aspect_ratios = tuple(float(r) for r in ratios)
        fg = check_float(fg_iou_thresh, "fg_iou_thresh", owner, low=0.0, high=1.0, low_open=True)
        bg = check_float(bg_iou_thresh, "bg_iou_thresh", owner, low=0.0, high=1.0)
        if bg > fg:
            raise ValueError(
                f"{name} head: bg_iou_thresh ({bg}) must not exceed fg_iou_thresh ({fg}); anchors between "
                "the two are ignored"
            )
        norm_layer = _norm_layer(name, norm, in_channels)
        self.norm = norm
        self.num_anchors = self.scales_per_octave * len(self.aspect_ratios)
        self.head = RetinaNetHead(in_channels, self.num_anchors, num_classes, norm_layer=norm_layer)
        if num_convs != 4:
            self.head.classification_head.conv = _retinanet_tower(in_channels, num_convs, norm_layer)
            self.head.regression_head.conv = _retinanet_tower(in_channels, num_convs, norm_layer)
        self.fg_iou_thresh, self.bg_iou_thresh = fg, bg
        self.proposal_matcher = det_utils.Matcher(fg, bg, allow_low_quality_matches=True)
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.score_thresh = check_float(score_thresh, "score_thresh", owner, low=0.0, high=1.0)
        self.nms_thresh = check_float(nms_thresh, "nms_thresh", owner, low=0.0, high=1.0)
        self.detections_per_img = check_int(detections_per_img, "detections_per_img", owner, minimum=1)
        self.topk_candidates = check_int(topk_candidates, "topk_candidates", owner, minimum=1)
        self._anchor_generators = {}
        self._has_warned = False

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, norm={self.norm!r}, anchor_scale={self.anchor_scale}, "
            f"scales_per_octave={self.scales_per_octave}, aspect_ratios={self.aspect_ratios}, "
            f"score_thresh={self.score_thresh}, nms_thresh={self.nms_thresh}"
        )

    def anchor_sizes(self, stride: int) -> tuple[float, ...]:
        """Anchor sizes (pixels) of a level with ``stride`` (rounded down with ``integer_sizes``)."""
        sizes = [self.anchor_scale * stride * 2 ** (i / self.scales_per_octave) for i in range(self.scales_per_octave)]
        return tuple(float(int(size)) if self.integer_sizes else size for size in sizes)

    def _make_anchor_generator(self, strides: tuple[int, ...]) -> AnchorGenerator:
        return AnchorGenerator(tuple(self.anchor_sizes(s) for s in strides), (self.aspect_ratios,) * len(strides))

    def _losses(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        num_anchors_per_level: list[int],
    ) -> dict[str, Tensor]:
        return self.compute_loss(targets, head_outputs, anchors)


@hookimpl
def lstmdet_register_heads(registry: Registrar) -> None:
    """Register the ``fcos`` and ``retinanet`` heads."""
    registry.add("fcos", FCOSDetectionHead)
    registry.add("retinanet", RetinaNetDetectionHead)
