"""Evaluation of clips (lstmdet.engine.evaluate): every frame of every clip is scored, in order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from lstmdet.engine.data import AugmentedDataset
from lstmdet.engine.evaluate import evaluate
from lstmdet.engine.metrics import coco_detection_metrics
from lstmdet.plugins.datasets_digits import DigitsVideo

CLASSES = [str(d) for d in range(10)]


class FirstFrameBoxes(nn.Module):
    """A stand-in detector for clips: predicts, on every frame, the boxes the clip has on frame 0.

    The digits move, so the predictions drift away from the truth frame after frame: a known,
    order-dependent mix of hits and misses. Clips must arrive in dataset order (no shuffling).
    """

    task = "detect"

    def __init__(self, video: DigitsVideo) -> None:
        super().__init__()
        self.classes = CLASSES
        self.first = [video[i][1]["frames"][0] for i in range(len(video))]
        self.served = 0

    def predict(self, clips: list[Tensor]) -> list[list[dict[str, Tensor]]]:
        out = []
        for clip in clips:
            first = self.first[self.served]
            self.served += 1
            n = len(first["labels"])
            frame = {"boxes": torch.from_numpy(first["boxes"]), "scores": torch.ones(n),
                     "labels": torch.from_numpy(first["labels"])}  # fmt: skip
            out.append([frame] * clip.shape[0])
        return out


def test_clip_evaluation_scores_every_frame():
    video = DigitsVideo(clips=5, frames=6, seed=2, size=64, speed=(2.0, 3.0), split="test")
    model = FirstFrameBoxes(video)
    dataset = AugmentedDataset(video, task="detect", split="eval", augment=None, seed=0)
    metrics = evaluate(model, dataset, batch_size=2)

    gt, preds = [], []  # the same computation, frame by frame, written out here
    for i in range(len(video)):
        frames = video[i][1]["frames"]
        for frame in frames:
            gt.append({"boxes": frame["boxes"], "labels": frame["labels"], "width": 64, "height": 64})
            preds.append({"boxes": frames[0]["boxes"], "scores": np.ones(len(frames[0]["labels"])),
                          "labels": frames[0]["labels"]})  # fmt: skip
    expected = coco_detection_metrics(gt, preds, CLASSES)
    assert metrics["images"] == 5 * 6 == expected["images"]
    assert metrics["map"] == pytest.approx(expected["map"]) and metrics["map_50"] == pytest.approx(expected["map_50"])
    assert 0.1 < metrics["map"] < 0.9  # frame 0 is perfect, later frames drift: neither 0 nor 1
    first_only = coco_detection_metrics(gt[::6], preds[::6], CLASSES)
    assert first_only["map"] > 0.99 > metrics["map"] + 0.05


class MeanClassifier(nn.Module):
    """Predicts "bright" for bright images and "dark" for dark ones; records every image it is shown."""

    task = "classify"

    def __init__(self, classes: list[str]) -> None:
        super().__init__()
        self.classes = classes
        self.seen: list[float] = []

    def predict(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        means = [float(image.mean()) for image in images]
        self.seen.extend(means)
        labels = [self.classes.index("bright" if m > 0.5 else "dark") for m in means]
        return [{"labels": torch.tensor(label), "scores": torch.ones(len(self.classes))} for label in labels]


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image_is_skipped_not_replaced(tmp_path, workers):
    """A file that fails only when decoded is left out and counted; no other image is scored in its place."""
    from PIL import Image

    from lstmdet.plugins.datasets_classification import ImageFolder

    for cls, value, count in (("bright", 230, 2), ("dark", 20, 3)):
        (tmp_path / cls).mkdir()
        for i in range(count):
            Image.new("RGB", (16, 16), (value + i, value, value)).save(tmp_path / cls / f"{i}.png")
    truncated = tmp_path / "bright" / "1.png"
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    noisy.save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])  # the header reads, the pixels do not

    folder = ImageFolder(tmp_path)
    assert len(folder) == 5 and folder.classes == ["bright", "dark"]
    model = MeanClassifier(folder.classes)
    dataset = AugmentedDataset(folder, task="classify", split="eval", augment={"preset": "none"}, seed=0)
    with pytest.warns(UserWarning, match=r"left out 1 unreadable image files: .*bright/1\.png"):
        metrics = evaluate(model, dataset, batch_size=2, workers=workers)
    assert metrics["skipped"] == 1
    assert len(model.seen) == 4  # four images scored, none twice (before: the dark 0.png in 1.png's place)
    assert np.sum(metrics["confusion"]) == 4 and metrics["accuracy"] == 1.0
