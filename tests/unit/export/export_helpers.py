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

    Rows past ``num_detections`` are padding (label -1, score 0); the real rows are compared by
    :func:`assert_same_prediction`.
    """
    n = int(got[3][index])
    assert (np.asarray(got[2][index][n:]) == -1).all() and (np.asarray(got[1][index][n:]) == 0).all()
    real = {
        k: torch.as_tensor(np.asarray(a[index][:n])) for k, a in zip(("boxes", "scores", "labels"), got, strict=False)
    }
    assert_same_prediction(real, ref, top, f"image {index}")


def assert_same_prediction(
    got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], top: int = 30, what: str = ""
) -> None:
    """Detections ``got`` equal PyTorch's ``ref`` (``boxes``, ``scores``, ``labels`` each).

    Same number of detections; the sorted scores agree within ``SCORE_TOL``; each of PyTorch's ``top`` best
    detections has one in ``got`` with the same label, its box within ``BOX_TOL`` px and its score within
    ``SCORE_TOL`` (so that near-ties ordered differently still match).
    """
    boxes, scores, labels = (got[k].numpy() for k in ("boxes", "scores", "labels"))
    ref_boxes, ref_scores, ref_labels = (ref[k].numpy() for k in ("boxes", "scores", "labels"))
    assert len(scores) == len(ref_scores), f"{what}: {len(scores)} detections, {len(ref_scores)} in PyTorch"
    np.testing.assert_allclose(np.sort(scores)[::-1][:top], np.sort(ref_scores)[::-1][:top], atol=SCORE_TOL, rtol=0)
    for i in np.argsort(-ref_scores, kind="stable")[:top]:
        close = (
            (labels == ref_labels[i])
            & (np.abs(scores - ref_scores[i]) <= SCORE_TOL)
            & (np.abs(boxes - ref_boxes[i]).max(axis=1) <= BOX_TOL)
        )
        assert close.any(), f"{what}: PyTorch detection {ref_boxes[i]} {ref_scores[i]} {ref_labels[i]} missing"


def assert_same_records(exported: list[dict], pytorch: list[dict]) -> None:
    """``detections.jsonl`` lines of an ONNX Runtime run equal a PyTorch run's (tolerances as above).

    Same files, errors and sizes in the same order; per image the same number of detections, and each
    PyTorch detection has an exported one of the same class with its box within ``BOX_TOL`` px (xyxy)
    and its score within ``SCORE_TOL`` (plus the 5-decimal rounding of the file).
    """
    assert [r["file"] for r in exported] == [r["file"] for r in pytorch]
    for got, ref in zip(exported, pytorch, strict=True):
        assert {k: v for k, v in got.items() if k != "detections"} == {
            k: v for k, v in ref.items() if k != "detections"
        }
        if "error" in ref:
            continue
        assert len(got["detections"]) == len(ref["detections"]), got["file"]
        boxes = np.array([_xyxy(d["bbox"]) for d in got["detections"]]).reshape(-1, 4)
        scores = np.array([d["score"] for d in got["detections"]])
        labels = np.array([d["category_id"] for d in got["detections"]])
        for d in ref["detections"]:
            close = (
                (labels == d["category_id"])
                & (np.abs(scores - d["score"]) <= SCORE_TOL + 1e-5)
                & (np.abs(boxes - _xyxy(d["bbox"])).max(axis=1) <= BOX_TOL)
            )
            assert close.any(), f"{ref['file']}: PyTorch detection {d} has no exported counterpart"


def _xyxy(bbox: list[float]) -> np.ndarray:
    x, y, w, h = bbox
    return np.array([x, y, x + w, y + h])
