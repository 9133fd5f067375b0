"""lstmdet: LSTM-family sequence encoders between CNN backbones and classification or detection heads.

Public plugin API (stable)::

    from lstmdet import hookimpl, FeatureInfo
    from lstmdet.options import check_int, check_float, check_choice  # option checks with lstmdet's messages

Python API: :func:`components`, :func:`create_component`, :func:`create_model`, :func:`load`, :func:`train`,
:func:`detect`, :func:`export`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from lstmdet.hookspecs import hookimpl
from lstmdet.interfaces import FeatureInfo

if TYPE_CHECKING:
    from pathlib import Path

    from lstmdet.model import LstmdetModel

try:
    __version__ = version("lstmdet")
except PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "FeatureInfo",
    "__version__",
    "components",
    "create_component",
    "create_model",
    "detect",
    "export",
    "hookimpl",
    "load",
    "train",
]


def components() -> dict[str, dict[str, str]]:
    """Every registered component.

    Returns:
        ``{kind: {name: plugin}}`` for kinds ``backbones``, ``encoders``, ``heads``, ``datasets``,
        where ``plugin`` is the name of the plugin that registered the component.
    """
    from lstmdet.manager import current_registry
    from lstmdet.registry import KINDS

    registry = current_registry()
    listing: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
    for entry in registry.entries():
        listing[entry.kind][entry.name] = entry.plugin
    return listing


def create_component(kind: str, name: str, *args: Any, **options: Any) -> Any:
    """Build one registered component.

    Args:
        kind: ``"backbones"``, ``"encoders"``, ``"heads"`` or ``"datasets"`` (singular accepted).
        name: Registered name, e.g. ``"convlstm"``.
        *args: Contract arguments of the kind (``in_channels`` for encoders; ``in_channels,
            num_classes`` for heads). They may also be given as keywords.
        **options: The component's options.

    Raises:
        UnknownComponentError: ``name`` is not registered; the message lists the available names.
    """
    from lstmdet.manager import current_registry
    from lstmdet.registry import SINGULAR

    plural = {v: k for k, v in SINGULAR.items()}.get(kind, kind)
    return current_registry().create(plural, name, *args, **options)


def create_model(config: dict[str, Any] | str | Path) -> LstmdetModel:
    """Build a model from a config dict or a YAML file (see ``lstmdet.config``)."""
    from lstmdet.model import build_model

    return build_model(config)


def load(path: str | Path | None = None, *, map_location: str = "cpu") -> LstmdetModel:
    """Load a model from a self-describing checkpoint.

    Args:
        path: Checkpoint file; ``None`` or ``"default"`` loads the model shipped inside the package.
        map_location: Device to load the weights onto.

    Raises:
        CheckpointError: The file is missing, not an lstmdet checkpoint, or carries pickled code.
    """
    from lstmdet.checkpoint import load_model

    return load_model(path, map_location=map_location)


def train(
    config: dict[str, Any] | str | Path, out: str | Path, *, overrides: list[str] | tuple = (), resume: bool = False
) -> dict[str, Any]:
    """Train a model from a config (dict or YAML path) into the folder ``out``.

    Args:
        config: Config with ``model``, ``data.train`` (and usually ``data.val``) and ``train``.
        out: Output folder: ``last.pt``, ``best.pt``, ``metrics.jsonl``, ``metrics.csv``,
            ``curves.png``, ``summary.json``.
        overrides: ``key.path=value`` strings applied to the config first.
        resume: Continue the run in ``out`` from its ``last.pt``.

    Returns:
        The ``summary.json`` dict: ``task``, ``epochs``, ``seconds``, ``metrics`` (held-out split).
    """
    from lstmdet.engine.train import train as _train

    return _train(config, out, overrides=overrides, resume=resume)


def detect(src: str | Path, out: str | Path, weights: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """Detect objects in every image and video of a folder (or in one file), writing the results to ``out``.

    Args:
        src: Image or video file, or a folder (searched recursively) of images and videos.
        out: Output folder: ``detections.jsonl``, ``images.json``, ``coco_results.json``, ``summary.json``.
        weights: Checkpoint file; ``None`` or ``"default"``: the model shipped with lstmdet (or ``model=``).
        **options: ``model``, ``batch_size``, ``workers``, ``score_thresh`` (default 0.25),
            ``nms_thresh``, ``max_detections``, ``agnostic_nms`` (default False), ``device``,
            ``half``, ``save_images``, ``resume`` (options left out: those the run recorded),
            ``exist_ok`` (replace a previous run in ``out``), ``sequence``, ``max_pixels``,
            ``progress``; for video files ``vid_stride``, ``start``, ``end``, ``max_frames``,
            ``save_video`` (see :func:`lstmdet.engine.detect.detect`).

    Returns:
        The ``summary.json`` dict: ``images``, ``ok``, ``failed``, ``seconds``, ``images_per_s``, ...
    """
    from lstmdet.engine.detect import detect as _detect

    return _detect(src, out, weights, **options)


def export(weights: str | Path | LstmdetModel | None = None, out: str | Path | None = None, **options: Any) -> Path:
    """Export a model as one ONNX or TorchScript file (see :func:`lstmdet.export.export`).

    Args:
        weights: Checkpoint file, a model object, or ``None`` for the model shipped with lstmdet.
        out: File to write (default: the checkpoint's name with ``.onnx`` / ``.torchscript``).
        **options: ``format`` (``"onnx"`` / ``"torchscript"``), ``opset``, ``batch`` (``"dynamic"`` or
            N), ``half``, ``score_thresh``, ``nms_thresh``, ``max_detections``.

    Returns:
        The path written.
    """
    from lstmdet.export import export as _export

    return _export(weights, out, **options)
