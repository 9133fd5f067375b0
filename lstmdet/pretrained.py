"""Detectors torchvision ships with COCO weights, as lstmdet models: ``torchvision:<builder>``.

A config names one as ``model: {pretrained: "torchvision:fcos_resnet50_fpn", encoder: {...}}``.
:func:`expand_pretrained` fills in the parts that rebuild torchvision's detector in lstmdet: its
ResNet-50 backbone (levels ``c3``-``c5``), its FPN with the extra P6 and P7 levels (here ``c6`` and
``c7``, named by stride), its head with torchvision's post-processing settings and anchors, its
input size (shorter side 800, longer at most 1333) and ImageNet normalisation, and COCO's label
slots as torchvision numbers them: 91 classes, label ``i`` being COCO category id ``i`` (the 80
names, ``N/A`` for the ids COCO leaves unused and ``__background__`` for 0, which the detectors
never predict). Parts the config gives are merged over the preset (``head: {score_thresh: 0.5}``
changes that one option); the encoder is the config's (default ``identity``). A config that gives
its own ``classes`` (fine-tuning to other objects) gets a head with one output per class: every
weight loads but the classification layer's (``cls_logits``), whose outputs for classes named as
COCO names them (``person``, ``dog``, ...) are taken from the COCO outputs of that name, the others
starting as a new head's.

:func:`load_pretrained_detector` loads the COCO weights through torchvision's weights API (the file
``torch.hub.get_dir()/checkpoints/<name>``; downloaded when missing and the network allows) into
the assembled model, mapping torchvision's parameter names to lstmdet's. The encoder is not part
of those weights: an encoder built with ``init: identity`` leaves the detections unchanged until
it is trained.

``--weights torchvision:<builder>`` (``detect``, ``eval``, ``export``, ``submit``) is the preset with
the identity encoder: exactly torchvision's detector (:func:`pretrained_model`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lstmdet.errors import ConfigError, LstmdetError

#: How a pretrained detector is named (in ``model.pretrained`` and ``--weights``).
PREFIX = "torchvision:"
#: The head's classification output layer (one output per class and anchor): new when the classes are.
CLASS_LAYER = "head.head.classification_head.cls_logits."

_FCOS_HEAD = {"name": "fcos", "num_convs": 4, "norm": "group", "score_thresh": 0.2, "nms_thresh": 0.6,
              "detections_per_img": 100, "topk_candidates": 1000, "anchor_steps": "grid"}  # fmt: skip
_RETINANET_HEAD = {"name": "retinanet", "num_convs": 4, "norm": "none", "score_thresh": 0.05, "nms_thresh": 0.5,
                   "detections_per_img": 300, "topk_candidates": 1000, "anchor_steps": "grid",
                   "integer_sizes": True}  # fmt: skip

#: torchvision builder -> (neck's extra levels come from, head options).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "fcos_resnet50_fpn": ("p5", _FCOS_HEAD),
    "retinanet_resnet50_fpn": ("p5", _RETINANET_HEAD),
    "retinanet_resnet50_fpn_v2": ("c5", {**_RETINANET_HEAD, "norm": "group"}),
}


def is_pretrained_name(value: object) -> bool:
    """``value`` names a torchvision detector (``torchvision:...``)."""
    return isinstance(value, str) and value.startswith(PREFIX)


def builder_name(value: str, field: str = "model.pretrained") -> str:
    """The torchvision builder of ``torchvision:<builder>``.

    Raises:
        ConfigError: Not one of :data:`PRESETS` (the message lists them).
    """
    name = value[len(PREFIX) :] if is_pretrained_name(value) else value
    if name not in PRESETS:
        known = ", ".join(PREFIX + n for n in PRESETS)
        raise ConfigError(field, f"unknown pretrained detector {value!r}; available: {known}")
    return name


def coco_categories() -> list[str]:
    """torchvision's COCO label names: 91 entries, index = COCO category id."""
    from torchvision.models._meta import _COCO_CATEGORIES

    return list(_COCO_CATEGORIES)


def expand_pretrained(model: dict[str, Any]) -> dict[str, Any]:
    """The ``model`` section with the preset of ``model["pretrained"]`` filled in (a new dict).

    Given parts are merged over the preset's (mappings key by key). Without ``classes`` the model
    has COCO's 91 label slots; with them, ``category_ids`` are the config's too.

    Raises:
        ConfigError: Unknown name, or ``category_ids`` without ``classes``.
    """
    name = builder_name(model["pretrained"])
    if "category_ids" in model and "classes" not in model:
        raise ConfigError(
            "model.category_ids", f"goes with model.classes: {model['pretrained']} has COCO's own ids; give classes "
            "too to fine-tune to other objects",
        )  # fmt: skip
    extra_from, head = PRESETS[name]
    preset: dict[str, Any] = {
        "input": {"size": 800, "max_size": 1333},
        "backbone": {"name": "resnet50", "levels": ["c3", "c4", "c5"]},
        "neck": {"channels": 256, "extra": "p6p7", "extra_from": extra_from},
        "head": dict(head),
    }
    if "classes" not in model:
        preset.update(classes=coco_categories(), category_ids=list(range(91)))
        preset["head"]["num_classes"] = 91
    out = copy.deepcopy(model)
    for key, value in preset.items():
        given = out.get(key)
        out[key] = {**value, **given} if isinstance(given, dict) and isinstance(value, dict) else value
    return out


def weights_file(name: str) -> tuple[Path, str]:
    """Where torchvision's weights API looks for the default weights of model ``name`` (a detector builder or
    a classifier such as ``resnet18``): ``(file in the torch hub cache, URL it downloads when missing)``."""
    import torch
    import torchvision.models as tvm

    url = tvm.get_model_weights(name).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name, url


def hub_state_dict(name: str, what: str, otherwise: str = "") -> dict[str, Any]:
    """The default weights of torchvision model ``name`` through its weights API (hub cache, else download).

    Args:
        name: A torchvision model name (``fcos_resnet50_fpn``, ``resnet18``...).
        what: The weights in an error message, e.g. ``"the COCO weights of torchvision:fcos_resnet50_fpn"``.
        otherwise: Appended to an error message: another way out (``", or set pretrained: false"``).

    Raises:
        LstmdetError: The file is not in the cache and cannot be downloaded, or it cannot be read; the
            message names the cache path and the URL.
    """
    import torchvision.models as tvm

    weights = tvm.get_model_weights(name).DEFAULT
    path, url = weights_file(name)
    was_cached = path.is_file()
    try:
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as exc:
        if was_cached:
            raise LstmdetError(
                f"could not read {what} ({weights}) from {path}: {exc}. The file may be incomplete or corrupt: "
                f"delete it and copy a fresh download of {url} there{otherwise}"
            ) from exc
        raise LstmdetError(
            f"{what} ({weights}) are not in the torch hub cache and could not be downloaded ({type(exc).__name__}: "
            f"{exc}). Expected file: {path}; download {url} on a machine with network access and copy it there (the "
            f"folder follows TORCH_HOME: $TORCH_HOME/hub/checkpoints){otherwise}"
        ) from exc


def lstmdet_key(key: str) -> str | None:
    """The lstmdet name of a torchvision detector's parameter or buffer (``None``: not part of lstmdet's model)."""
    for old, new in (("backbone.body.", "backbone."), ("backbone.fpn.", "neck."), ("head.", "head.head.")):
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def load_pretrained_detector(model: Any, name: str) -> None:
    """Load the COCO weights of torchvision builder ``name`` into ``model`` (built from its preset).

    Everything but the encoders must be covered: a backbone, neck or head tensor that the weights
    lack, or a weight that fits nowhere, is an error naming a few of them.

    Raises:
        LstmdetError: The weights cannot be found or read (the message says where torchvision
            looked and how to get the file), or they do not fit the model.
    """
    name = builder_name(name)
    state = model.state_dict()
    new_classes = len(model.classes) != 91  # fine-tuning to other classes: a new classification layer
    mapped, unused = {}, []
    for key, value in hub_state_dict(name, f"the COCO weights of {PREFIX}{name}").items():
        target = lstmdet_key(key)
        if new_classes and target is not None and target.startswith(CLASS_LAYER):
            _copy_known_classes(state[target], value, model.classes)
            mapped[target] = state[target]
            continue
        if target is None or target not in state or state[target].shape != value.shape:
            unused.append(key)
        else:
            mapped[target] = value
    fresh = ("encoders.",)  # not in the weights
    missing = [
        k for k in state if k not in mapped and not k.startswith(fresh) and not k.endswith("num_batches_tracked")
    ]
    if missing or unused:
        raise LstmdetError(
            f"the weights of {PREFIX}{name} do not fit the model built from its preset: missing {missing[:4]}, unused "
            f"{unused[:4]}; keep the preset's backbone, neck and head (change only options such as score_thresh)"
        )
    model.load_state_dict(mapped, strict=False)


def _copy_known_classes(ours: Any, coco: Any, classes: list[str]) -> None:
    """Copy into ``ours`` (a new classification layer's weight or bias, ``(A * K, ...)``: anchor-major) the
    rows of ``coco`` (``(A * 91, ...)``) of the classes that COCO names alike."""
    names = {name: i for i, name in enumerate(coco_categories()) if name not in ("N/A", "__background__")}
    count = len(classes)
    anchors = ours.shape[0] // count
    for k, name in enumerate(classes):
        if name in names:
            for a in range(anchors):
                ours[a * count + k] = coco[a * 91 + names[name]]


def pretrained_model(value: str) -> Any:
    """The detector ``torchvision:<builder>`` with the identity encoder and its COCO weights, in eval mode."""
    from lstmdet.model import build_model

    builder_name(value, "--weights")
    config = {"task": "detect", "model": {"pretrained": value, "encoder": {"name": "identity"}}}
    return build_model(config).eval()
