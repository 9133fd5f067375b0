"""Augmentation pipelines: boxes follow the image, clips share one transform, configs fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lstmdet.data.augment import PRESETS, Augment, build_augment, collate, to_tensors
from lstmdet.errors import ConfigError, LstmdetError

H, W = 40, 60


def _detect(boxes, labels, track_ids=None):
    target = {"boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4), "labels": np.asarray(labels, np.int64)}
    if track_ids is not None:
        target["track_ids"] = np.asarray(track_ids, np.int64)
    return target


def _painted(boxes, shape=(H, W)):
    """A black image with each (integer) box painted white: the image content marks where the box is."""
    image = np.zeros((*shape, 3), np.uint8)
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=int):
        image[y1:y2, x1:x2] = 255
    return image


def _extent(image):
    """xyxy extent of the bright pixels of an (H, W, 3) image, in the same continuous pixel convention."""
    ys, xs = np.nonzero(image[..., 0] > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def test_horizontal_flip_moves_a_known_box():
    aug = build_augment("detect", "train", {"transforms": [{"name": "HorizontalFlip", "p": 1.0}]})
    image = _painted([[10, 5, 20, 25]])
    out, target = aug(image, _detect([[10, 5, 20, 25]], [3]))
    # Flip about the vertical axis of a W=60 image: x -> W - x, so [10, 20] -> [60 - 20, 60 - 10] = [40, 50].
    np.testing.assert_allclose(target["boxes"], [[40, 5, 50, 25]], atol=1e-3)
    np.testing.assert_array_equal(out, image[:, ::-1])
    np.testing.assert_allclose(_extent(out), target["boxes"][0], atol=1e-3)
    assert target["labels"].tolist() == [3] and target["labels"].dtype == np.int64
    assert target["boxes"].dtype == np.float32


def test_affine_translation_moves_a_known_box_and_its_pixels():
    spec = {"transforms": [{"name": "Affine", "translate_px": {"x": 7, "y": -3}, "p": 1.0}]}
    aug = build_augment("detect", "train", spec)
    image = _painted([[10, 10, 20, 30]])
    out, target = aug(image, _detect([[10, 10, 20, 30]], [1]))
    # A pure translation by (+7, -3) px: every coordinate moves by exactly that much.
    np.testing.assert_allclose(target["boxes"], [[17, 7, 27, 27]], atol=1e-3)
    np.testing.assert_allclose(_extent(out), [17, 7, 27, 27], atol=1e-3)


def test_boxes_leaving_the_image_are_dropped_and_fields_stay_aligned():
    spec = {"transforms": [{"name": "Affine", "translate_px": {"x": 53, "y": 0}, "p": 1.0}], "min_visibility": 0.5}
    aug = build_augment("detect", "train", spec)
    boxes = [[0, 0, 10, 10], [5, 20, 15, 30], [30, 30, 40, 40]]
    _, target = aug(_painted(boxes), _detect(boxes, [1, 2, 3], track_ids=[10, 20, 30]))
    # +53 px in a 60 px wide image: box 1 -> [53, 63] keeps 7/10 of its area (kept, clipped to [53, 60]);
    # box 2 -> [58, 68] keeps 2/10 (< 0.5, dropped); box 3 -> [83, 93] leaves the image (dropped).
    np.testing.assert_allclose(target["boxes"], [[53, 0, 60, 10]], atol=1e-3)
    assert target["labels"].tolist() == [1]
    assert target["track_ids"].tolist() == [10]


def test_identity_clips_boxes_and_drops_degenerate_ones():
    aug = build_augment("detect", "eval", {"preset": "standard"})
    assert aug.identity
    image = np.zeros((H, W, 3), np.uint8)
    out, target = aug(image, _detect([[-5, 2, 10, 12], [4, 4, 4, 9], [50, 30, 70, 50]], [0, 1, 2], [7, 8, 9]))
    np.testing.assert_allclose(target["boxes"], [[0, 2, 10, 12], [50, 30, 60, 40]])
    assert target["labels"].tolist() == [0, 2] and target["track_ids"].tolist() == [7, 9]
    assert out is image or np.array_equal(out, image)


def test_a_clip_gets_the_same_transform_on_every_frame():
    rng = np.random.default_rng(0)
    per_frame = [[[5, 5, 15, 20]], [[30, 10, 45, 25], [2, 28, 12, 38]], [[5, 5, 15, 20]], [[40, 2, 55, 12]]]
    # Frames 0 and 2 are identical (same content, same box); 1 and 3 differ. Content = painted boxes + noise.
    clip = np.stack([_painted(b) for b in per_frame])
    clip[1] |= rng.integers(0, 60, (H, W, 3), dtype=np.uint8)
    frames = [_detect(b, list(range(len(b))), [100 * f + i for i in range(len(b))]) for f, b in enumerate(per_frame)]
    # Axis-aligned geometry (flip, scale, shift) keeps painted rectangles rectangles, so each frame's
    # transformed box must match where its own painted rectangle went.
    spec = {"preset": "standard", "hflip": 0.5, "vflip": 0.5, "p": 1.0, "seed": 0, "min_visibility": 0.0}
    aug = build_augment("detect", "train", spec)
    moved = 0
    for trial in range(6):
        aug.set_seed(trial)
        out, target = aug(clip, {"frames": frames})
        assert out.shape[0] == 4 and len(target["frames"]) == 4
        np.testing.assert_array_equal(out[0], out[2])
        np.testing.assert_array_equal(target["frames"][0]["boxes"], target["frames"][2]["boxes"])
        for f in (0, 3):  # single-box frames that stay inside the image
            (box,) = target["frames"][f]["boxes"]
            np.testing.assert_allclose(_extent(out[f]), box, atol=1.5)
        for frame in target["frames"]:
            assert len(frame["boxes"]) == len(frame["labels"]) == len(frame["track_ids"])
            assert all(t // 100 == f for f, fr in enumerate(target["frames"]) for t in fr["track_ids"])
        moved += not np.allclose(target["frames"][0]["boxes"], per_frame[0], atol=0.5)
    assert moved >= 4  # the transforms really ran


def test_clip_boxes_transform_as_the_still_frame_would():
    spec = {"transforms": [{"name": "Affine", "scale": 1.5, "translate_px": {"x": -4, "y": 6}, "p": 1.0}]}
    aug = build_augment("detect", "train", spec)
    boxes = [[[10, 10, 20, 20]], [[30, 5, 50, 25]]]
    clip = np.stack([_painted(b) for b in boxes])
    out, target = aug(clip, {"frames": [_detect(b, [0]) for b in boxes]})
    for f, b in enumerate(boxes):  # the deterministic transform on each frame alone gives the same result
        still, still_target = aug(clip[f], _detect(b, [0]))
        np.testing.assert_array_equal(out[f], still)
        np.testing.assert_allclose(target["frames"][f]["boxes"], still_target["boxes"], atol=1e-4)


def test_classify_clip_frames_stay_identical():
    clip = np.repeat(np.random.default_rng(1).integers(0, 255, (1, 28, 28, 3), dtype=np.uint8), 3, axis=0)
    aug = build_augment("classify", "train", {"preset": "standard", "p": 1.0, "seed": 3})
    out, target = aug(clip, {"label": 4})
    assert target == {"label": 4}
    assert not np.array_equal(out[0], clip[0])
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])


def test_seeding_repeats_and_transforms_draw_independently():
    aug = build_augment("detect", "train", {"preset": "none", "hflip": 0.5, "vflip": 0.5})
    image, target = np.zeros((H, W, 3), np.uint8), _detect([[0, 0, 10, 10]], [0])
    aug.set_seed(5)
    first = [aug(image, target)[1]["boxes"] for _ in range(10)]
    aug.set_seed(5)
    again = [aug(image, target)[1]["boxes"] for _ in range(10)]
    np.testing.assert_array_equal(np.stack(first), np.stack(again))
    # albumentations 2 seeds every transform of a seeded Compose alike, which would flip both axes or
    # neither; Augment shares one stream, so over 40 draws all four combinations occur.
    outcomes = {tuple(aug(image, target)[1]["boxes"][0].round().astype(int)) for _ in range(40)}
    assert len(outcomes) == 4


@pytest.mark.parametrize("task", ["classify", "detect"])
@pytest.mark.parametrize("preset", PRESETS)
def test_presets_build_and_run(task, preset):
    aug = build_augment(task, "train", {"preset": preset})
    assert isinstance(aug, Augment) and aug.identity == (preset == "none")
    assert not any("Flip" in type(t).__name__ for t in aug.transforms)  # digits are not flip-symmetric
    assert build_augment(task, "eval", {"preset": preset}).identity
    image = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    target = {"label": 2} if task == "classify" else _detect([[10, 10, 30, 30]], [2])
    out, _ = aug(image, target)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert build_augment(task, "train", None).identity


def test_unknown_transform_name_names_the_field():
    spec = {"transforms": [{"name": "HorizontalFlip"}, {"name": "HorizontalFlp", "p": 1}]}
    with pytest.raises(ConfigError) as info:
        build_augment("detect", "train", spec)
    assert info.value.field == "data.augment.transforms[1].name"
    assert "HorizontalFlip" in str(info.value)  # the close match is suggested


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"transforms": [{"name": "Affine", "scael": 2}]}, "data.augment.transforms[0]", ["Affine", "scael"]),
        ({"transforms": [{"name": "HorizontalFlip", "p": 3}]}, "data.augment.transforms[0]", ["HorizontalFlip", "p"]),
        ({"transforms": [{"name": "OneOf", "transforms": [{"name": "Nope"}]}]},
         "data.augment.transforms[0].transforms[0].name", ["Nope"]),
        ({"transforms": "HorizontalFlip"}, "data.augment.transforms", ["list"]),
        ({"preset": "heavy"}, "data.augment.preset", ["light", "standard"]),
        ({"rotation": 5}, "data.augment.rotation", ["rotate"]),
        ({"hflip": 2}, "data.augment.hflip", ["between 0 and 1"]),
    ],
)  # fmt: skip
def test_bad_specs_raise_config_errors(spec, field, words):
    with pytest.raises(ConfigError) as info:
        build_augment("detect", "train", spec)
    assert info.value.field == field
    for word in words:
        assert word in str(info.value)


def test_malformed_items_raise_clear_errors():
    aug = build_augment("detect", "train", None)
    with pytest.raises(LstmdetError, match="numpy"):
        aug(torch.zeros(3, 8, 8), _detect([], []))
    with pytest.raises(LstmdetError, match="frames"):
        aug(np.zeros((2, 8, 8, 3), np.uint8), {"frames": [_detect([], [])]})


def test_to_tensors_and_collate_stills():
    image = np.full((H, W, 3), 255, np.uint8)
    tensor, target = to_tensors(image, {"label": 7}, "classify")
    assert tensor.shape == (3, H, W) and tensor.dtype == torch.float32 and tensor.max() == 1.0
    assert target["labels"].dtype == torch.int64 and target["labels"].dim() == 0 and int(target["labels"]) == 7
    tensor, target = to_tensors(image, _detect([[1, 2, 3, 4]], [5]), "detect")
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (1, 4)
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [5]
    empty = to_tensors(image, _detect([], []), "detect")[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    images, targets = collate([(tensor, target), (tensor[:, :, :10], empty)])
    assert isinstance(images, list) and [i.shape for i in images] == [(3, H, W), (3, H, 10)]
    assert len(targets) == 2 and targets[1] is empty


def test_to_tensors_and_collate_clips_are_clip_major():
    clips = [np.full((3, H, W, 3), c, np.uint8) for c in (0, 255)]
    batch = []
    for c, clip in enumerate(clips):
        frames = [_detect([[f, f, f + 5, f + 5]], [c], [f]) for f in range(3)]
        tensor, target = to_tensors(clip, {"frames": frames}, "detect")
        assert tensor.shape == (3, 3, H, W) and tensor.dtype == torch.float32
        assert isinstance(target, list) and len(target) == 3
        batch.append((tensor, target))
    images, targets = collate(batch)
    assert [i.shape for i in images] == [(3, 3, H, W)] * 2
    # B * T targets, all frames of clip 0 first, then clip 1.
    assert [int(t["labels"][0]) for t in targets] == [0, 0, 0, 1, 1, 1]
    assert [int(t["track_ids"][0]) for t in targets] == [0, 1, 2, 0, 1, 2]
    _, classify_targets = to_tensors(clips[0], {"label": 4}, "classify")
    assert [int(t["labels"]) for t in classify_targets] == [4, 4, 4]
