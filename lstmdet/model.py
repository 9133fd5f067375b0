"""Model assembly: Backbone -> (neck) -> SequenceEncoder per level -> Head.

:func:`build_model` turns a validated config into an :class:`LstmdetModel`, asking the registry
for each part by name. It checks that the parts fit (levels exist, channels agree, the head does
the config's task) and fails before any weights are allocated for the head with an
:class:`~lstmdet.errors.AssemblyError` that names both parts involved.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from lstmdet.config import load_config
from lstmdet.errors import AssemblyError, LstmdetError
from lstmdet.interfaces import FeatureInfo
from lstmdet.levels import level_name
from lstmdet.manager import current_registry
from lstmdet.registry import ComponentRegistry
from lstmdet.transforms import build_transform

Images = list[Tensor] | Tensor
Targets = list[dict[str, Tensor]] | None


class LstmdetModel(nn.Module):
    """A backbone, an optional FPN neck, one sequence encoder per chosen level, and a head.

    Args:
        config: The validated config the model was built from (kept for checkpoints).
        backbone: Module with ``feature_info``; ``(N, 3, H, W) -> {level: (N, C, h, w)}``.
        encoders: ``{level: encoder}``; each maps ``(B, T, C, h, w) -> (B, T, C', h, w)``.
        head: Module following :class:`lstmdet.interfaces.Head`.
        transform: Resizes, normalises and batches input images; maps predictions back.
        head_levels: The levels, in order, that the head receives.
        neck: Optional module applied to the backbone's dict before the encoders.
    """

    def __init__(
        self,
        *,
        config: dict[str, Any],
        backbone: nn.Module,
        encoders: dict[str, nn.Module],
        head: nn.Module,
        transform: nn.Module,
        head_levels: list[str],
        neck: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.task: str = config["task"]
        self.classes: list[str] = list(config["model"]["classes"])
        #: COCO category id of each class (label ``i`` is category ``category_ids[i]``).
        self.category_ids: list[int] = list(config["model"]["category_ids"])
        self.transform = transform
        self.backbone = backbone
        self.neck = neck
        self.encoders = nn.ModuleDict(encoders)
        self.head = head
        self.head_levels = list(head_levels)

    @property
    def stateful(self) -> bool:
        """True when an encoder carries memory across frames (e.g. ConvLSTM)."""
        return any(getattr(enc, "stateful", False) for enc in self.encoders.values())

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters (CPU for a parameter-free model)."""
        return next(self.parameters(), torch.empty(0)).device

    def forward(self, images: Images, targets: Targets = None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training mode, predictions in eval mode.

        Args:
            images: Still images as a list of ``(3, H, W)`` tensors or a ``(B, 3, H, W)`` tensor; or
                clips as a list of ``(T, 3, H, W)`` tensors or a ``(B, T, 3, H, W)`` tensor. Values in
                ``[0, 1]``; sizes may differ between images (not between frames of a clip).
            targets: Training only; one dict per image (per frame for clips, clip-major): ``labels``
                and, for detection, ``boxes`` ``(M, 4)`` xyxy in original-image pixels.

        Returns:
            Training: dict of scalar losses. Eval: one dict per image (per frame for clips, clip-major)
            with ``boxes`` (xyxy, original pixels), ``scores`` and ``labels`` for detection, or
            ``scores`` (class probabilities) and ``labels`` for classification.
        """
        outputs, _ = self.run(images, targets)
        return outputs

    def run(self, images: Images, targets: Targets = None, state: Any = None) -> tuple[Any, Any]:
        """:meth:`forward` that also takes and returns the encoders' state (``{level: state}``)."""
        frames, num_frames = _frames(images)
        if self.training and targets is None:
            raise LstmdetError("the model is in training mode: pass targets, or call model.eval() to predict")
        if targets is not None and len(targets) != len(frames):
            raise LstmdetError(f"got {len(targets)} targets for {len(frames)} images (frames); give one per image")
        original_sizes = [tuple(f.shape[-2:]) for f in frames]
        image_list, targets = self.transform(frames, targets if self.training else None)
        features, state = self.features(image_list.tensors, num_frames, state)
        outputs = self.head(features, image_list, targets if self.training else None)
        if not self.training:
            outputs = self.transform.postprocess(outputs, image_list.image_sizes, original_sizes)
        return outputs, state

    def features(self, tensors: Tensor, num_frames: int = 1, state: Any = None) -> tuple[dict[str, Tensor], Any]:
        """Backbone, neck and encoders on a normalised batch.

        Args:
            tensors: ``(B*T, 3, H, W)`` normalised frames, clip-major.
            num_frames: ``T``, frames per clip (1 for still images).
            state: ``{level: encoder state}`` from a previous call, or ``None`` to start fresh.

        Returns:
            ``({level: (B*T, C, h, w)}`` for the head's levels, new ``{level: state}``).
        """
        feats = self.backbone(tensors)
        if self.neck is not None:
            feats = self.neck(OrderedDict(feats))
        new_state = {}
        for level, encoder in self.encoders.items():
            f = feats[level]
            y, new_state[level] = encoder(f.view(-1, num_frames, *f.shape[1:]), None if state is None else state[level])
            feats[level] = y.flatten(0, 1)
        return {level: feats[level] for level in self.head_levels}, new_state

    @torch.inference_mode()
    def predict(self, images: Images) -> list[dict[str, Tensor]] | list[list[dict[str, Tensor]]]:
        """Predictions for images or clips, on CPU (puts the model in eval mode).

        Args:
            images: As for :meth:`forward`, on any device (moved to the model's).

        Returns:
            For still images, one dict per image (see :meth:`forward`); for clips, one list of
            per-frame dicts per clip.
        """
        self.eval()
        _, num_frames = _frames(images)
        outputs, _ = self.run([item.to(self.device) for item in images])
        outputs = [{k: v.cpu() for k, v in out.items()} for out in outputs]
        if _is_clip_batch(images):
            return [outputs[i : i + num_frames] for i in range(0, len(outputs), num_frames)]
        return outputs

    @torch.inference_mode()
    def predict_step(self, frames: list[Tensor], state: Any = None) -> tuple[list[dict[str, Tensor]], Any]:
        """One time step of several streams: frame ``i`` continues stream ``i`` of ``state``.

        Feeding clips frame by frame through this method, passing the returned state back in,
        gives the same predictions as :meth:`predict` on the whole clips.

        Args:
            frames: One ``(3, H, W)`` frame per stream.
            state: The state returned by the previous call, or ``None`` at the start of the streams.

        Returns:
            (one prediction dict per frame, new state).
        """
        self.eval()
        outputs, state = self.run([f.to(self.device) for f in frames], state=state)
        return [{k: v.cpu() for k, v in out.items()} for out in outputs], state


def _is_clip_batch(images: Images) -> bool:
    if isinstance(images, Tensor):
        return images.dim() == 5
    return bool(images) and images[0].dim() == 4


def _frames(images: Images) -> tuple[list[Tensor], int]:
    """Flatten stills or clips to a list of ``(3, H, W)`` frames; return it and frames per clip."""
    if isinstance(images, Tensor):
        if images.dim() not in (4, 5):
            raise LstmdetError(f"images must be (B, 3, H, W) or (B, T, 3, H, W), got shape {tuple(images.shape)}")
        images = list(images)
    if not images:
        raise LstmdetError("no images given: pass a non-empty list of (3, H, W) tensors")
    dims = {img.dim() for img in images}
    if dims == {3}:
        frames, num_frames = list(images), 1
    elif dims == {4}:
        lengths = {clip.shape[0] for clip in images}
        if len(lengths) != 1:
            raise LstmdetError(f"clips in one batch must have the same number of frames, got {sorted(lengths)}")
        frames, num_frames = [frame for clip in images for frame in clip], lengths.pop()
    else:
        raise LstmdetError("images must all be (3, H, W) stills or all (T, 3, H, W) clips")
    if any(f.shape[0] != 3 for f in frames):
        raise LstmdetError("images must have 3 channels (RGB); convert grey or RGBA images first")
    return frames, num_frames


class Neck(FeaturePyramidNetwork):
    """torchvision's FPN: every level brought to ``channels``; with ``extra="p6p7"`` two more levels.

    The extra levels (torchvision's ``LastLevelP6P7``: a stride-2 convolution, then ReLU and another)
    have twice and four times the last level's stride and are named by stride (after ``c5``: ``c6``
    and ``c7``). They are computed from the last FPN output (``extra_from="p5"``, FCOS and RetinaNet)
    or the last backbone map (``"c5"``, RetinaNet v2). Parameter names are torchvision's.

    Args:
        info: The backbone's levels, in order.
        channels: Output channels of every level.
        extra: ``None`` or ``"p6p7"``.
        extra_from: ``"p5"`` or ``"c5"``.

    Shapes:
        ``{name: (N, C_i, h_i, w_i)}`` -> ``{name: (N, channels, h_i, w_i)}`` (+ the extra levels).
    """

    def __init__(self, info: list[FeatureInfo], channels: int, extra: str | None = None, extra_from: str = "p5"):
        blocks, extra_info = None, []
        if extra == "p6p7":
            blocks = LastLevelP6P7(channels if extra_from == "p5" else info[-1].channels, channels)
            last = info[-1].stride
            extra_info = [FeatureInfo(level_name(last * k), channels, last * k) for k in (2, 4)]
        super().__init__([fi.channels for fi in info], channels, extra_blocks=blocks)
        self.extra_info: list[FeatureInfo] = extra_info
        self._names = dict(zip(("p6", "p7"), (fi.name for fi in extra_info), strict=False))

    def forward(self, x: dict[str, Tensor]) -> dict[str, Tensor]:
        out = super().forward(x)
        return OrderedDict((self._names.get(k, k), v) for k, v in out.items())


def build_model(
    config: dict[str, Any] | str | Path, registry: ComponentRegistry | None = None, *, load_weights: bool = True
) -> LstmdetModel:
    """Assemble a model from a config (dict or YAML path).

    ``model.pretrained`` (``torchvision:<builder>``) loads that detector's COCO weights into the
    backbone, neck and head (:mod:`lstmdet.pretrained`) unless ``load_weights`` is False (a
    checkpoint's weights follow).

    Raises:
        ConfigError: A field of the config is wrong, named in the message; an unknown component
            is reported on the part's ``name`` field (e.g. ``model.encoder.name``).
        AssemblyError: Parts do not fit together (names both parts).
    """
    cfg = load_config(config)
    registry = current_registry() if registry is None else registry
    spec = cfg["model"]
    backbone = registry.create_from_spec("backbones", spec["backbone"], "model.backbone")
    info = _feature_info(backbone, spec["backbone"]["name"])
    _check_input_width(backbone, spec["backbone"]["name"], cfg["task"], spec["input"])
    channels = {fi.name: fi.channels for fi in info}
    describe = {"backbone": f"backbone {spec['backbone']['name']!r}"}

    neck = None
    strides = {fi.name: fi.stride for fi in info}  # the neck and the encoders keep every level's stride
    if spec["neck"] is not None:
        width = spec["neck"]["channels"]
        neck = Neck(info, width, spec["neck"].get("extra"), spec["neck"].get("extra_from", "p5"))
        channels = dict.fromkeys(channels, width)
        for fi in neck.extra_info:
            channels[fi.name], strides[fi.name] = width, fi.stride
        describe["backbone"] += " + neck"

    enc_spec = spec["encoder"]
    enc_levels = _choose_levels(enc_spec["levels"], channels, "model.encoder.levels", describe["backbone"])
    encoders = {}
    for level in enc_levels:
        encoder = registry.create_from_spec("encoders", enc_spec, "model.encoder", channels[level], skip=("levels",))
        out = getattr(encoder, "out_channels", None)
        if not isinstance(out, int) or out < 1:
            raise AssemblyError(
                f"encoder {enc_spec['name']!r} has no integer out_channels attribute; its plugin is broken"
            )
        encoders[level], channels[level] = encoder, out

    head_spec = spec["head"]
    head_levels = _choose_levels(head_spec["levels"], channels, "model.head.levels", describe["backbone"])
    head_channels = {channels[level] for level in head_levels}
    if len(head_channels) != 1:
        found = ", ".join(f"{level}: {channels[level]}" for level in head_levels)
        raise AssemblyError(
            f"head {head_spec['name']!r} needs the same channels on every level it reads, but "
            f"{describe['backbone']} with encoder {enc_spec['name']!r} gives {found}. Add `neck: {{channels: N}}` "
            "to the model, or choose one level with model.head.levels"
        )
    in_channels = head_channels.pop()
    head_info = [FeatureInfo(level, in_channels, strides[level]) for level in head_levels]
    head = registry.create_from_spec(
        "heads",
        head_spec,
        "model.head",
        in_channels,
        head_spec["num_classes"],
        skip=("levels", "num_classes"),
        context={"feature_info": head_info},
    )
    if getattr(head, "task", None) != cfg["task"]:
        raise AssemblyError(
            f"head {head_spec['name']!r} does task {getattr(head, 'task', None)!r} but the config's task is "
            f"{cfg['task']!r}; choose a {cfg['task']} head (see `lstmdet plugins`)"
        )
    size_divisible = max(fi.stride for fi in info)
    transform = build_transform(cfg["task"], spec["input"], size_divisible)
    model = LstmdetModel(
        config=cfg,
        backbone=backbone,
        encoders=encoders,
        head=head,
        transform=transform,
        head_levels=head_levels,
        neck=neck,
    )
    if spec.get("pretrained") is not None and load_weights:
        from lstmdet.pretrained import load_pretrained_detector

        load_pretrained_detector(model, spec["pretrained"])
    return model


def _feature_info(backbone: nn.Module, name: str) -> list[FeatureInfo]:
    """The backbone's ``feature_info``, validated once here; every later part relies on it.

    Raises:
        AssemblyError: Missing or malformed: each entry must be ``FeatureInfo(name, channels, stride)``
            with a unique non-empty name and positive integer channels and stride.
    """
    info = getattr(backbone, "feature_info", None)
    broken = f"backbone {name!r} has a broken feature_info"
    if not info or not all(isinstance(fi, tuple) and len(fi) == 3 for fi in info):
        raise AssemblyError(
            f"backbone {name!r} has no feature_info (a list of lstmdet.FeatureInfo(name, channels, stride)); "
            "its plugin is broken"
        )
    levels = [FeatureInfo(*fi) for fi in info]
    for level in levels:
        if not isinstance(level.name, str) or not level.name:
            raise AssemblyError(f"{broken}: level name {level.name!r} is not a non-empty string")
        for key in ("channels", "stride"):
            value = getattr(level, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AssemblyError(f"{broken}: level {level.name!r} has {key} {value!r}, not a positive integer")
    names = [level.name for level in levels]
    if len(set(names)) != len(names):
        raise AssemblyError(f"{broken}: level names repeat: {names}")
    return levels


def _check_input_width(backbone: nn.Module, name: str, task: str, input_cfg: dict[str, Any]) -> None:
    """A backbone with an ``input_width`` attribute takes images of exactly that width: check the transform gives it.

    Raises:
        AssemblyError: ``model.input`` resizes images to another width (names both fields).
    """
    width = getattr(backbone, "input_width", None)
    if width is None:
        return
    if task != "classify":
        raise AssemblyError(
            f"backbone {name!r} takes images exactly {width} px wide (model.backbone.width), but detection resizes "
            f"images to varying widths (model.input.size {input_cfg['size']}, max_size {input_cfg['max_size']}); "
            "use this backbone for classification, or choose another backbone"
        )
    height, given = input_cfg["size"]
    if given != width:
        raise AssemblyError(
            f"model.backbone.width is {width} but model.input.size resizes images to {height}x{given} (height x "
            f"width); set model.input.size to {width} (or [H, {width}]), or model.backbone.width to {given}"
        )


def _choose_levels(levels: list[str] | None, channels: dict[str, int], field: str, source: str) -> list[str]:
    if levels is None:
        return list(channels)
    unknown = [level for level in levels if level not in channels]
    if unknown:
        raise AssemblyError(
            f"{field} names {unknown}, but {source} gives levels {list(channels)}; choose among those "
            "(or ask the backbone for more with model.backbone.levels)"
        )
    return list(levels)
