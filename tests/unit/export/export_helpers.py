"""Helpers of the export tests: random-initialised models from the shipped configs, real inputs, comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
import yaml
from helpers import ROOT
from PIL import Image

from lstmdet.model import LstmdetModel, build_model
from lstmdet.plugins.datasets_digits import DigitsDet, DigitsVideo

#: Tolerances of the issue: boxes in pixels, scores absolute.
BOX_TOL, SCORE_TOL = 0.5, 1e-4
PHOTOS = sorted((ROOT / "tests" / "data" / "coco30" / "images").glob("*.jpg"))


def config(name: str, **input_override: Any) -> dict[str, Any]:
    """The model part of ``configs/NAME.yaml`` or ``examples/models/NAME.yaml`` (``examples/`` prefix)."""
    if name.startswith("examples/"):
        path = ROOT / "examples" / "models" / f"{name.split('/', 1)[1]}.yaml"
    else:
        path = ROOT / "configs" / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    raw = {"task": raw["task"], "model": raw["model"]}
    if input_override:
        raw["model"]["input"] = {**raw["model"]["input"], **input_override}
    return raw


def random_model(raw: dict[str, Any], seed: int = 0, registry: Any = None) -> LstmdetModel:
    """The model of ``raw``, random weights (nothing trained, nothing downloaded), in eval mode.

    Detection heads keep scores above 0.01 and get their weights spread (std 0.05 added), so that
    scores are distinct (a fresh RetinaNet scores every anchor at its prior) and boxes real.
    """
    raw = {"task": raw["task"], "model": dict(raw["model"])}
    if raw["task"] == "detect":
        raw["model"]["head"] = {**raw["model"]["head"], "score_thresh": 0.01}
    torch.manual_seed(seed)
    model = build_model(raw, registry=registry).eval()
    if raw["task"] == "detect":
        with torch.no_grad():
            for p in model.head.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return model


def photos(size: tuple[int, int], count: int) -> torch.Tensor:
    """``count`` coco30 photos resized to ``size`` ``(H, W)``: ``(count, 3, H, W)`` in ``[0, 1]``."""
    images = []
    for path in PHOTOS[:count]:
        image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
        images.append(F.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0])
    return torch.stack(images).clamp(0, 1)


def digit_scenes(size: int, count: int, seed: int = 5) -> torch.Tensor:
    """``count`` generated ``digits_det`` scenes (held-out digits): ``(count, 3, size, size)`` in ``[0, 1]``."""
    data = DigitsDet(images=count, seed=seed, size=size, split="test")
    return torch.stack([torch.from_numpy(data[i][0]).permute(2, 0, 1).float() / 255 for i in range(count)])


def digit_clips(size: int, clips: int, frames: int) -> torch.Tensor:
    """Generated ``digits_video`` clips: ``(clips, frames, 3, size, size)`` in ``[0, 1]``."""
    data = DigitsVideo(clips=clips, frames=frames, seed=4, size=size, split="test")
    return torch.stack([torch.from_numpy(data[i][0]).permute(0, 3, 1, 2).float() / 255 for i in range(clips)])


def session(path: Path) -> ort.InferenceSession:
    """A CPU ONNX Runtime session for ``path``."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def assert_same_detections(got: list[np.ndarray], index: int, ref: dict[str, torch.Tensor], top: int = 30) -> None:
    """Image ``index`` of exported outputs ``(boxes, scores, labels, num_detections)`` equals PyTorch's ``ref``.

    Same number of detections; the sorted scores agree within ``SCORE_TOL``; each of PyTorch's ``top`` best
    detections has an exported one with the same label, its box within ``BOX_TOL`` px and its score within
    ``SCORE_TOL`` (so that near-ties ordered differently still match).
    """
    n = int(got[3][index])
    boxes, scores, labels = (np.asarray(a[index][:n]) for a in got[:3])
    ref_boxes, ref_scores, ref_labels = (ref[k].numpy() for k in ("boxes", "scores", "labels"))
    assert n == len(ref_scores), f"image {index}: {n} detections exported, {len(ref_scores)} in PyTorch"
    assert (np.asarray(got[2][index][n:]) == -1).all() and (np.asarray(got[1][index][n:]) == 0).all()
    np.testing.assert_allclose(np.sort(scores)[::-1][:top], np.sort(ref_scores)[::-1][:top], atol=SCORE_TOL, rtol=0)
    for i in np.argsort(-ref_scores, kind="stable")[:top]:
        close = (
            (labels == ref_labels[i])
            & (np.abs(scores - ref_scores[i]) <= SCORE_TOL)
            & (np.abs(boxes - ref_boxes[i]).max(axis=1) <= BOX_TOL)
        )
        assert close.any(), f"image {index}: PyTorch detection {ref_boxes[i]} {ref_scores[i]} {ref_labels[i]} missing"
