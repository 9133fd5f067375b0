"""Export models as ONNX or TorchScript files, and run exported detectors with ONNX Runtime.

:func:`export` writes one self-contained file whose contract (input and output names, shapes,
metadata keys, state inputs and outputs) is in :mod:`lstmdet.export.contract` and the README's
"Export" section; :class:`lstmdet.export.runtime.OnnxModel` runs an exported detector for
``lstmdet detect --weights model.onnx``. How each file is made: :mod:`lstmdet.export.exporter`.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lstmdet.errors import ExportError
from lstmdet.fileio import prepare_file

if TYPE_CHECKING:
    from lstmdet.model import LstmdetModel

__all__ = ["ExportError", "default_output", "export"]

#: File suffix per format.
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript"}
#: ``export`` keyword -> detection-head attribute it sets in the exported graph.
HEAD_OVERRIDES = {"score_thresh": "score_thresh", "nms_thresh": "nms_thresh", "max_detections": "detections_per_img"}


def default_output(weights: str | Path | None, format: str) -> Path:
    """``WEIGHTS`` with the format's suffix (``default.onnx`` for the shipped model), in the current folder."""
    stem = Path(weights).stem if weights is not None else "default"
    return Path(stem + SUFFIXES[format])


def export(
    weights: str | Path | LstmdetModel | None = None,
    out: str | Path | None = None,
    *,
    format: str = "onnx",
    opset: int | None = None,
    batch: str | int = "dynamic",
    half: bool = False,
    score_thresh: float | None = None,
    nms_thresh: float | None = None,
    max_detections: int | None = None,
    check: bool = True,
) -> Path:
    """Export a model to one ONNX or TorchScript file.

    Args:
        weights: Checkpoint file, an :class:`~lstmdet.model.LstmdetModel`, or ``None`` for the
            model shipped with lstmdet.
        out: File to write; default :func:`default_output`.
        format: ``"onnx"`` or ``"torchscript"``.
        opset: ONNX opset (default 17; 11 to the exporter's maximum).
        batch: ``"dynamic"`` (the batch dimension ``N`` is free) or a fixed batch size.
        half: Float16 weights and compute inside the graph (inputs and outputs stay float32).
        score_thresh: Detectors: the minimum score kept in the graph (default: the head's).
        nms_thresh: Detectors: the NMS IoU threshold in the graph (default: the head's).
        max_detections: Detectors: ``K``, detections per image (default: the head's ``detections_per_img``).
        check: ONNX: run the written file in ONNX Runtime at other batch sizes before returning.

    Returns:
        The path written.

    Raises:
        ExportError: A part cannot be exported (the message names it and why), or a bad option.
        CheckpointError: ``weights`` cannot be read.
    """
    import copy

    import torch

    from lstmdet.export.exporter import FORMATS, export_onnx, export_torchscript
    from lstmdet.options import check_float, check_int

    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose onnx or torchscript")
    fixed = _batch(batch)
    if isinstance(weights, torch.nn.Module):
        model = copy.deepcopy(weights).cpu().eval()
        if out is None:
            raise ExportError("give out= (the file to write) when exporting a model object")
    else:
        from lstmdet.checkpoint import load_model

        model = load_model(weights, map_location="cpu")
    overrides = {"score_thresh": score_thresh, "nms_thresh": nms_thresh, "max_detections": max_detections}
    for key, value in overrides.items():
        if value is None:
            continue
        if model.task != "detect":
            raise ExportError(f"{key} applies to detectors; this is a {model.task} model")
        if key == "max_detections":
            value = check_int(value, "max_detections (--max-det)", "export", minimum=1)
        else:
            value = check_float(
                value, f"{key} ({'--conf' if key == 'score_thresh' else '--iou'})", "export", low=0.0, high=1.0
            )
        setattr(model.head, HEAD_OVERRIDES[key], value)
    path = prepare_file(Path(out) if out is not None else default_output(weights, format), "--out")
    if format == "onnx":
        return export_onnx(model, path, opset=opset, batch=fixed, half=half, check=check)
    if opset is not None:
        raise ExportError("opset applies to --format onnx only")
    return export_torchscript(model, path, batch=fixed, half=half)


def _batch(batch: str | int) -> int | None:
    """``None`` for a dynamic batch, else the fixed size (checked)."""
    if batch == "dynamic" or batch is None:
        return None
    if isinstance(batch, str) and batch.isdigit():
        batch = int(batch)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ExportError(f"batch must be 'dynamic' or a positive integer, got {batch!r}")
    return batch


class _CallableModule(types.ModuleType):
    """This package, callable as :func:`export`.

    ``lstmdet.export`` is both this package and the function of the Python API: importing the package
    makes it the ``export`` attribute of ``lstmdet`` (replacing the function), so the package itself
    must be callable for ``lstmdet.export(...)`` to keep working.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Path:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
