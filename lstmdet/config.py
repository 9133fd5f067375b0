"""Configuration files: loading and validation.

A config is YAML (or an equivalent dict). Each model part names a registered component and passes
its options::

    task: detect                      # or classify
    model:
      classes: [zero, one, ...]       # optional; else "0", "1", ...
      category_ids: [1, 2, ...]       # optional; COCO id of each class (else 0, 1, ...; training adopts the dataset's)
      input: {size: 128}              # classify: size int or [h, w]; detect: shorter side (+ max_size)
      backbone: {name: small_cnn, widths: [32, 64, 128], levels: [c2, c3]}
      neck: {channels: 128}           # optional: FPN that brings every level to the same channels
                                      # (extra: p6p7 adds levels c6, c7 from P5 or, extra_from: c5, from C5)
      encoder: {name: bilstm, hidden: 64, levels: [c3]}   # levels: which maps it runs on (default all)
      head: {name: fcos, num_classes: 10}
    data:                             # datasets by registered name, with their options
      train: {name: digits_det, images: 4000, seed: 1}
      val:   {name: digits_det, images: 300, seed: 99, split: test}
      test:  {...}                    # optional; the final metrics use test, else val
      augment: {preset: standard}     # see lstmdet.data.augment
    train: {epochs: 10, batch_size: 16, lr: 0.002}    # every key: TRAIN_SCHEMA

Validation errors are :class:`~lstmdet.errors.ConfigError` and name the field (``model.encoder.name``)
and what is allowed. Component options are checked against the factory's signature when the model
is assembled.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from lstmdet.errors import ConfigError, LstmdetError, did_you_mean
from lstmdet.levels import parse_levels
from lstmdet.options import check_choice, check_int, check_list, check_type, is_int, is_number

TASKS = ("classify", "detect")
TOP_LEVEL_KEYS = ("task", "model", "data", "train", "eval", "detect")
MODEL_KEYS = ("pretrained", "classes", "category_ids", "input", "backbone", "neck", "encoder", "head")
NECK_EXTRAS = ("p6p7",)
INPUT_KEYS = ("size", "max_size", "mean", "std")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DEFAULT_SIZE = {"classify": 224, "detect": 512}
DATA_SPLITS = ("train", "val", "test")
#: ``train`` section: key -> (default, accepted types, allowed values or None).
TRAIN_SCHEMA: dict[str, tuple[Any, tuple[type, ...], tuple | None]] = {
    "epochs": (10, (int,), None),
    "batch_size": (16, (int,), None),
    "lr": (0.002, (float, int), None),
    "optimizer": ("adamw", (str,), ("adamw", "sgd")),
    "weight_decay": (0.05, (float, int), None),
    "momentum": (0.9, (float, int), None),
    "scheduler": ("cosine", (str,), ("cosine", "onecycle", "none")),
    "warmup": (0.05, (float, int), None),
    "grad_clip": (10.0, (float, int, type(None)), None),
    "amp": (True, (bool,), None),
    "workers": (2, (int,), None),
    "seed": (0, (int,), None),
    "patience": (None, (int, type(None)), None),
    "device": ("auto", (str,), None),
    "eval_batch_size": (None, (int, type(None)), None),
    "progress": (True, (bool,), None),
    "freeze": ([], (list,), None),  # parameter-name prefixes not trained (backbone, backbone.layer1, neck...)
    "lr_mult": ({}, (dict,), None),  # {prefix: factor}: learning rate of those parameters times factor
}


def load_config(source: Mapping[str, Any] | str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a config, apply ``--set`` overrides and validate it.

    The one way every command, the engine and the job client load a config.

    Args:
        source: A mapping, or the path of a YAML file. A mapping is copied as plain data, as JSON
            holds it (tuples become lists, paths strings), so the config can be stored in
            checkpoints and job specs; ``source`` itself is not changed.
        overrides: ``key.path=value`` assignments (values are YAML), applied in order before
            validation (see :func:`set_value`).

    Returns:
        A validated copy with defaults filled in (``model.input``, ``model.classes``,
        ``model.category_ids``, ``model.head.num_classes``, ``model.encoder.levels`` keys are always
        present).

    Raises:
        ConfigError: A field is missing or wrong, or an override is malformed; the message names it.
        LstmdetError: The file cannot be read or is not valid YAML, or a mapping holds values that
            are not plain data.
    """
    if isinstance(source, (str, Path)):
        config = read_yaml(Path(source))
    elif isinstance(source, Mapping):
        config = _plain_copy(source)
    else:
        raise LstmdetError(f"a config must be a dict or a YAML file path, not {type(source).__name__}")
    for assignment in overrides:
        set_value(config, assignment)
    return validate_config(config)


def _plain_copy(config: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``config`` as JSON would hold it."""

    def plain(value: Any) -> Any:  # called by json for what it cannot write itself
        if isinstance(value, Mapping):
            return dict(value)
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real):
            return float(value)
        raise TypeError(f"{value!r} ({type(value).__name__}) is not one of them")

    try:
        return json.loads(json.dumps(config, default=plain))
    except (TypeError, ValueError) as exc:  # ValueError: a circular reference
        raise LstmdetError(
            f"a config may hold only mappings, lists, strings, numbers, booleans and null (as YAML does): {exc}"
        ) from None


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping from ``path`` with a clear error for missing or malformed files."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LstmdetError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise LstmdetError(
            f"config file {path} is not a text file (not UTF-8: an image, a checkpoint?); pass a YAML config"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LstmdetError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise LstmdetError(f"config file {path} must hold a mapping at the top level, not {type(data).__name__}")
    return data


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check ``config`` in place, fill defaults and return it (see :func:`load_config`)."""
    _check_keys(config, TOP_LEVEL_KEYS, "config")
    task = check_choice(config.get("task"), "task", choices=TASKS)
    model = _mapping(config.get("model"), "model")
    _check_keys(model, MODEL_KEYS, "model")
    if model.get("pretrained") is not None:  # torchvision:<builder>: a COCO detector's parts
        from lstmdet.pretrained import expand_pretrained

        check_type(model["pretrained"], "model.pretrained", types=(str,))
        model = config["model"] = expand_pretrained(model)
    for part in ("backbone", "encoder", "head"):
        model[part] = _component(model.get(part, {"name": "identity"} if part == "encoder" else None), part)
    model["neck"] = _neck(model.get("neck"))
    model["encoder"]["levels"] = parse_levels(model["encoder"].get("levels"), "model.encoder.levels")
    model["head"]["levels"] = parse_levels(model["head"].get("levels"), "model.head.levels")
    model["input"] = _input(model.get("input"), task)
    model["classes"], model["head"]["num_classes"] = _classes(model.get("classes"), model["head"])
    model["category_ids"] = _category_ids(model.get("category_ids"), len(model["classes"]))
    config["train"] = _train(config.get("train"))
    config["data"] = _data(config.get("data"))
    for section in ("eval", "detect"):
        if config.get(section) is not None:
            _mapping(config[section], section)
    return config


def _train(value: Any) -> dict[str, Any]:
    value = {} if value is None else _mapping(value, "train")
    _check_keys(value, tuple(TRAIN_SCHEMA), "train")
    out = {}
    for key, (default, types, allowed) in TRAIN_SCHEMA.items():
        item = check_type(value.get(key, default), f"train.{key}", types=types)
        if allowed is not None:
            check_choice(item, f"train.{key}", choices=allowed)
        if isinstance(item, (int, float)) and not isinstance(item, bool) and item < 0:
            raise ConfigError(f"train.{key}", f"must not be negative, got {item!r}")
        out[key] = item
    out["freeze"], out["lr_mult"] = list(out["freeze"]), dict(out["lr_mult"])  # never the schema's own objects
    for key in ("epochs", "batch_size"):
        check_int(out[key], f"train.{key}", minimum=1)
    if not 0 <= out["warmup"] < 1:
        raise ConfigError("train.warmup", f"is the warm-up share of all steps, in [0, 1); got {out['warmup']}")
    return out


def _data(value: Any) -> dict[str, Any]:
    value = {} if value is None else _mapping(value, "data")
    _check_keys(value, (*DATA_SPLITS, "augment"), "data")
    for split in DATA_SPLITS:
        if value.get(split) is not None:
            value[split] = _component(value[split], split, prefix="data")
    if value.get("augment") is not None:
        _mapping(value["augment"], "data.augment")
    return value


def set_value(config: dict[str, Any], assignment: str) -> None:
    """Apply one ``--set key.path=value`` override in place; the value is parsed as YAML.

    Raises:
        ConfigError: ``assignment`` has no ``=`` or walks through a non-mapping.
    """
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(assignment, "an override must look like key.path=value, e.g. train.epochs=3")
    parts = key.strip().split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(parts[: i + 1]), f"holds a value of type {type(child).__name__}, not a mapping")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def _check_keys(mapping: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            field = key if where == "config" else f"{where}.{key}"
            raise ConfigError(
                field, f"unknown key{did_you_mean(key, allowed)}; allowed keys here: {', '.join(allowed)}"
            )


def _mapping(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(field, f"must be a mapping, got {type(value).__name__ if value is not None else 'nothing'}")
    return value


def _component(value: Any, part: str, prefix: str = "model") -> dict[str, Any]:
    field = f"{prefix}.{part}"
    if isinstance(value, str):  # shorthand: `encoder: bilstm`
        value = {"name": value}
    value = _mapping(value, field)
    name = value.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{field}.name", "must name a registered component (see `lstmdet plugins`)")
    return value


def _neck(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    value = _mapping(value, "model.neck")
    _check_keys(value, ("channels", "extra", "extra_from"), "model.neck")
    check_int(value.get("channels"), "model.neck.channels", minimum=1)
    if value.get("extra") is not None:
        check_choice(value["extra"], "model.neck.extra", choices=NECK_EXTRAS)
        value["extra_from"] = value.get("extra_from", "p5")
    if "extra_from" in value:
        check_choice(value["extra_from"], "model.neck.extra_from", choices=("p5", "c5"))
    return value


def _input(value: Any, task: str) -> dict[str, Any]:
    value = {} if value is None else _mapping(value, "model.input")
    _check_keys(value, INPUT_KEYS, "model.input")
    size = value.get("size", DEFAULT_SIZE[task])
    if task == "classify":
        size = [size, size] if isinstance(size, int) else size
        ok = isinstance(size, list) and len(size) == 2 and all(is_int(s, minimum=1) for s in size)
        if not ok:
            raise ConfigError("model.input.size", f"must be an integer or [height, width], got {size!r}")
        if value.get("max_size") is not None:
            raise ConfigError("model.input.max_size", "applies to detection only; classify resizes to size")
        max_size = None
    else:
        if not is_int(size, minimum=1):
            raise ConfigError("model.input.size", f"must be a positive integer (shorter image side), got {size!r}")
        max_size = value.get("max_size", max(size, round(size * 1333 / 800)))
        if not is_int(max_size, minimum=size):
            raise ConfigError("model.input.max_size", f"must be an integer >= size ({size}), got {max_size!r}")
    mean = value.get("mean", IMAGENET_MEAN)
    std = value.get("std", IMAGENET_STD)
    for key, triple in (("mean", mean), ("std", std)):
        check_list(triple, f"model.input.{key}", of="numbers (R, G, B)", item=is_number, length=3)
    if any(v <= 0 for v in std):
        raise ConfigError("model.input.std", f"must be positive, got {std!r}")
    return {"size": size, "max_size": max_size, "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def _classes(classes: Any, head: dict[str, Any]) -> tuple[list[str], int]:
    num_classes = head.get("num_classes")
    if num_classes is not None:
        check_int(num_classes, "model.head.num_classes", minimum=1)
    if classes is None:
        if num_classes is None:
            raise ConfigError("model.head.num_classes", "is required (or give model.classes, a list of names)")
        return [str(i) for i in range(num_classes)], num_classes
    if not isinstance(classes, list) or not classes:
        raise ConfigError("model.classes", f"must be a non-empty list of class names, got {classes!r}")
    classes = [str(c) for c in classes]
    if num_classes is not None and num_classes != len(classes):
        raise ConfigError(
            "model.head.num_classes", f"is {num_classes} but model.classes lists {len(classes)} names; make them agree"
        )
    return classes, len(classes)


def _category_ids(ids: Any, num_classes: int) -> list[int]:
    """The COCO category id of each class: ``ids`` checked, or ``0..num_classes-1`` when not given.

    Written files (``detections.jsonl``, ``coco_results.json``) carry these ids, so results of a
    model trained on a COCO file with ids such as official COCO's (1..90, with gaps) score against
    the right categories.
    """
    if ids is None:
        return list(range(num_classes))
    ids = check_list(ids, "model.category_ids", of="integers (one COCO category id per class)",
                     item=lambda v: is_int(v, minimum=0), unique=True)  # fmt: skip
    if len(ids) != num_classes:
        raise ConfigError(
            "model.category_ids",
            f"lists {len(ids)} ids but the model has {num_classes} classes; give one id per class, in class order",
        )
    return [int(v) for v in ids]
