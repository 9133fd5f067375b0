"""Batch detection (``lstmdet.detect``): the file contract, bad files, EXIF, resume, sequence mode, determinism."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, TIMING, assert_same_outputs, save_tiny, tiny_config
from PIL import Image

import lstmdet
from lstmdet.data.coco import yolo_to_coco
from lstmdet.data.images import find_images
from lstmdet.engine.detect import DetectOptions
from lstmdet.engine.writers import annotated_path
from lstmdet.errors import LstmdetError

COCO30 = ROOT / "tests" / "data" / "coco30"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny models: threads only add overhead


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def run(src, out, weights, **options) -> dict:
    return lstmdet.detect(src, out, weights, workers=options.pop("workers", 0), progress=False, **options)


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]


def noise(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_claiming(path: Path, width: int, height: int) -> None:
    """A valid 1x1 PNG whose IHDR is patched to claim ``width x height`` (CRC fixed): a decompression bomb."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


OK_FILES = [
    "cmyk.jpg", "deep16.png", "exif_rotated.jpg", "grey.png", "grey_alpha.png", "palette.png", "rgba.png",
    "sub/Mixed.PnG", "sub/deeper/UPPER.JPG",
]  # fmt: skip
BAD_FILES = {
    "big.png": "5000x5000 = 25,000,000 pixels exceeds the limit of 10,000,000",
    "bomb.png": "more pixels than Pillow allows",
    "empty.jpg": "empty (0 bytes)",
    "random.png": "not an image",
    "text.jpg": "not an image",
    "truncated.jpg": "truncated or corrupt",
}


def odd_folder(root: Path) -> Path:
    """Odd but readable images, broken files, ignored files, nested folders and a symlink loop."""
    (root / "sub" / "deeper").mkdir(parents=True)
    rgb = Image.fromarray(noise(30, 40, 1))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40x30, displayed rotated by 90 degrees: 30x40
    rgb.save(root / "exif_rotated.jpg", exif=exif.tobytes())
    rgb.convert("L").save(root / "grey.png")
    rgb.convert("LA").save(root / "grey_alpha.png")
    rgb.convert("P").save(root / "palette.png")
    rgb.convert("RGBA").save(root / "rgba.png")
    rgb.convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(noise(24, 20, 2)[..., 0].astype(np.uint16) * 257).save(root / "deep16.png")
    Image.fromarray(noise(36, 28, 3)).save(root / "sub" / "Mixed.PnG")
    Image.fromarray(noise(20, 44, 4)).save(root / "sub" / "deeper" / "UPPER.JPG", format="JPEG")
    (root / "empty.jpg").write_bytes(b"")
    whole = (root / "exif_rotated.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "random.png").write_bytes(np.random.default_rng(5).integers(0, 256, 500, dtype=np.uint8).tobytes())
    (root / "text.jpg").write_text("this is not a picture\n")
    png_claiming(root / "bomb.png", 40000, 40000)  # refused by Pillow's own limit
    png_claiming(root / "big.png", 5000, 5000)  # refused by max_pixels=10_000_000
    (root / "notes.txt").write_text("ignored: not an image by extension")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    os.symlink("..", root / "sub" / "loop")  # sub/loop -> root: a loop
    return root


def test_find_images_follows_links_without_loops(tmp_path):
    odd_folder(tmp_path)
    names = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert names == sorted(OK_FILES + list(BAD_FILES), key=lambda n: Path(n).parts)


def test_coco30_contract_loadres_and_cocoeval(tmp_path, weights):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = tmp_path / "out"
    summary = run(COCO30 / "images", out, weights, batch_size=16, workers=2)
    assert {k: summary[k] for k in ("images", "ok", "failed")} == {"images": 30, "ok": 30, "failed": 0}
    assert summary["images_per_s"] > 0 and summary["weights_sha256"] and summary["device"] == "cpu"
    assert json.loads((out / "summary.json").read_text()) == summary

    records = lines(out)
    names = [r["file"] for r in records]
    assert len(records) == 30 and names == sorted(names)
    assert all(set(r) == {"file", "width", "height", "detections"} for r in records)
    det = records[0]["detections"][0]
    assert (
        set(det) == {"bbox", "score", "category_id", "category"}
        and det["category"] == ["cat", "dog", "kite"][det["category_id"]]
    )

    yolo_to_coco(COCO30, tmp_path / "gt.json")
    gt = json.loads((tmp_path / "gt.json").read_text())
    images = json.loads((out / "images.json").read_text())
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in images] == [
        (i["id"], i["file_name"], i["width"], i["height"]) for i in gt["images"]
    ]
    results = json.loads((out / "coco_results.json").read_text())
    assert len(results) == summary["detections"] == sum(len(r["detections"]) for r in records)
    first = [r for r in results if r["image_id"] == 1]
    assert [r["bbox"] for r in first] == [d["bbox"] for d in records[0]["detections"]]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(tmp_path / "gt.json"))
        coco_dt = coco_gt.loadRes(str(out / "coco_results.json"))
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert len(evaluator.stats) == 12


def test_a_model_trained_on_coco_ids_writes_those_ids(tmp_path):
    """Category ids 3, 7, 90 (not 0..2): training keeps them in the checkpoint, detect writes them."""
    from pycocotools.coco import COCO

    images, annotations = [], []
    (tmp_path / "images").mkdir()
    for i in range(4):
        Image.fromarray(noise(32, 32, 60 + i)).save(tmp_path / "images" / f"a{i}.png")
        images.append({"id": i + 1, "file_name": f"a{i}.png", "width": 32, "height": 32})
        for k, cid in enumerate((3, 7, 90)):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cid,
                                "bbox": [2.0 + 9 * k, 4.0, 8.0, 10.0], "area": 80.0, "iscrowd": 0})  # fmt: skip
    categories = [{"id": 90, "name": "kite"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    config = tiny_config()
    del config["model"]["classes"]
    config["data"] = {"train": {"name": "coco", "annotations": str(gt)}}
    config["train"] = {"epochs": 1, "batch_size": 4, "workers": 0, "progress": False, "device": "cpu"}
    lstmdet.train(config, tmp_path / "run")
    model = lstmdet.load(tmp_path / "run" / "best.pt")
    assert model.classes == ["cat", "dog", "kite"] and model.category_ids == [3, 7, 90]

    out = tmp_path / "out"
    summary = run(tmp_path / "images", out, tmp_path / "run" / "best.pt", score_thresh=0.0)
    assert summary["detections"] > 0
    detections = [d for r in lines(out) for d in r["detections"]]
    assert {(d["category_id"], d["category"]) for d in detections} <= {(3, "cat"), (7, "dog"), (90, "kite")}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = COCO(str(gt)).loadRes(str(out / "coco_results.json"))
    assert {a["category_id"] for a in coco_dt.dataset["annotations"]} <= {3, 7, 90}
    assert len(coco_dt.dataset["annotations"]) == summary["detections"]


def test_odd_and_broken_files_give_exact_lines_and_identical_reruns(tmp_path, weights):
    src = odd_folder(tmp_path / "src")
    first = run(src, tmp_path / "a", weights, save_images=True, max_pixels=10_000_000, batch_size=4)
    records = {r["file"]: r for r in lines(tmp_path / "a")}
    assert sorted(records) == sorted(OK_FILES + list(BAD_FILES))
    assert [r["file"] for r in lines(tmp_path / "a")] == [p.relative_to(src).as_posix() for p in find_images(src)]
    for name in OK_FILES:
        assert "error" not in records[name] and records[name]["detections"], name
    for name, reason in BAD_FILES.items():
        assert set(records[name]) == {"file", "error"} and reason in records[name]["error"], records[name]
    assert (first["images"], first["ok"], first["failed"]) == (15, 9, 6)

    # EXIF: the displayed size, in the jsonl and in images.json, and boxes inside it
    assert (records["exif_rotated.jpg"]["width"], records["exif_rotated.jpg"]["height"]) == (30, 40)
    entry = next(i for i in json.loads((tmp_path / "a" / "images.json").read_text()) if "exif" in i["file_name"])
    assert (entry["width"], entry["height"]) == (30, 40)
    for x, y, w, h in (d["bbox"] for d in records["exif_rotated.jpg"]["detections"]):
        assert 0 <= x <= x + w <= 30.001 and 0 <= y <= y + h <= 40.001

    # --save-images: one annotated copy per readable file, at the displayed size, with boxes drawn
    saved = sorted(p.relative_to(tmp_path / "a" / "images").as_posix() for p in (tmp_path / "a" / "images").rglob("*"))
    assert [s for s in saved if "." in Path(s).name] == sorted(OK_FILES)
    with Image.open(annotated_path(tmp_path / "a", "exif_rotated.jpg")) as im:
        assert im.size == (30, 40)
    with Image.open(annotated_path(tmp_path / "a", "sub/Mixed.PnG")) as im:
        assert not np.array_equal(np.array(im.convert("RGB")), noise(36, 28, 3))

    # a second run (decoded by 2 loader processes this time) writes the same bytes
    second = run(src, tmp_path / "b", weights, save_images=True, max_pixels=10_000_000, batch_size=4, workers=2)
    assert_same_outputs(tmp_path / "a", tmp_path / "b", ignore=("workers",))
    assert {k: v for k, v in first.items() if k not in (*TIMING, "workers")} == {
        k: v for k, v in second.items() if k not in (*TIMING, "workers")
    }


def test_resume_equals_an_uninterrupted_run(tmp_path, weights):
    src = tmp_path / "src"
    src.mkdir()
    for i, (h, w) in enumerate([(30, 40), (40, 30), (25, 25), (33, 47), (48, 20), (20, 48), (31, 29), (40, 40)]):
        Image.fromarray(noise(h, w, 10 + i)).save(src / f"im{i}.png")
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    whole = tmp_path / "whole"
    run(src, whole, weights, batch_size=3, save_images=True)

    def cut_run(out: Path) -> Path:
        run(src, out, weights, batch_size=3, save_images=True)
        text = (out / "detections.jsonl").read_text()
        kept = text.splitlines(keepends=True)[:4]  # 4 lines: the second batch of 3 is half done
        (out / "detections.jsonl").write_text("".join(kept) + text.splitlines(keepends=True)[4][:20])  # + a torn line
        for name in ("images.json", "coco_results.json", "summary.json"):
            (out / name).unlink()
        return out

    cut = cut_run(tmp_path / "cut")
    summary = run(src, cut, weights, batch_size=3, save_images=True, resume=True)
    assert summary["resumed"] == 4 and summary["images"] == 9 and summary["failed"] == 1
    assert_same_outputs(whole, cut, ignore=("resumed",))

    with pytest.raises(LstmdetError, match="--resume"):
        run(src, cut, weights, batch_size=3)
    with pytest.raises(LstmdetError, match=r"batch_size \(--batch-size\) is 4 now but the run was started with 3"):
        run(src, cut, weights, batch_size=4, resume=True)

    # a resume without weights or options runs with those options.json recorded
    recorded = json.loads((cut / "options.json").read_text())["options"]
    assert (recorded["weights"], recorded["batch_size"], recorded["save_images"]) == (str(weights), 3, True)
    bare = cut_run(tmp_path / "bare")
    summary = lstmdet.detect(src, bare, resume=True, progress=False, workers=0)
    assert summary["resumed"] == 4 and summary["weights"] == str(weights) and summary["batch_size"] == 3
    assert_same_outputs(whole, bare, ignore=("resumed",))

    # a run started by an older lstmdet: options.json without "options" and without agnostic_nms
    old = cut_run(tmp_path / "old")
    record = json.loads((old / "options.json").read_text())
    del record["options"], record["agnostic_nms"]
    (old / "options.json").write_text(json.dumps(record))
    assert run(src, old, weights, batch_size=3, save_images=True, resume=True)["resumed"] == 4
    assert_same_outputs(whole, old, ignore=("resumed",))


def test_exist_ok_replaces_only_what_a_previous_run_wrote(tmp_path, weights):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(noise(30, 40, 70 + i)).save(src / f"im{i}.png")
    out = tmp_path / "out"
    run(src, out, weights, save_images=True, max_detections=2)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(LstmdetError, match="--exist-ok to replace it"):
        run(src, out, weights)
    with pytest.raises(LstmdetError, match="pass one of them"):
        run(src, out, weights, resume=True, exist_ok=True)
    summary = run(src, out, weights, exist_ok=True)
    assert summary["images"] == 3 and summary["resumed"] == 0 and not (out / "images").exists()
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    run(src, tmp_path / "fresh", weights)
    assert_same_outputs(tmp_path / "fresh", out)

    # never removes the images it is asked to detect: SRC is OUT/images, or OUT itself holds them there
    (tmp_path / "o2" / "images").mkdir(parents=True)
    Image.fromarray(noise(30, 40, 80)).save(tmp_path / "o2" / "images" / "mine.png")
    for source in (tmp_path / "o2" / "images", tmp_path / "o2"):
        with pytest.raises(LstmdetError, match="images to detect lie inside it"):
            run(source, tmp_path / "o2", weights, exist_ok=True)
    assert (tmp_path / "o2" / "images" / "mine.png").is_file()


def assert_records_match(records: list[dict], predictions: list[dict]) -> None:
    """``detections.jsonl`` records equal model predictions (boxes xyxy in original pixels)."""
    assert len(records) == len(predictions)
    for record, pred in zip(records, predictions, strict=True):
        boxes = torch.tensor([d["bbox"] for d in record["detections"]], dtype=torch.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        assert torch.allclose(boxes, pred["boxes"].double(), atol=2e-3), record["file"]
        assert torch.allclose(torch.tensor([d["score"] for d in record["detections"]]), pred["scores"], atol=2e-5)
        assert [d["category_id"] for d in record["detections"]] == pred["labels"].tolist()


def test_images_resized_by_the_loader_give_what_model_predict_gives(tmp_path, weights):
    # landscape, portrait and square images, each larger than the model's input (32-48 px): the
    # loader (in this process, and in 2 loader processes) resizes them before the model sees them
    src = tmp_path / "src"
    src.mkdir()
    shapes = [(60, 80), (80, 60), (64, 64), (48, 96), (96, 48), (61, 79)]
    for i, (h, w) in enumerate(shapes):
        Image.fromarray(noise(h, w, 40 + i)).save(src / f"im{i}.png")
    run(src, tmp_path / "w0", weights, batch_size=1)
    run(src, tmp_path / "w2", weights, batch_size=1, workers=2)

    # the naive path: the full image through model.predict, one at a time
    model = lstmdet.load(weights)
    predictions = []
    for i in range(len(shapes)):
        image = torch.from_numpy(np.array(Image.open(src / f"im{i}.png"))).permute(2, 0, 1).float() / 255
        predictions.extend(model.predict([image]))
    for out in ("w0", "w2"):
        records = lines(tmp_path / out)
        assert [r["file"] for r in records] == [f"im{i}.png" for i in range(len(shapes))]
        assert_records_match(records, predictions)


def test_sequence_mode_equals_clip_inference(tmp_path, weights):
    convlstm = save_tiny(tmp_path / "convlstm.pt", {"name": "convlstm", "hidden": 8})
    model = lstmdet.load(convlstm)
    assert model.stateful
    src = tmp_path / "videos"
    clips = {"a": [noise(30, 40, 20 + t) for t in range(5)], "b/c": [noise(36, 24, 30 + t) for t in range(4)]}
    for video, frames in clips.items():
        (src / video).mkdir(parents=True)
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(src / video / f"f{t:03d}.png")
    (src / "b/c/f001.png").write_bytes(b"")  # an unreadable frame: the state carries on to the next one
    del clips["b/c"][1]

    summary = run(src, tmp_path / "out", convlstm, sequence=True, batch_size=2)
    assert (summary["images"], summary["failed"], summary["videos"]) == (9, 1, 2)
    records = lines(tmp_path / "out")
    assert [(r["video"], r["frame_index"]) for r in records] == [("a", t) for t in range(5)] + [
        ("b/c", t) for t in range(4)
    ]
    assert "error" in records[6]
    streamed = [r for r in records if "error" not in r]
    expected = []
    for frames in clips.values():
        clip = torch.stack([torch.from_numpy(f).permute(2, 0, 1).float() / 255 for f in frames])
        expected.extend(model.predict([clip])[0])
    assert len(streamed) == len(expected) == 8
    assert_records_match(streamed, expected)

    # a stateless model in sequence mode: frames batched like still images, the same lines as a still-image run
    stateless = run(src, tmp_path / "stateless", weights, sequence=True, batch_size=4)
    run(src, tmp_path / "stills", weights, batch_size=4)
    assert stateless["videos"] == 2 and stateless["failed"] == 1
    drop = ("video", "frame_index")
    assert [{k: v for k, v in r.items() if k not in drop} for r in lines(tmp_path / "stateless")] == lines(
        tmp_path / "stills"
    )


def test_single_file_and_usage_errors(tmp_path, weights):
    Image.fromarray(noise(20, 30, 7)).save(tmp_path / "one.jpg")
    summary = run(tmp_path / "one.jpg", tmp_path / "out", weights, max_detections=2, score_thresh=0.0)
    assert (summary["images"], summary["ok"]) == (1, 1)
    (record,) = lines(tmp_path / "out")
    assert record["file"] == "one.jpg" and len(record["detections"]) == 2

    # an --out folder inside SRC is not searched: its annotated copies never become inputs
    run(tmp_path, tmp_path / "det", weights, save_images=True)
    assert (tmp_path / "det" / "images" / "one.jpg").is_file()
    assert run(tmp_path, tmp_path / "det", weights, save_images=True, resume=True)["images"] == 1

    with pytest.raises(LstmdetError, match="does not exist"):
        run(tmp_path / "missing", tmp_path / "o1", weights)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LstmdetError, match="no image or video files"):
        run(tmp_path / "empty", tmp_path / "o2", weights)
    with pytest.raises(LstmdetError, match="--conf"):
        run(tmp_path / "one.jpg", tmp_path / "o3", weights, score_thresh=1.5)
    with pytest.raises(LstmdetError, match="unknown device"):
        run(tmp_path / "one.jpg", tmp_path / "o4", weights, device="tpu:7")
    classify = lstmdet.create_model(
        {"task": "classify", "model": {"input": {"size": 28}, "backbone": {"name": "small_cnn", "widths": [8]},
                                       "encoder": {"name": "identity"},
                                       "head": {"name": "classifier", "num_classes": 2}}}
    )  # fmt: skip
    with pytest.raises(LstmdetError, match="detection model"):
        lstmdet.detect(tmp_path / "one.jpg", tmp_path / "o5", model=classify, progress=False, workers=0)


def test_default_settings_give_about_one_box_per_digit(tmp_path):
    """The shipped model on 20 held-out digit scenes: --conf 0.25 by default, --agnostic-nms one box per object.

    At the head's own threshold (0.05, which eval keeps for COCO mAP) these scenes gave ~30 boxes per
    digit; at 0.25 a digit can still come out twice with two classes, which --agnostic-nms removes.
    """
    from torchvision.ops import box_iou

    scenes = lstmdet.create_component("datasets", "digits_det", images=20, seed=5, split="test")
    (tmp_path / "src").mkdir()
    digits = 0
    for i in range(len(scenes)):
        image, target = scenes[i]
        Image.fromarray(image).save(tmp_path / "src" / f"{i:02d}.png")
        digits += len(target["boxes"])
    model = lstmdet.load()
    plain = lstmdet.detect(tmp_path / "src", tmp_path / "plain", model=model, progress=False, workers=0)
    assert plain["score_thresh"] == 0.25 and model.head.score_thresh == 0.05  # eval keeps the head's own
    assert digits <= plain["detections"] <= 2 * digits, (plain["detections"], digits)
    one = lstmdet.detect(tmp_path / "src", tmp_path / "one", model=model, progress=False, workers=0, agnostic_nms=True)
    assert one["agnostic_nms"] and abs(one["detections"] - digits) <= 0.3 * digits, (one["detections"], digits)
    for record in lines(tmp_path / "one"):
        boxes = torch.tensor([d["bbox"] for d in record["detections"]]).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        overlaps = box_iou(boxes, boxes).fill_diagonal_(0)
        assert not (overlaps > 0.7).any(), record["file"]


@pytest.mark.parametrize(
    ("cores", "device", "expected"), [(1, "cpu", 0), (2, "cpu", 0), (4, "cpu", 2), (16, "cpu", 4), (2, "cuda", 1),
                                      (16, "cuda", 8)]
)  # fmt: skip
def test_loader_workers_default_fits_the_machine(monkeypatch, cores, device, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert DetectOptions().loader_workers(device) == expected
    assert DetectOptions(workers=3).loader_workers(device) == 3
    with pytest.raises(LstmdetError, match="--workers"):
        DetectOptions(workers=-1)
