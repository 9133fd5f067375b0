"""The contract of an exported lstmdet file: input and output names, the input size, metadata keys.

One home for what the exporter writes and what a runtime (``lstmdet.export.runtime``, or someone
running the file without lstmdet) reads. README section "Export" documents the same contract.

* Input ``images``: float32 ``(N, 3, H, W)``, RGB in ``[0, 1]``; normalisation and the zero padding
  to a multiple of the stride happen inside the graph. Detectors take any ``H, W`` (dynamic axes)
  unless a part needs a fixed size; classifiers, and such detectors, take :func:`input_size`.
* Optional input ``image_sizes`` (detectors; in TorchScript files the keyword argument after the state):
  int64 ``(N, 2)`` or ``(1, 2)``, the height and width of each image inside a padded batch; boxes are
  clipped to it (default: the batch's ``H, W``).
* Stateful models (ConvLSTM) take one more input per state tensor, ``state_in_<level>_<layer>_h`` and
  ``..._c`` (zeros start a video), and return ``state_out_<level>_<layer>_h`` / ``_c`` after the
  detections.
* Detectors return :data:`DETECT_OUTPUTS`; classifiers :data:`CLASSIFY_OUTPUTS`.
"""

from __future__ import annotations

import json
import math
from typing import Any

#: The image input.
IMAGES = "images"
#: The optional input of detectors: each image's (height, width) inside the batch, int64 (N, 2) or (1, 2).
IMAGE_SIZES = "image_sizes"
SIZES_WORDS = (
    "int64 (N, 2) or (1, 2): each image's height, width inside the batch; boxes are clipped to it "
    "(default: the batch's H, W)"
)
#: Outputs of a detector, in order: boxes (N, K, 4) xyxy input pixels, scores (N, K), labels (N, K)
#: int64 (-1 in padding rows), num_detections (N,) int64 (rows ``[0, num_detections)`` are real).
DETECT_OUTPUTS: tuple[str, ...] = ("boxes", "scores", "labels", "num_detections")
#: Output of a classifier: logits (N, num_classes).
CLASSIFY_OUTPUTS: tuple[str, ...] = ("logits",)
#: Value of the ``format`` metadata key.
FORMAT = "lstmdet.export/1"

#: Metadata keys (ONNX ``metadata_props``; the TorchScript file's ``lstmdet.json`` extra file).
META_KEYS: tuple[str, ...] = (
    "format",  # FORMAT
    "task",  # "detect" or "classify"
    "classes",  # JSON list of class names; label i is classes[i]
    "input",  # JSON: name, shape [N or null, 3, H or null, W or null], dtype, range, mean, std, resize, pad_value,
    # size_divisible, dynamic_size, fixed_size (why H, W are fixed, or null), optional_inputs
    "outputs",  # JSON list of output names, in order (state outputs included)
    "postprocess",  # JSON: score_thresh, nms_thresh, detections_per_img, topk_candidates (detectors)
    "state",  # JSON list of {"input", "output", "shape": [null, C, h, w], "stride"} (stateful; [] otherwise)
    "batch",  # "dynamic" or the fixed batch size
    "precision",  # "float32" or "float16" (weights and compute; inputs and outputs stay float32)
    "exporter",  # how the file was made, e.g. "torch.onnx TorchScript-based exporter, opset 17"
    "lstmdet_version",
    "config",  # JSON: the model config the file was exported from
)


def input_size(config: dict[str, Any]) -> tuple[int, int]:
    """The fixed ``(H, W)`` of an exported model's ``images`` input.

    Classifiers: ``model.input.size`` (``[h, w]``). Detectors: ``(size, max_size)``: every image
    whose resized size (shorter side to ``size``, longer capped at ``max_size``) is landscape fits
    in it exactly as the PyTorch model resizes it (square configs: ``(size, size)``).
    """
    spec = config["model"]["input"]
    if config["task"] == "classify":
        height, width = spec["size"]
        return int(height), int(width)
    return int(spec["size"]), int(spec["max_size"])


def resize_policy(config: dict[str, Any], dynamic: bool = False) -> str:
    """The metadata's words for how images are brought to the input size.

    Args:
        config: The model config.
        dynamic: The graph takes any ``H, W`` (detectors whose parts all allow it).
    """
    height, width = input_size(config)
    if config["task"] == "classify":
        return f"resize to {height}x{width} (H x W), bilinear with antialiasing"
    size, max_size = config["model"]["input"]["size"], config["model"]["input"]["max_size"]
    scale = (
        f"keep the aspect ratio: scale = min({size} / shorter side, {max_size} / longer side) as PyTorch lstmdet does"
    )
    if dynamic:
        return (
            f"{scale}; size = floor(h * scale) x floor(w * scale); bilinear (align_corners=False); H, W are dynamic: "
            "one image may go in at its resized size; for a batch, put each image at the top left of a "
            "max-height x max-width canvas (pad_value elsewhere: zero after normalisation, as PyTorch pads) and pass "
            "image_sizes; boxes come out in resized pixels: divide by the scale for original pixels"
        )
    return (
        f"{scale}; when that does not fit {height}x{width} (H x W), scale = min({height} / h, {width} / w); "
        "bilinear (align_corners=False); put the image at the top left and fill the rest with pad_value "
        "(the normalisation mean: zero after normalisation, as PyTorch pads); boxes come out in input pixels: "
        "divide by the scale for original pixels and clip to the resized image"
    )


def fit_size(height: int, width: int, config: dict[str, Any]) -> tuple[int, int]:
    """The size an ``height x width`` image is resized to before it goes into an exported detector.

    PyTorch's size (:func:`lstmdet.transforms.resized_size`) when it fits :func:`input_size`, else
    the largest size of the same aspect ratio that fits (floored as torchvision floors).
    """
    from lstmdet.transforms import resized_size

    spec = config["model"]["input"]
    in_h, in_w = input_size(config)
    size = resized_size(height, width, spec["size"], spec["max_size"])
    if size[0] <= in_h and size[1] <= in_w:
        return size
    scale = min(in_h / height, in_w / width)
    return min(in_h, math.floor(height * scale)), min(in_w, math.floor(width * scale))


def state_names(level: str, layer: int) -> list[tuple[str, str]]:
    """``(input name, output name)`` of the ``h`` and ``c`` state tensors of one ConvLSTM layer."""
    return [(f"state_in_{level}_{layer}_{part}", f"state_out_{level}_{layer}_{part}") for part in ("h", "c")]


def metadata(
    *,
    config: dict[str, Any],
    classes: list[str],
    outputs: list[str],
    state: list[dict[str, Any]],
    postprocess: dict[str, Any] | None,
    batch: int | None,
    half: bool,
    exporter: str,
    fixed_size: str | None = "the exporter fixed it",
    stride: int = 1,
    sizes_input: bool = False,
) -> dict[str, str]:
    """The metadata of an exported file, every value a string (JSON where structured).

    Args:
        config: The model config.
        classes: Class names.
        outputs: Output names in order.
        state: One ``{"input", "output", "shape"}`` per state tensor (empty when stateless).
        postprocess: The detection post-processing baked into the graph, or ``None`` (classifier).
        batch: Fixed batch size, or ``None`` for a dynamic one.
        half: Float16 weights and compute.
        exporter: How the file was made.
        fixed_size: Why ``H, W`` are fixed at :func:`input_size`, or ``None`` when they are dynamic.
        stride: The multiple the graph pads ``H, W`` up to (``size_divisible``).
        sizes_input: The graph has the optional :data:`IMAGE_SIZES` input.
    """
    from lstmdet import __version__

    height, width = input_size(config)
    dynamic = fixed_size is None
    spec = config["model"]["input"]
    mean, std = list(spec["mean"]), list(spec["std"])
    meta = {
        "format": FORMAT,
        "task": config["task"],
        "classes": json.dumps(list(classes)),
        "input": json.dumps(
            {
                "name": IMAGES,
                "shape": [batch, 3, None if dynamic else height, None if dynamic else width],
                "dtype": "float32",
                "range": [0.0, 1.0],
                "layout": "NCHW RGB",
                "mean": mean,
                "std": std,
                "resize": resize_policy(config, dynamic),
                "pad_value": mean,
                "size_divisible": int(stride),
                "dynamic_size": dynamic,
                "fixed_size": None if dynamic else f"H, W fixed at {height}x{width}: {fixed_size}",
                "batch": "dynamic" if batch is None else f"fixed at {batch}",
                "optional_inputs": {IMAGE_SIZES: SIZES_WORDS} if sizes_input else {},
            }
        ),
        "outputs": json.dumps(list(outputs)),
        "postprocess": json.dumps(postprocess or {}),
        "state": json.dumps(state),
        "batch": "dynamic" if batch is None else str(batch),
        "precision": "float16" if half else "float32",
        "exporter": exporter,
        "lstmdet_version": __version__,
        "config": json.dumps(config),
    }
    assert set(meta) == set(META_KEYS)
    return meta


def parse_metadata(meta: dict[str, str], source: str) -> dict[str, Any]:
    """Decode the metadata strings of an exported file (JSON values decoded).

    Raises:
        ExportError: The file is not an lstmdet export (no ``format`` key) or a value is not valid JSON.
    """
    from lstmdet.errors import ExportError

    if meta.get("format") != FORMAT:
        raise ExportError(
            f"{source} is not a file lstmdet exported (metadata format {meta.get('format')!r}, expected {FORMAT!r}); "
            "export it with `lstmdet export`"
        )
    out: dict[str, Any] = dict(meta)
    try:
        for key in ("classes", "input", "outputs", "postprocess", "state", "config"):
            out[key] = json.loads(meta[key])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ExportError(f"{source} has broken lstmdet metadata ({exc}); export the model again") from None
    out["batch"] = None if meta.get("batch") == "dynamic" else int(meta["batch"])
    return out
