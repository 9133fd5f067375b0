"""Output files of batch detection: atomic writes, ``detections.jsonl`` lines, resume, COCO files, drawings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lstmdet.engine.writers import (
    DETECTIONS,
    IMAGES,
    RESULTS,
    AnnotatedImageWriter,
    JsonlAppender,
    annotated_path,
    detection_record,
    draw_detections,
    finalize,
    layout_labels,
    read_done,
)
from lstmdet.errors import LstmdetError

CLASSES = ["cat", "dog", "kite"]


def line(file: str, detections: list[dict] | None = None, width: int = 40, height: int = 30) -> dict:
    """A ``detections.jsonl`` record of a readable image."""
    return {"file": file, "width": width, "height": height, "detections": detections or []}


def det(x: float, y: float, w: float, h: float, score: float, category_id: int) -> dict:
    return {"bbox": [x, y, w, h], "score": score, "category_id": category_id, "category": CLASSES[category_id]}


def write_lines(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# --- detections.jsonl -----------------------------------------------------------------------------------------------


def test_a_detection_record_rounds_boxes_and_scores_and_names_classes():
    prediction = {
        "boxes": torch.tensor([[1.23456, 2.0, 11.23456, 7.5], [0.0, 0.0, 3.0, 4.0]]),
        "scores": torch.tensor([0.9876543, 0.5]),
        "labels": torch.tensor([2, 0]),
    }
    record = detection_record("sub/a.png", 40, 30, prediction, CLASSES)
    assert record == {
        "file": "sub/a.png", "width": 40, "height": 30,
        "detections": [det(1.235, 2.0, 10.0, 5.5, 0.98765, 2), det(0.0, 0.0, 3.0, 4.0, 0.5, 0)],
    }  # fmt: skip
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    assert detection_record("b.png", 5, 6, empty, CLASSES)["detections"] == []


def test_a_detection_record_writes_the_models_category_ids():
    prediction = {"boxes": torch.tensor([[0.0, 0.0, 3.0, 4.0], [1.0, 1.0, 2.0, 2.0]]),
                  "scores": torch.tensor([0.9, 0.5]), "labels": torch.tensor([2, 0])}  # fmt: skip
    record = detection_record("a.png", 5, 5, prediction, CLASSES, [3, 7, 90])
    assert [(d["category_id"], d["category"]) for d in record["detections"]] == [(90, "kite"), (3, "cat")]
    with pytest.raises(LstmdetError, match="one id per class"):
        detection_record("a.png", 5, 5, prediction, CLASSES, [3, 7])


def test_a_label_outside_the_classes_is_refused():
    prediction = {"boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0]]), "scores": torch.tensor([0.5]),
                  "labels": torch.tensor([3])}  # fmt: skip
    with pytest.raises(LstmdetError):
        detection_record("a.png", 5, 5, prediction, CLASSES)


def test_the_appender_keeps_the_first_bytes_and_cuts_the_rest(tmp_path):
    path = tmp_path / DETECTIONS
    appender = JsonlAppender(path)
    appender.write(line("a.png"))
    appender.write(line("b.png"))
    appender.flush()
    keep = len(json.dumps(line("a.png"))) + 1
    appender.write({"file": "c.png", "torn": True})
    appender.close()
    again = JsonlAppender(path, keep=keep)
    again.write(line("z.png"))
    again.close()
    assert [json.loads(text)["file"] for text in path.read_text().splitlines()] == ["a.png", "z.png"]


def test_read_done_stops_at_the_first_torn_or_invalid_line(tmp_path):
    path = write_lines(tmp_path / DETECTIONS, [line("a.png"), {"file": "b.png", "error": "not an image"}])
    whole = path.read_bytes()
    assert read_done(path) == ({"a.png", "b.png"}, len(whole))
    path.write_bytes(whole + b'{"file": "c.png", "wid')  # torn by a crash
    assert read_done(path) == ({"a.png", "b.png"}, len(whole))
    path.write_bytes(whole + b"not json\n" + json.dumps(line("d.png")).encode() + b"\n")
    assert read_done(path) == ({"a.png", "b.png"}, len(whole))
    path.write_bytes(whole + b'["a list"]\n' + b'{"name": "no file key"}\n')
    assert read_done(path) == ({"a.png", "b.png"}, len(whole))
    assert read_done(tmp_path / "missing.jsonl") == (set(), 0)


# --- the COCO files -------------------------------------------------------------------------------------------------


def test_finalize_writes_the_coco_images_and_results(tmp_path):
    records = [
        line("a.png", [det(1, 2, 3, 4, 0.9, 1), det(0, 0, 5, 5, 0.4, 2)], width=40, height=30),
        {"file": "broken.png", "error": "not an image"},
        line("sub/c.jpg", [], width=10, height=20),
        line("d.png", [det(7, 8, 1, 1, 0.7, 0)], width=8, height=9),
    ]
    write_lines(tmp_path / DETECTIONS, records)
    counts = finalize(tmp_path, ["a.png", "broken.png", "sub/c.jpg", "d.png"])
    assert counts == {"ok": 3, "failed": 1, "detections": 3}
    assert json.loads((tmp_path / IMAGES).read_text()) == [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "sub/c.jpg", "width": 10, "height": 20},
        {"id": 3, "file_name": "d.png", "width": 8, "height": 9},
    ]
    assert json.loads((tmp_path / RESULTS).read_text()) == [
        {"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.4},
        {"image_id": 3, "category_id": 0, "bbox": [7, 8, 1, 1], "score": 0.7},
    ]


def test_finalize_of_nothing_readable_writes_empty_arrays(tmp_path):
    write_lines(tmp_path / DETECTIONS, [{"file": "x.png", "error": "empty (0 bytes)"}])
    assert finalize(tmp_path, ["x.png"]) == {"ok": 0, "failed": 1, "detections": 0}
    assert (tmp_path / IMAGES).read_text() == (tmp_path / RESULTS).read_text() == "[]\n"


def test_finalize_puts_a_resumed_file_in_input_order_once_per_file(tmp_path):
    """A resumed run may have appended files out of order (and a file twice): the jsonl is rewritten in order."""
    write_lines(tmp_path / DETECTIONS, [line("b.png", width=2), line("a.png", width=1), line("b.png", width=99),
                                        line("c.png", width=3)])  # fmt: skip
    finalize(tmp_path, ["a.png", "b.png", "c.png"])
    lines = [json.loads(text) for text in (tmp_path / DETECTIONS).read_text().splitlines()]
    assert [(r["file"], r["width"]) for r in lines] == [("a.png", 1), ("b.png", 2), ("c.png", 3)]


def frame(file: str, index: int, detections: list[dict] | None = None) -> dict:
    """A ``detections.jsonl`` record of a video frame."""
    return {"file": file, "frame_index": index, "timestamp": index / 10, **line(file, detections, 48, 32)}


def test_video_frames_give_coco_vid_images_and_a_videos_list(tmp_path):
    records = [line("a.png", [det(1, 2, 3, 4, 0.9, 1)]), frame("v.mp4", 0),
               frame("v.mp4", 2, [det(0, 0, 5, 5, 0.5, 0)]),
               {"file": "v.mp4", "error": "decoding stopped after frame 2"}, {"file": "w.mkv", "error": "empty"},
               frame("x.gif", 0)]  # fmt: skip
    write_lines(tmp_path / DETECTIONS, records)
    counts = finalize(tmp_path, ["a.png", "v.mp4", "w.mkv", "x.gif"], videos=True)
    assert counts == {"ok": 4, "failed": 2, "detections": 2, "frames": 3}
    coco = json.loads((tmp_path / IMAGES).read_text())
    assert coco["images"] == [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "v.mp4", "width": 48, "height": 32, "video_id": 1, "frame_id": 0, "timestamp": 0.0},
        {"id": 3, "file_name": "v.mp4", "width": 48, "height": 32, "video_id": 1, "frame_id": 2, "timestamp": 0.2},
        {"id": 4, "file_name": "x.gif", "width": 48, "height": 32, "video_id": 2, "frame_id": 0, "timestamp": 0.0},
    ]
    assert coco["videos"] == [{"id": 1, "name": "v.mp4", "width": 48, "height": 32, "frames": 2},
                              {"id": 2, "name": "x.gif", "width": 48, "height": 32, "frames": 1}]  # fmt: skip
    assert [r["image_id"] for r in json.loads((tmp_path / RESULTS).read_text())] == [1, 3]
    write_lines(tmp_path / DETECTIONS, [{"file": "w.mkv", "error": "empty"}])
    finalize(tmp_path, ["w.mkv"], videos=True)
    assert json.loads((tmp_path / IMAGES).read_text()) == {"images": [], "videos": []}


def test_a_video_s_lines_move_together_and_a_video_cut_short_is_not_done(tmp_path):
    path = write_lines(tmp_path / DETECTIONS, [frame("v.mp4", 0), frame("v.mp4", 1), line("a.png"), frame("w.mp4", 0)])
    finalize(tmp_path, ["a.png", "v.mp4", "w.mp4"], videos=True)
    lines = [json.loads(text) for text in path.read_text().splitlines()]
    assert [(r["file"], r.get("frame_index")) for r in lines] == [("a.png", None), ("v.mp4", 0), ("v.mp4", 1),
                                                                  ("w.mp4", 0)]  # fmt: skip
    whole = path.read_bytes()
    first_three = len(b"".join(whole.splitlines(keepends=True)[:3]))
    assert read_done(path) == ({"a.png", "v.mp4", "w.mp4"}, len(whole))
    assert read_done(path, {"v.mp4", "w.mp4"}) == ({"a.png", "v.mp4"}, first_three)  # w.mp4 may go on
    with path.open("ab") as f:
        f.write(json.dumps({"file": "w.mp4", "error": "decoding stopped"}).encode() + b"\n")
    assert read_done(path, {"v.mp4", "w.mp4"}) == ({"a.png", "v.mp4", "w.mp4"}, path.stat().st_size)


def test_a_file_in_order_is_left_untouched(tmp_path):
    path = write_lines(tmp_path / DETECTIONS, [line("a.png"), line("b.png")])
    before = path.stat().st_ino
    finalize(tmp_path, ["a.png", "b.png"])
    assert path.stat().st_ino == before  # not rewritten


def test_finalize_refuses_a_jsonl_without_a_line_for_every_input(tmp_path):
    write_lines(tmp_path / DETECTIONS, [line("a.png")])
    with pytest.raises(LstmdetError, match=r"no line for 2 input files \(e\.g\. 'b\.png'\); run again"):
        finalize(tmp_path, ["a.png", "b.png", "c.png"])


# --- annotated copies -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "file, expected",
    [("a.jpg", "images/a.jpg"), ("sub/B.JPEG", "images/sub/B.JPEG"), ("c.png", "images/c.png"),
     ("scan.tif", "images/scan.tif.png"), ("d.bmp", "images/d.bmp.png")],
)  # fmt: skip
def test_annotated_copies_keep_jpeg_and_png_names_and_add_png_otherwise(tmp_path, file, expected):
    assert annotated_path(tmp_path, file) == tmp_path / expected


def test_drawing_marks_the_box_outline_in_its_class_colour():
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    drawn = np.array(draw_detections(image, [det(10, 20, 30, 15, 0.9, 1)]))
    assert drawn.shape == (40, 60, 3)
    assert tuple(drawn[30, 10]) == (60, 180, 75)  # the left edge, in the colour of class 1
    assert tuple(drawn[30, 25]) == (0, 0, 0)  # inside the box: untouched
    assert not image.any()  # the input is not changed
    assert np.array_equal(np.array(draw_detections(image, [])), image)


def test_a_box_touching_the_edges_stays_inside_the_image():
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    drawn = np.array(draw_detections(image, [det(20, 10, 10, 10, 0.5, 0)]))  # ends at x=30, y=20
    assert tuple(drawn[15, 29]) == (230, 25, 75)  # the right edge drawn on the last column


def test_the_writer_saves_copies_at_their_size_in_their_format(tmp_path):
    writer = AnnotatedImageWriter(tmp_path, threads=2)
    writer.submit("a.jpg", torch.rand(3, 30, 40), [det(1, 1, 10, 10, 0.8, 0)])
    writer.submit("sub/b.tif", torch.zeros(3, 12, 16, dtype=torch.uint8), [])
    writer.close()
    with Image.open(tmp_path / "images" / "a.jpg") as im:
        assert (im.format, im.size) == ("JPEG", (40, 30))
    with Image.open(tmp_path / "images" / "sub" / "b.tif.png") as im:
        assert (im.format, im.size) == ("PNG", (16, 12))
        assert not np.array(im).any()


def test_a_copy_that_cannot_be_written_says_what_to_do(tmp_path):
    (tmp_path / "images").write_text("a file where the folder of copies should be")
    writer = AnnotatedImageWriter(tmp_path, threads=1)
    writer.submit("a.png", torch.zeros(3, 8, 8), [])
    with pytest.raises(LstmdetError, match=r"cannot write an annotated image under .*run without --save-images"):
        writer.close()


def test_labels_on_a_small_image_stay_inside_and_never_cover_each_other():
    image = np.full((96, 96, 3), 128, dtype=np.uint8)
    detections = [
        det(2, 2, 20, 30, 0.95, 0),  # at the top edge: no room above
        det(4, 4, 20, 30, 0.90, 1),  # nearly the same box
        det(30, 10, 18, 28, 0.85, 2),  # a neighbour whose label would reach over the first ones
        det(80, 40, 16, 30, 0.80, 0),  # at the right edge: the label cannot start at the box
        det(40, 70, 20, 26, 0.75, 1),  # at the bottom edge
    ]
    labels = layout_labels(detections, 96, 96)
    boxes = [label.box for label in labels]
    for i, (left, top, right, bottom) in enumerate(boxes):
        assert 0 <= left < right <= 96 and 0 <= top < bottom <= 96, boxes[i]
        for other in boxes[i + 1 :]:
            assert right <= other[0] or other[2] <= left or bottom <= other[1] or other[3] <= top, (boxes[i], other)
    assert [label.text for label in labels] == ["cat 0.95", "dog 0.90", "kite 0.85", "cat 0.80", "dog 0.75"]
    assert boxes[0][3] <= 2 + 30  # the best label stays by its box (inside its top: no room above)
    drawn = np.array(draw_detections(image, detections))
    for label in labels:
        left, top, right, bottom = label.box
        patch = drawn[top:bottom, left:right].reshape(-1, 3).astype(int)
        distance = np.abs(patch - np.array(label.colour)).sum(axis=1)
        assert (distance == 0).mean() > 0.4  # the background, in the class colour
        assert (distance > 200).sum() >= 10  # and text on it, in black or white


def test_the_label_font_grows_with_the_image():
    small = layout_labels([det(10, 40, 20, 20, 0.9, 0)], 96, 96)[0]
    large = layout_labels([det(100, 400, 200, 200, 0.9, 0)], 960, 960)[0]
    assert large.box[3] - large.box[1] >= 2 * (small.box[3] - small.box[1])
    assert small.box[3] <= 40  # above the box


def test_a_label_wider_than_the_image_keeps_the_class_name():
    (label,) = layout_labels([{**det(2, 10, 10, 10, 0.5, 2), "category": "a very long class name"}], 40, 30)
    assert label.box[2] <= 40 and label.text.startswith("a ") and "0.50" not in label.text
