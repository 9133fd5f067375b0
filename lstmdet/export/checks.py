"""Checks of a freshly exported graph: does it run at other batch sizes, and at other image sizes?

A detector's graph is exported with dynamic ``H, W`` when every part allows it. Whether a part does
cannot be read from its code, so it is measured: the graph runs on images of another size (not a
multiple of the stride, another aspect ratio) and must give what PyTorch gives there. A graph that
fails or differs keeps the model's fixed input size (:func:`size_mismatch` says why).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lstmdet.errors import ExportError


def other_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` unlike ``image_size``: 13 px taller, a third narrower (+5), neither a multiple of 8."""
    height, width = image_size
    return height + 13, max(9, width * 2 // 3 + 5)


def inputs_at(prepared: Any, size: tuple[int, int], batch: int) -> list[Tensor]:
    """Example inputs of ``prepared`` (:class:`~lstmdet.export.exporter.Prepared`) for ``batch`` images of ``size``."""
    from lstmdet.export.exporter import IMAGE_SIZES, _level_shapes

    generator = torch.Generator().manual_seed(2)
    images = torch.rand(batch, 3, *size, generator=generator)
    inputs = [images]
    if IMAGE_SIZES in prepared.input_names:
        inputs.append(torch.tensor([list(size)] * batch, dtype=torch.int64))
    if prepared.state:
        shapes = _level_shapes(prepared.module.net, images)
        for level, count in prepared.module.net.state_layout:
            _, height, width = shapes[level]
            encoder = prepared.module.net.model.encoders[level]
            inputs += [torch.rand(batch, int(encoder.hidden), height, width, generator=generator) for _ in range(count)]
    return inputs


def size_mismatch(run: Callable[[list[Tensor]], list[np.ndarray]], prepared: Any, batch: int | None) -> str | None:
    """Why a graph traced with dynamic ``H, W`` cannot keep them, or ``None`` when it can.

    Args:
        run: Runs the exported graph on a list of inputs (in ``prepared.input_names`` order).
        prepared: The :class:`~lstmdet.export.exporter.Prepared` module that was traced.
        batch: The fixed batch size, or ``None`` (dynamic).

    Returns:
        ``None`` when the graph gives PyTorch's outputs on images of :func:`other_size`; else a
        sentence for the metadata saying what went wrong.
    """
    size = other_size(prepared.image_size)
    inputs = inputs_at(prepared, size, batch or 2)
    try:
        with torch.no_grad():
            want = [t.numpy() for t in prepared.module(*inputs)]
    except Exception as exc:  # (a part's own error: it only runs at the size it was built for)
        return f"the model itself fails in PyTorch on {size[0]}x{size[1]} images ({_first_line(exc)})"
    try:
        got = run(inputs)
    except Exception as exc:  # (ONNX Runtime and TorchScript raise their own types)
        return f"the graph traced at {prepared.image_size} fails on {size[0]}x{size[1]} images ({_first_line(exc)})"
    if prepared.detect:  # near-tied detections may come in another order: compare them as sets
        got, want = _as_sets(got), _as_sets(want)
    for name, a, b in zip(prepared.output_names, got, want, strict=True):
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-3, atol=1e-3):
            return (
                f"the graph traced at {prepared.image_size} gives other {name!r} than PyTorch on {size[0]}x{size[1]} "
                "images (a part uses the image size as a Python number)"
            )
    return None


def _first_line(exc: Exception) -> str:
    """The first line of an exception's message (at most 200 characters), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _as_sets(outputs: list[np.ndarray]) -> list[np.ndarray]:
    """Detector outputs with each image's detection rows sorted by (label, score, box); state unchanged."""
    boxes, scores, labels = (np.asarray(o) for o in outputs[:3])
    rows = np.concatenate([labels[..., None].astype(np.float64), np.round(scores[..., None], 4), np.round(boxes)], -1)
    order = np.stack([np.lexsort(r.T[::-1]) for r in rows])
    pick = np.take_along_axis
    return [pick(boxes, order[..., None], 1), pick(scores, order, 1), pick(labels, order, 1), *outputs[3:]]


def onnx_runner(model_bytes: bytes, input_names: list[str]) -> Callable[[list[Tensor]], list[np.ndarray]]:
    """``run(inputs)`` for an ONNX model given as bytes (CPU; ``inputs`` in ``input_names`` order)."""
    from lstmdet.export.runtime import _onnxruntime

    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])

    def run(inputs: list[Tensor]) -> list[np.ndarray]:
        return session.run(None, {name: x.numpy() for name, x in zip(input_names, inputs, strict=True)})

    return run


def check_onnx(path: Path, prepared: Any, batch: int | None, size: tuple[int, int] | None) -> None:
    """Run the written file in ONNX Runtime at batch sizes other than the example's (dynamic) or the fixed one.

    Raises:
        ExportError: The graph fails at one of them (a part uses the batch size as a Python number).
    """
    from lstmdet.export.runtime import make_session

    session = make_session(path)
    for n in (1, 3) if batch is None else (batch,):
        inputs = inputs_at(prepared, size or prepared.image_size, n)
        feed = {name: x.numpy() for name, x in zip(prepared.input_names, inputs, strict=True)}
        try:
            session.run(None, feed)
        except Exception as exc:  # (ONNX Runtime raises its own types)
            raise ExportError(
                f"the exported graph {path} fails in ONNX Runtime at batch size {n} ({str(exc).splitlines()[0][:300]});"
                " a part uses the batch size as a Python number: export with --batch N for a fixed batch"
            ) from None
