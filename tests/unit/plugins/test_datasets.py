"""Built-in dataset plugins: contract, determinism, tight boxes, protocol splits, bad data, CLI."""

from __future__ import annotations

import gzip
import itertools
import json

import numpy as np
import pytest
from helpers import ROOT
from PIL import Image
from pycocotools.coco import COCO

import lstmdet
from lstmdet.cli.main import main
from lstmdet.data.coco import DataFormatError, yolo_to_coco
from lstmdet.plugins.datasets_classification import ImageFolder, MnistIdx
from lstmdet.plugins.datasets_detection import CocoDetection, YoloDetection
from lstmdet.plugins.datasets_digits import FADE_LEVEL, INK_THRESHOLD, DigitsDet, DigitsVideo, _iou, digit_patch

COCO30 = ROOT / "tests" / "data" / "coco30"
NAMES = ("mnist_idx", "image_folder", "coco", "yolo", "digits_det", "digits_video")


def test_registered_through_entry_points():
    datasets = lstmdet.components()["datasets"]
    assert {n: datasets.get(n) for n in NAMES} == {
        "mnist_idx": "datasets_classification",
        "image_folder": "datasets_classification",
        "coco": "datasets_detection",
        "yolo": "datasets_detection",
        "digits_det": "datasets_digits",
        "digits_video": "datasets_digits",
    }


# --------------------------------------------------------------------------- classification


def test_mnist_idx_protocol_splits(mnist):
    train_digits, train_labels = (t.numpy() for t in mnist["train"])
    sizes = {s: len(MnistIdx(split=s)) for s in ("train", "val", "trainval", "test")}
    assert sizes == {"train": 7000, "val": 1000, "trainval": 8000, "test": 2000}
    val = MnistIdx(split="val", val_count=500)
    np.testing.assert_array_equal(val.digits, train_digits[-500:])
    image, target = MnistIdx(split="train", images=3)[2]
    assert image.shape == (28, 28, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 1], train_digits[2])
    assert target == {"label": int(train_labels[2])}
    np.testing.assert_array_equal(MnistIdx(split="test").digits, mnist["test"][0].numpy())
    ds = MnistIdx(split="test", images=10)
    assert len(ds) == 10 and ds.task == "classify" and ds.classes == [str(i) for i in range(10)]
    with pytest.raises(ValueError, match="split"):
        MnistIdx(split="validation")
    with pytest.raises(ValueError, match="only 2000"):
        MnistIdx(split="test", images=5000)


def test_idx_reading_errors_name_the_file(tmp_path):
    from lstmdet.data.mnist import IMAGES_FILE, LABELS_FILE, read_idx
    from lstmdet.errors import LstmdetError

    good = np.arange(6, dtype=np.uint8).reshape(2, 3)
    header = bytes([0, 0, 0x08, 2]) + np.array([2, 3], dtype=">u4").tobytes()
    (tmp_path / "ok.idx").write_bytes(header + good.tobytes())
    np.testing.assert_array_equal(read_idx(tmp_path / "ok.idx"), good)
    (tmp_path / "short.idx").write_bytes(header + good.tobytes()[:-1])
    with pytest.raises(LstmdetError, match=r"short\.idx is truncated or padded: 17 bytes, header says 18"):
        read_idx(tmp_path / "short.idx")
    (tmp_path / "magic.idx").write_bytes(b"\x01\x02\x08\x02" + good.tobytes())
    with pytest.raises(LstmdetError, match=r"magic\.idx is not an IDX file"):
        read_idx(tmp_path / "magic.idx")
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(LstmdetError, match=r"cannot read IDX file .*bad\.gz"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(LstmdetError, match=r"no MNIST files in .*missing"):
        MnistIdx(root=tmp_path / "missing")
    (tmp_path / "few").mkdir()
    (tmp_path / "few" / IMAGES_FILE).write_bytes(gzip.compress(header + good.tobytes()))
    (tmp_path / "few" / LABELS_FILE).write_bytes(gzip.compress(bytes([0, 0, 0x08, 1, 0, 0, 0, 1, 7])))
    with pytest.raises(LstmdetError, match=r"2 images of shape .* but 1 labels"):
        MnistIdx(root=tmp_path / "few")


def test_image_folder_sorts_classes_and_skips_unreadable(tmp_path):
    for cls, n in (("zebra", 2), ("ant", 1)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            Image.new("RGB", (8, 6), (40 * i, 0, 0)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "ant" / "fake.jpg").write_text("not an image")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "zebra" / "2.png")
    good = (tmp_path / "zebra" / "2.png").read_bytes()
    (tmp_path / "zebra" / "2.png").write_bytes(good[: len(good) // 2])  # header fine, pixel data cut
    with pytest.warns(UserWarning, match="fake.jpg"):
        ds = ImageFolder(tmp_path)
    assert ds.classes == ["ant", "zebra"] and ds.skipped == 1 and len(ds) == 4
    assert [label for _, label in ds.samples] == [0, 1, 1, 1]
    image, target = ds[0]
    assert image.shape == (6, 8, 3) and target == {"label": 0}
    with pytest.warns(UserWarning, match="2.png"):
        image, target = ds[3]  # the truncated file: skipped on first access, the next readable item served
    assert ds.skipped == 2 and target == {"label": 0} and image.shape == (6, 8, 3)
    with pytest.raises(lstmdet.errors.LstmdetError, match="no class sub-folders"):
        ImageFolder(tmp_path / "ant")


# --------------------------------------------------------------------------- detection files


def test_coco_dataset_maps_category_ids_and_handles_bad_boxes(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (50, 40)).save(tmp_path / "images" / "a.png")
    Image.new("RGB", (30, 30)).save(tmp_path / "images" / "b.png")
    (tmp_path / "images" / "c.png").write_bytes(b"")
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 50, "height": 40},
            {"id": 2, "file_name": "b.png", "width": 30, "height": 30},
            {"id": 3, "file_name": "c.png", "width": 30, "height": 30},
        ],
        "categories": [{"id": 9, "name": "nine"}, {"id": 2, "name": "two"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 9, "bbox": [10, 5, 20, 10]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [40, 30, 20, 20]},  # clipped to 40..50 x 30..40
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [1, 1, 5, 5], "iscrowd": 1},
            {"id": 4, "image_id": 2, "category_id": 9, "bbox": [35, 1, 5, 5]},  # outside: dropped
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning) as record:
        ds = CocoDetection(tmp_path / "ann.json")
    messages = " | ".join(str(w.message) for w in record)
    assert "c.png" in messages and "a.png: 1 box(es)" in messages and "b.png" in messages
    assert ds.classes == ["two", "nine"] and ds.category_ids == [2, 9] and ds.task == "detect"
    assert len(ds) == 2 and ds.skipped == 1
    image, target = ds[0]
    assert image.shape == (40, 50, 3) and target["file"].endswith("a.png")
    np.testing.assert_array_equal(target["boxes"], [[10, 5, 30, 15], [40, 30, 50, 40]])
    assert target["boxes"].dtype == np.float32 and target["labels"].tolist() == [1, 0]
    assert ds[1][1]["boxes"].shape == (0, 4)


def test_yolo_dataset_on_coco30_agrees_with_coco_conversion(tmp_path):
    yolo = YoloDetection(COCO30)
    yolo_to_coco(COCO30, tmp_path / "c.json")
    coco = CocoDetection(tmp_path / "c.json", COCO30 / "images")
    assert len(yolo) == len(coco) == 30 and yolo.classes == coco.classes and yolo.skipped == 0
    assert coco.category_ids == list(range(80))
    for index in (0, 19):  # 19: the grey (mode L) photo
        (image, a), (image2, b) = yolo[index], coco[index]
        assert image.shape[2] == 3 and image.dtype == np.uint8
        np.testing.assert_array_equal(image, image2)
        np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-3)
        np.testing.assert_array_equal(a["labels"], b["labels"])
        assert (a["boxes"][:, 2:] <= [image.shape[1], image.shape[0]]).all()


def test_yolo_dataset_errors_name_file_and_line(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "names.yaml").write_text("names: [a, b]\n")
    Image.new("RGB", (10, 10)).save(tmp_path / "images" / "x.jpg")
    (tmp_path / "labels" / "x.txt").write_text("0 0.5 0.5 0.1 0.1\n5 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataFormatError, match=r"x\.txt, line 2: unknown class id 5"):
        YoloDetection(tmp_path)
    (tmp_path / "labels" / "x.txt").write_text("0 0.5 0.5 0.1 0.1 0.3\n")
    with pytest.raises(DataFormatError, match=r"x\.txt, line 1"):
        YoloDetection(tmp_path)
    with pytest.raises(DataFormatError, match="no images/ folder"):
        YoloDetection(tmp_path / "labels")
    (tmp_path / "labels" / "x.txt").unlink()
    with pytest.raises(DataFormatError, match=r"labels/x\.txt is missing"):
        YoloDetection(tmp_path)
    background = YoloDetection(tmp_path, missing_labels="empty")
    assert len(background) == 1 and background[0][1]["boxes"].shape == (0, 4)


# --------------------------------------------------------------------------- digits_det


def test_digits_det_is_deterministic_per_index():
    a, b = DigitsDet(images=20, seed=5), DigitsDet(images=20, seed=5)
    for index in (0, 7, 19):
        (ia, ta), (ib, tb) = a[index], b[index]
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ta["boxes"], tb["boxes"])
        np.testing.assert_array_equal(ta["labels"], tb["labels"])
    assert not np.array_equal(a[0][0], a[1][0])
    assert not np.array_equal(a[0][0], DigitsDet(images=20, seed=6)[0][0])
    image, target = a[3]
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    assert target["boxes"].dtype == np.float32 and target["labels"].dtype == np.int64
    assert 1 <= len(target["labels"]) <= 5 and a.task == "detect" and a.classes == [str(i) for i in range(10)]


def test_digits_det_boxes_are_tight_around_the_ink():
    threshold = INK_THRESHOLD * 255
    clean = DigitsDet(images=12, digits=(1, 1), noise=0.0, background=0.0, size=64)
    for index in range(len(clean)):
        image, target = clean[index]
        ys, xs = np.nonzero(image[..., 0] > threshold)  # the only digit's ink, computed from the pixels
        np.testing.assert_array_equal(target["boxes"][0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    noisy = DigitsDet(images=6, seed=2, noise=0.05)
    for index in range(len(noisy)):
        image, target = noisy[index]
        grey = image[..., 0].astype(float)
        for x1, y1, x2, y2 in target["boxes"].astype(int):
            inside = grey[y1:y2, x1:x2]
            assert inside[0].max() > threshold and inside[-1].max() > threshold  # ink on every edge
            assert inside[:, 0].max() > threshold and inside[:, -1].max() > threshold
            # the rows and columns just outside the box are dark compared with the ink inside
            ring = [grey[y1 - 1, x1:x2] if y1 > 0 else None, grey[y2, x1:x2] if y2 < 128 else None,
                    grey[y1:y2, x1 - 1] if x1 > 0 else None, grey[y1:y2, x2] if x2 < 128 else None]  # fmt: skip
            for line in (r for r in ring if r is not None):
                assert np.median(line) < inside.max() / 2
        for box_a, box_b in itertools.combinations(target["boxes"].tolist(), 2):
            assert _iou(box_a, box_b) <= noisy.max_overlap + 1e-9


def test_digits_det_draws_only_from_its_protocol_split(mnist):
    test_digits = mnist["test"][0].numpy()
    train_digits = mnist["train"][0].numpy()
    ds = DigitsDet(images=8, split="test", digits=(1, 1), noise=0.0, background=0.0, size=64, scale=(1.0, 1.0))
    np.testing.assert_array_equal(ds.digits, test_digits)
    train_set = {d.tobytes() for d in train_digits}
    for index in range(len(ds)):
        scene = ds.scene(index)
        source = int(scene.sources[0])
        assert test_digits[source].tobytes() not in train_set  # a held-out digit
        assert scene.labels[0] == int(mnist["test"][1][source])
        _, ink = digit_patch(test_digits[source], 28)
        x1, y1 = int(scene.boxes[0][0]) - ink[0], int(scene.boxes[0][1]) - ink[1]
        np.testing.assert_array_equal(scene.image[y1 : y1 + 28, x1 : x1 + 28, 0], test_digits[source])
    assert DigitsDet(images=1).digits.shape == (8000, 28, 28)
    with pytest.raises(ValueError, match="split"):
        DigitsDet(split="val")


# --------------------------------------------------------------------------- digits_video


def test_digits_video_motion_tracks_and_occlusion():
    ds = DigitsVideo(clips=40, frames=8, seed=3, size=64)
    occluded, total = 0, 0
    bound = ds.speed[1] + 1
    for index in range(len(ds)):
        clip, target = ds[index]
        assert clip.shape == (8, 64, 64, 3) and clip.dtype == np.uint8
        frames = target["frames"]
        assert len(frames) == 8
        for prev, cur in itertools.pairwise(frames):
            np.testing.assert_array_equal(cur["track_ids"], prev["track_ids"])
            np.testing.assert_array_equal(cur["labels"], prev["labels"])
            assert np.abs(cur["boxes"] - prev["boxes"]).max() <= bound
            sizes = lambda f: f["boxes"][:, 2:] - f["boxes"][:, :2]  # noqa: E731
            np.testing.assert_array_equal(sizes(cur), sizes(prev))  # a box keeps its size while it moves
        for frame in frames:
            assert ((frame["boxes"] >= 0) & (frame["boxes"] <= 64)).all()
            occluded += int(frame["occluded"].sum())
            total += len(frame["occluded"])
    assert total > 400 and abs(occluded / total - 0.25) < 0.06

    again = DigitsVideo(clips=40, frames=8, seed=3, size=64)[5]
    np.testing.assert_array_equal(again[0], ds[5][0])
    clear = DigitsVideo(clips=4, frames=5, occlusion=0.0, noise=0.0, background=0.0, digits=(1, 1), size=48)
    for index in range(len(clear)):
        clip, target = clear[index]
        for t in range(5):
            ys, xs = np.nonzero(clip[t, :, :, 0] > INK_THRESHOLD * 255)
            np.testing.assert_array_equal(
                target["frames"][t]["boxes"][0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            )
            assert not target["frames"][t]["occluded"].any()


# --------------------------------------------------------------------------- CLI


def test_cli_writes_coco_that_pycocotools_loads(tmp_path, capsys):
    assert main(["data", "digits-det", str(tmp_path / "det"), "--images", "5", "--size", "64"]) == 0
    assert "wrote 5 images" in capsys.readouterr().out
    coco = COCO(str(tmp_path / "det" / "annotations.json"))
    assert len(coco.getImgIds()) == 5 and len(coco.getCatIds()) == 10
    assert all((tmp_path / "det" / "images" / img["file_name"]).is_file() for img in coco.dataset["images"])

    assert (
        main(["data", "digits-video", str(tmp_path / "vid"), "--clips", "2", "--frames", "3", "--split", "test"]) == 0
    )
    assert "in 2 clips" in capsys.readouterr().out
    assert len(COCO(str(tmp_path / "vid" / "annotations.json")).dataset["videos"]) == 2


def test_cli_convert_yolo_and_errors(tmp_path, capsys):
    (tmp_path / "y" / "images").mkdir(parents=True)
    (tmp_path / "y" / "labels").mkdir()
    (tmp_path / "y" / "names.yaml").write_text("names: {0: a}\n")
    Image.new("RGB", (10, 10)).save(tmp_path / "y" / "images" / "1.jpg")
    (tmp_path / "y" / "labels" / "1.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    assert main(["data", "convert", "yolo", str(tmp_path / "y"), str(tmp_path / "out.json")]) == 0
    assert "wrote 1 images, 1 boxes, 1 categories" in capsys.readouterr().out
    Image.new("RGB", (10, 10)).save(tmp_path / "y" / "images" / "2.jpg")  # no label file
    assert main(["data", "convert", "yolo", str(tmp_path / "y"), str(tmp_path / "out.json")]) == 2
    assert "2.txt is missing" in capsys.readouterr().err
    argv = ["data", "convert", "yolo", str(tmp_path / "y"), str(tmp_path / "out.json"), "--missing-labels", "empty"]
    assert main(argv) == 0
    assert "wrote 2 images, 1 boxes" in capsys.readouterr().out
    assert main(["data", "convert", "yolo", str(tmp_path / "nope"), str(tmp_path / "out2.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lstmdet data: error:") and "nope" in err and len(err.strip().splitlines()) == 1


def test_digits_video_renders_occluded_frames_faded_or_covered():
    """With occlusion 1 every digit-frame is faded to 10% or has a bar over 40-70% of its box.

    Without noise, the same seed with occlusion 0 renders the same digits at the same places, so
    each frame can be compared with its clean rendering; the labelled boxes are the same in both.
    """
    options = {"clips": 6, "frames": 8, "seed": 5, "size": 64, "digits": (1, 1), "noise": 0.0, "background": 0.0}
    hidden, clean = DigitsVideo(occlusion=1.0, **options), DigitsVideo(occlusion=0.0, **options)
    kinds = {"faded": 0, "covered": 0}
    for index in range(len(hidden)):
        (clip, target), (clear, clear_target) = hidden[index], clean[index]
        for t, (frame, clear_frame) in enumerate(zip(target["frames"], clear_target["frames"], strict=True)):
            np.testing.assert_array_equal(frame["boxes"], clear_frame["boxes"])
            assert frame["occluded"].all() and not clear_frame["occluded"].any()
            x1, y1, x2, y2 = (int(v) for v in frame["boxes"][0])
            seen = clip[t, y1:y2, x1:x2, 0].astype(int)
            truth = clear[t, y1:y2, x1:x2, 0].astype(int)
            assert truth.max() > 200  # the clean digit is bright
            if seen.max() <= round(FADE_LEVEL * 255) + 1:
                kinds["faded"] += 1
                np.testing.assert_allclose(seen, truth * FADE_LEVEL, atol=1)
            else:
                kinds["covered"] += 1
                changed = seen != truth
                rows, cols = changed.any(axis=1).mean(), changed.any(axis=0).mean()
                assert min(rows, cols) >= 0.3 and max(rows, cols) >= 0.95  # a band across the box
                assert 0.3 <= changed.mean() <= 0.75
    assert kinds["faded"] > 5 and kinds["covered"] > 5, kinds
