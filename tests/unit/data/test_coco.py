"""COCO json reading/writing and YOLO -> COCO conversion, checked against independent computations."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT
from PIL import Image
from pycocotools.coco import COCO

from lstmdet.data.coco import DataFormatError, load_coco, write_coco_dataset, yolo_to_coco
from lstmdet.errors import LstmdetError
from lstmdet.plugins.datasets_digits import DigitsDet, DigitsVideo

COCO30 = ROOT / "tests" / "data" / "coco30"


def _names_by_hand(path: Path) -> dict[int, str]:
    """Parse ``names:`` of a names.yaml with plain string handling (no YAML library)."""
    names, inside = {}, False
    for line in path.read_text().splitlines():
        if line.startswith("names:"):
            inside = True
        elif inside and line.startswith("  ") and ":" in line:
            key, value = line.strip().split(":", 1)
            names[int(key)] = value.strip()
        elif inside and line.strip():
            break
    return names


@pytest.fixture(scope="module")
def coco30_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("coco30") / "coco30.json"
    summary = yolo_to_coco(COCO30, out)
    return out, summary


def test_yolo_to_coco_matches_an_independent_conversion(coco30_json):
    out, summary = coco30_json
    data = json.loads(out.read_text())
    label_files = sorted((COCO30 / "labels").glob("*.txt"))
    lines = [line for f in label_files for line in f.read_text().splitlines() if line.strip()]
    assert summary["images"] == len(data["images"]) == 30
    assert summary["annotations"] == len(data["annotations"]) == len(lines) > 200
    assert {c["id"]: c["name"] for c in data["categories"]} == _names_by_hand(COCO30 / "names.yaml")
    assert len(data["categories"]) == 80
    assert len({a["id"] for a in data["annotations"]}) == len(lines) and min(a["id"] for a in data["annotations"]) == 1

    by_file = {img["file_name"]: img for img in data["images"]}
    anns: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        anns.setdefault(ann["image_id"], []).append(ann)
    for label_file in label_files[::16]:  # every 16th image, computed by hand
        image_path = COCO30 / "images" / (label_file.stem + ".jpg")
        with Image.open(image_path) as im:
            width, height = im.size  # coco30 has no EXIF orientation tags
        entry = by_file[image_path.name]
        assert (entry["width"], entry["height"]) == (width, height)
        expected = []
        for line in label_file.read_text().splitlines():
            cls, cx, cy, w, h = line.split()
            x = (float(cx) - float(w) / 2) * width
            y = (float(cy) - float(h) / 2) * height
            expected.append((int(cls), x, y, float(w) * width, float(h) * height))
        got = [(a["category_id"], *a["bbox"]) for a in anns.get(entry["id"], [])]
        assert len(got) == len(expected)
        for (c1, *b1), (c2, *b2) in zip(got, expected, strict=True):
            assert c1 == c2
            np.testing.assert_allclose(b1, b2, atol=0.01)
        for ann in anns.get(entry["id"], []):
            assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3])
            assert ann["iscrowd"] == 0


def test_converted_json_loads_in_pycocotools(coco30_json):
    coco = COCO(str(coco30_json[0]))
    assert len(coco.getImgIds()) == 30 and len(coco.getCatIds()) == 80
    assert load_coco(coco30_json[0], COCO30 / "images").classes[0] == "person"


def test_write_coco_dataset_round_trip(tmp_path):
    dataset = DigitsDet(images=4, seed=3, size=64)
    summary = write_coco_dataset(dataset, tmp_path / "out")
    assert summary["images"] == 4 and summary["videos"] == 0
    coco = load_coco(tmp_path / "out" / "annotations.json")
    assert coco.images_dir == tmp_path / "out" / "images"
    assert coco.classes == [str(i) for i in range(10)] and coco.category_ids == list(range(10))
    for index, entry in enumerate(coco.images):
        image, target = dataset[index]
        stored = np.array(Image.open(coco.images_dir / entry["file_name"]))
        np.testing.assert_array_equal(stored, image)  # PNG is lossless
        assert (entry["width"], entry["height"]) == (64, 64)
        boxes = np.array([a["bbox"] for a in coco.annotations[entry["id"]]]).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        np.testing.assert_allclose(boxes, target["boxes"])
        assert [a["category_id"] for a in coco.annotations[entry["id"]]] == target["labels"].tolist()
    assert len(COCO(str(tmp_path / "out" / "annotations.json")).getAnnIds()) == summary["annotations"]


def test_category_id_zero_evaluates_in_pycocotools(tmp_path):
    """The contract category_id == label (0-based) works with COCOeval: ground truth as detections gives AP 1."""
    from pycocotools.cocoeval import COCOeval

    write_coco_dataset(DigitsDet(images=10, seed=1, size=64), tmp_path)
    gt = COCO(str(tmp_path / "annotations.json"))
    assert 0 in {a["category_id"] for a in gt.dataset["annotations"]}
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt.dataset["annotations"]
    ]
    evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # area "all", 100 detections
    assert precision[precision > -1].size and precision[precision > -1].min() == pytest.approx(1.0)
    assert (precision[:, :, 0] > -1).all()  # category 0 was evaluated


def test_write_clip_dataset_has_videos_frames_and_tracks(tmp_path):
    dataset = DigitsVideo(clips=2, frames=3, size=48, seed=1)
    write_coco_dataset(dataset, tmp_path / "v", image_format="jpg")
    data = json.loads((tmp_path / "v" / "annotations.json").read_text())
    assert [v["id"] for v in data["videos"]] == [1, 2] and all(v["frames"] == 3 for v in data["videos"])
    assert [(i["video_id"], i["frame_index"]) for i in data["images"]] == [(v, t) for v in (1, 2) for t in range(3)]
    assert all((tmp_path / "v" / "images" / i["file_name"]).is_file() for i in data["images"])
    video_of = {i["id"]: i["video_id"] for i in data["images"]}
    tracks: dict[int, set] = {}
    for ann in data["annotations"]:
        tracks.setdefault(ann["track_id"], set()).add(video_of[ann["image_id"]])
    assert all(len(videos) == 1 for videos in tracks.values())  # track ids are unique across videos
    expected_tracks = sum(len(dataset[i][1]["frames"][0]["labels"]) for i in range(2))
    assert len(tracks) == expected_tracks and len(data["annotations"]) == 3 * expected_tracks
    COCO(str(tmp_path / "v" / "annotations.json"))


def test_write_refuses_a_non_empty_folder_unless_exist_ok(tmp_path):
    write_coco_dataset(DigitsDet(images=3, seed=1, size=32), tmp_path / "out")
    with pytest.raises(LstmdetError, match=r"not empty \(it holds annotations.json, images\)"):
        write_coco_dataset(DigitsDet(images=2, seed=1, size=32), tmp_path / "out")
    summary = write_coco_dataset(DigitsDet(images=2, seed=1, size=32), tmp_path / "out", exist_ok=True)
    assert summary["images"] == 2 and len(list((tmp_path / "out" / "images").iterdir())) == 2


def test_write_rejects_classification_items(tmp_path):
    class Tiny:
        classes = ("a",)

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return np.zeros((4, 4, 3), np.uint8), {"label": 0}

    with pytest.raises(Exception, match="only detection datasets"):
        write_coco_dataset(Tiny(), tmp_path)
    with pytest.raises(Exception, match="image_format"):
        write_coco_dataset(Tiny(), tmp_path, image_format="gif")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"not valid json.*line 1"),
        ("[]", "json object"),
        ('{"annotations": []}', "no 'images'"),
        ('{"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "x"}], '
         '"annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}]}',
         r"annotations\[0\].*image_id 2"),
        ('{"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "x"}], '
         '"annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1]}]}', "category_id 7"),
        ('{"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "x"}], '
         '"annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 1]}]}', "bbox"),
        ('{"images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}], "categories": []}',
         r"images\[1\].*unique"),
    ],
)  # fmt: skip
def test_load_coco_errors_name_the_file_and_entry(tmp_path, content, message):
    path = tmp_path / "ann.json"
    path.write_text(content)
    with pytest.raises(DataFormatError, match=message) as info:
        load_coco(path)
    assert "ann.json" in str(info.value)
    with pytest.raises(DataFormatError, match=r"missing\.json"):
        load_coco(tmp_path / "missing.json")


def _yolo(root: Path, labels: dict[str, str], sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "names.yaml").write_text("names:\n  0: cat\n  1: dog\n")
    for stem, (w, h) in (sizes or {s: (40, 20) for s in labels}).items():
        Image.new("RGB", (w, h), (9, 9, 9)).save(root / "images" / f"{stem}.jpg")
    for stem, text in labels.items():
        (root / "labels" / f"{stem}.txt").write_text(text)
    return root


def test_yolo_bad_data(tmp_path):
    root = _yolo(tmp_path / "malformed", {"a": "0 0.5 0.5 0.2 0.2\n1 0.5 oops 0.1 0.1\n"})
    with pytest.raises(DataFormatError, match=r"a\.txt, line 2"):
        yolo_to_coco(root, tmp_path / "x.json")
    root = _yolo(tmp_path / "short", {"a": "0 0.5 0.5 0.2\n"})
    with pytest.raises(DataFormatError, match=r"a\.txt, line 1.*5 values"):
        yolo_to_coco(root, tmp_path / "x.json")
    root = _yolo(tmp_path / "unknown", {"a": "0 0.5 0.5 0.2 0.2\n\n7 0.5 0.5 0.1 0.1\n"})
    with pytest.raises(DataFormatError, match=r"a\.txt, line 3: unknown class id 7"):
        yolo_to_coco(root, tmp_path / "x.json")


def test_yolo_clipping_missing_labels_polygons_and_unreadable(tmp_path):
    labels = {
        "in": "0 0.5 0.5 0.5 0.5\n",
        "out": "1 0.9 0.5 0.4 0.4\n0 1.5 0.5 0.2 0.2\n",  # reaches past the right edge; entirely outside
        "poly": "1 0.1 0.1 0.3 0.2 0.2 0.4\n",
    }
    root = _yolo(tmp_path / "y", labels, {"in": (40, 20), "out": (40, 20), "poly": (40, 20), "nolabel": (10, 10)})
    (root / "images" / "broken.jpg").write_text("not a jpeg")
    with pytest.warns(UserWarning), pytest.raises(DataFormatError, match=r"nolabel\.txt is missing.*missing_labels"):
        yolo_to_coco(root, tmp_path / "y.json")  # by default a missing label file is an error naming it
    with pytest.raises(ValueError, match=r"missing_labels must be 'error'.*'empty'"):
        yolo_to_coco(root, tmp_path / "y.json", missing_labels="skip")
    with pytest.warns(UserWarning) as record:
        summary = yolo_to_coco(root, tmp_path / "y.json", missing_labels="empty")
    messages = [str(w.message) for w in record]
    assert any("out.txt" in m and "clipped" in m and "1 empty or degenerate" in m for m in messages)
    assert any("broken.jpg" in m for m in messages)
    assert summary == {"json": str(tmp_path / "y.json"), "images": 4, "annotations": 3, "categories": 2, "skipped": 1}
    data = json.loads((tmp_path / "y.json").read_text())
    boxes = {img["file_name"]: [a["bbox"] for a in data["annotations"] if a["image_id"] == img["id"]]
             for img in data["images"]}  # fmt: skip
    assert boxes["nolabel.jpg"] == []  # missing_labels="empty": an image without objects
    np.testing.assert_allclose(boxes["in.jpg"], [[10, 5, 20, 10]])
    np.testing.assert_allclose(boxes["out.jpg"], [[28, 6, 12, 8]])  # x from 28 to 44 clipped at 40
    np.testing.assert_allclose(boxes["poly.jpg"], [[4, 2, 8, 6]])


def test_yolo_sizes_follow_exif_orientation(tmp_path):
    root = _yolo(tmp_path / "exif", {"r": "0 0.25 0.5 0.5 1.0\n"}, {})
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated: 40x20 stored -> 20x40 displayed
    Image.new("RGB", (40, 20)).save(root / "images" / "r.jpg", exif=exif)
    yolo_to_coco(root, tmp_path / "e.json")
    data = json.loads((tmp_path / "e.json").read_text())
    assert (data["images"][0]["width"], data["images"][0]["height"]) == (20, 40)
    np.testing.assert_allclose(data["annotations"][0]["bbox"], [0, 0, 10, 40])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an exactly fitting box gives no warning
        yolo_to_coco(root, tmp_path / "e2.json")
