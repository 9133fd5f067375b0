"""Output files of batch detection (``lstmdet detect``), written so that memory stays flat.

``detections.jsonl`` is the one file written as the run goes: one JSON line per input image, in
input order, then one line per processed frame of each video file (``frame_index`` and
``timestamp`` added), appended and flushed batch by batch. Everything else is derived from it at
the end by :func:`finalize`, which streams it line by line (no per-image results are held in memory):

* ``images.json``: the COCO ``images`` entries (``id`` 1..N in input order over the files that
  could be read, ``file_name``, ``width``, ``height``). A run with video files writes
  ``{"images": [...], "videos": [...]}`` instead, COCO-VID style: frame entries add ``video_id``,
  ``frame_id`` (the frame index) and ``timestamp``, and ``videos`` lists ``{"id", "name", "width",
  "height", "frames"}`` (one entry per video with readable frames);
* ``coco_results.json``: the COCO results list (``image_id``, ``category_id``, ``bbox`` ``[x, y, w,
  h]``, ``score``) that ``pycocotools.COCO.loadRes`` takes as it is.

``category_id`` is the model's COCO category id of the label (``model.category_ids``: the ids of
the COCO file it was trained on, e.g. 1..90 with gaps for official COCO; ``0..K-1`` for models
without ids), so results score against the right categories of that file.

Final files are written to a temporary name and renamed into place (:mod:`lstmdet.fileio`), so a
reader never sees half a file. :func:`read_done` reads back the lines of an interrupted run for
``--resume``. :class:`AnnotatedImageWriter` draws boxes, class names and scores on copies of the
images in background threads (annotated videos: :mod:`lstmdet.engine.detect_video`).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Container, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from lstmdet.boxes import clip_boxes
from lstmdet.engine.metrics import coco_results_list
from lstmdet.errors import LstmdetError
from lstmdet.fileio import atomic_open

DETECTIONS = "detections.jsonl"
IMAGES = "images.json"
RESULTS = "coco_results.json"
SUMMARY = "summary.json"
#: Options a run was started with; ``--resume`` refuses to mix results of different options.
OPTIONS = "options.json"
#: Folder of annotated copies (``--save-images``).
ANNOTATED = "images"
#: Folder of annotated videos (``--save-video``).
ANNOTATED_VIDEOS = "videos"
#: Everything a run writes in its output folder: what ``--exist-ok`` removes before running again.
OUTPUTS = (DETECTIONS, IMAGES, RESULTS, SUMMARY, OPTIONS, ANNOTATED, ANNOTATED_VIDEOS)
#: Decimals kept in the files: boxes to 1/1000 pixel, scores to 1e-5.
BOX_DECIMALS, SCORE_DECIMALS = 3, 5

_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
)  # fmt: skip


def detection_record(
    file: str,
    width: int,
    height: int,
    prediction: dict[str, Any],
    classes: Sequence[str],
    category_ids: Sequence[int] | None = None,
) -> dict:
    """The ``detections.jsonl`` line of one image.

    Args:
        file: Path relative to SRC, ``/``-separated.
        width: Displayed width in pixels (EXIF orientation applied).
        height: Displayed height.
        prediction: ``boxes`` ``(N, 4)`` xyxy pixels, ``scores`` ``(N,)``, ``labels`` ``(N,)`` (CPU).
        classes: Class names, by label.
        category_ids: COCO category id of each label (``model.category_ids``); ``None``: the label
            index.

    Returns:
        ``{"file", "width", "height", "detections": [{"bbox": [x, y, w, h], "score", "category_id",
        "category"}]}``, best first; ``category`` is ``classes[label]``, ``category_id``
        ``category_ids[label]``.
    """
    ids = list(range(len(classes))) if category_ids is None else list(category_ids)
    if len(ids) != len(classes):
        raise LstmdetError(f"got {len(ids)} category ids for {len(classes)} classes; give one id per class")
    detections = [
        {
            "bbox": [round(v, BOX_DECIMALS) for v in entry["bbox"]],
            "score": round(entry["score"], SCORE_DECIMALS),
            "category_id": ids[entry["category_id"]],
            "category": classes[entry["category_id"]],
        }
        for entry in coco_results_list([prediction], num_classes=len(classes))
    ]
    return {"file": file, "width": width, "height": height, "detections": detections}


def scaled_record(
    file: str,
    decoded: tuple[int, int],
    size: tuple[int, int] | None,
    prediction: dict[str, Any],
    classes: Sequence[str],
    category_ids: Sequence[int] | None = None,
) -> dict:
    """:func:`detection_record` of a prediction made on a decoded (possibly reduced) image.

    Args:
        file: Path relative to SRC.
        decoded: ``(H', W')`` of the image the model saw (the loader may have shrunk it).
        size: Full displayed ``(H, W)`` of the file, or ``None`` when it is ``decoded``; boxes are
            scaled from ``decoded`` pixels to these.
        prediction: ``boxes`` ``(N, 4)`` xyxy, ``scores`` ``(N,)``, ``labels`` ``(N,)`` (CPU).
        classes: Class names, by label.
        category_ids: COCO category id of each label, or ``None``.
    """
    height, width = size if size is not None else decoded
    decoded_h, decoded_w = decoded
    if (decoded_h, decoded_w) != (height, width):
        sx, sy = width / decoded_w, height / decoded_h
        prediction = {**prediction, "boxes": prediction["boxes"] * torch.tensor([sx, sy, sx, sy])}
    return detection_record(file, int(width), int(height), prediction, classes, category_ids)


class JsonlAppender:
    """Appends records to ``detections.jsonl`` after its first ``keep`` bytes (the rest is cut off).

    Args:
        path: The file (created when missing).
        keep: Bytes of complete lines to keep from an earlier run (0 starts afresh).
    """

    def __init__(self, path: Path, keep: int = 0) -> None:
        self._file = path.open("r+b" if keep else "wb")
        self._file.truncate(keep)
        self._file.seek(keep)

    def write(self, record: dict[str, Any]) -> None:
        """Write one line (buffered until :meth:`flush`)."""
        self._file.write(json.dumps(record).encode("utf-8") + b"\n")

    def flush(self) -> None:
        """Push the written lines to the operating system."""
        self._file.flush()

    def close(self) -> None:
        """Flush and close."""
        self._file.close()


def _lines(path: Path) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """``(offset, raw line, record)`` of the complete, valid lines; stops at the first bad one."""
    offset = 0
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return  # the torn last line of an interrupted run
            try:
                record = json.loads(line)
            except ValueError:
                return
            if not isinstance(record, dict) or not isinstance(record.get("file"), str):
                return
            yield offset, line, record
            offset += len(line)


def read_done(path: Path, open_ended: Container[str] = ()) -> tuple[set[str], int]:
    """The files an earlier run recorded in ``detections.jsonl``, for ``--resume``.

    Args:
        path: The file.
        open_ended: Files with one line per frame (videos): when the valid lines end with such a
            file's frames, it may have been cut short, so its lines are dropped (it is run again).
            A file whose last line is a file-level ``error`` (no ``frame_index``) is complete.

    Returns:
        ``(files, keep)``: the ``file`` of every complete, valid line before the first torn or
        invalid one, and the byte length of those lines (what to keep of the file).
    """
    if not path.is_file():
        return set(), 0
    done: set[str] = set()
    keep = run_start = 0
    last: dict[str, Any] = {}
    for offset, line, record in _lines(path):
        if record["file"] != last.get("file"):
            run_start = offset
        done.add(record["file"])
        keep, last = offset + len(line), record
    if last.get("file") in open_ended and "frame_index" in last:
        done.discard(last["file"])
        keep = run_start
    return done, keep


def _put_in_order(path: Path, files: Sequence[str]) -> None:
    """Rewrite ``detections.jsonl`` with the lines of ``files`` in that order (a video's lines together).

    Needed only after a ``--resume`` whose earlier run did not write a prefix of the inputs; a file
    already in order is left untouched. The lines of a file are its first run of consecutive lines.
    """
    spans: dict[str, list[int]] = {}  # file -> [start, end) bytes of its first run of lines
    in_order, position, previous = True, 0, None
    for offset, line, record in _lines(path):
        file = record["file"]
        if file == previous:
            if spans[file][1] == offset:
                spans[file][1] = offset + len(line)
            continue
        in_order = in_order and position < len(files) and file == files[position]
        position, previous = position + 1, file
        spans.setdefault(file, [offset, offset + len(line)])
    if in_order and position == len(files) == len(spans):
        return
    missing = [f for f in files if f not in spans]
    if missing:
        raise LstmdetError(f"{path} has no line for {len(missing)} input files (e.g. {missing[0]!r}); run again")
    with path.open("rb") as src, atomic_open(path, "wb") as dst:
        for file in files:
            start, end = spans[file]
            src.seek(start)
            dst.write(src.read(end - start))


class _JsonArray:
    """Writes a JSON array one element at a time (after ``prefix``, e.g. ``'{"images": '``)."""

    def __init__(self, f: IO[str], prefix: str = "") -> None:
        self.f, self.count = f, 0
        f.write(prefix + "[")

    def add(self, item: dict[str, Any]) -> None:
        self.f.write(("\n" if self.count == 0 else ",\n") + json.dumps(item))
        self.count += 1

    def close(self, end: str = "\n") -> None:
        self.f.write(("\n]" if self.count else "]") + end)


def finalize(out: Path, files: Sequence[str], *, videos: bool = False) -> dict[str, int]:
    """Write ``images.json`` and ``coco_results.json`` from ``detections.jsonl``, streaming.

    Args:
        out: Output folder holding ``detections.jsonl`` with the lines of each of ``files``.
        files: Every input file (relative name) in output order; the jsonl is put in this order.
        videos: The run has video files: ``images.json`` is ``{"images": [...], "videos": [...]}``
            (see the module docstring); else the plain ``images`` array.

    Returns:
        ``{"ok", "failed", "detections"}`` counts (lines without and with ``error``, boxes) and,
        with ``videos``, ``frames`` (the video frames among the ``ok`` lines).
    """
    path = out / DETECTIONS
    _put_in_order(path, files)
    ok = failed = 0
    listed: dict[str, dict[str, Any]] = {}  # video file -> its ``videos`` entry (one per video)
    with atomic_open(out / IMAGES) as images_file, atomic_open(out / RESULTS) as results_file:
        images, results = _JsonArray(images_file, '{"images": ' if videos else ""), _JsonArray(results_file)
        for _offset, _line, record in _lines(path):
            if "error" in record:
                failed += 1
                continue
            ok += 1
            entry = {"id": ok, "file_name": record["file"], "width": record["width"], "height": record["height"]}
            if "timestamp" in record:  # a frame of a video file
                video = listed.setdefault(record["file"], {"id": len(listed) + 1, "name": record["file"],
                                                           "width": record["width"], "height": record["height"],
                                                           "frames": 0})  # fmt: skip
                video["frames"] += 1
                entry.update(video_id=video["id"], frame_id=record["frame_index"], timestamp=record["timestamp"])
            images.add(entry)
            for det in record["detections"]:
                results.add({"image_id": ok, "category_id": det["category_id"], "bbox": det["bbox"],
                             "score": det["score"]})  # fmt: skip
        if videos:
            images.close(end="")
            entries = _JsonArray(images_file, ',\n"videos": ')
            for video in listed.values():
                entries.add(video)
            entries.close(end="}\n")
        else:
            images.close()
        results.close()
    counts = {"ok": ok, "failed": failed, "detections": results.count}
    return {**counts, "frames": sum(video["frames"] for video in listed.values())} if videos else counts


def annotated_path(out: Path, file: str) -> Path:
    """Where ``--save-images`` puts the annotated copy of ``file`` (relative to SRC).

    JPEG and PNG inputs keep their relative path (written as JPEG / PNG); other formats get
    ``.png`` appended (``scan.tif`` -> ``scan.tif.png``), so two inputs never share an output.
    """
    suffix = Path(file).suffix.lower()
    return out / ANNOTATED / (file if suffix in (".jpg", ".jpeg", ".png") else f"{file}.png")


def annotated_video_path(out: Path, file: str) -> Path:
    """Where ``--save-video`` puts the annotated copy of video ``file``: ``out/videos/<file>``, with
    ``.mp4`` appended unless it ends so (``a.mkv`` -> ``a.mkv.mp4``: two inputs never share an output)."""
    return out / ANNOTATED_VIDEOS / (file if Path(file).suffix.lower() == ".mp4" else f"{file}.mp4")


@dataclass(frozen=True)
class Label:
    """Where :func:`draw_detections` writes one detection's label.

    Attributes:
        text: The label (``"cat 0.91"``; only the class name, or a cut one, when space is short).
        box: ``(left, top, right, bottom)`` pixels of its background, right and bottom exclusive:
            inside the image and disjoint from every other label's box.
        colour: RGB of the background (the class colour); the text is black or white, whichever reads.
    """

    text: str
    box: tuple[int, int, int, int]
    colour: tuple[int, int, int]


def label_font(width: int, height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The label font for a ``width`` x ``height`` image: about 1/40 of its shorter side, at least 8 px."""
    return _font(max(8, round(min(width, height) / 40)))


def _outline(det: dict[str, Any], width: int, height: int) -> tuple[float, float, float, float]:
    """A detection's box outline in pixels, inside the image (boxes touching the right or bottom edge end at W or H)."""
    x, y, w, h = det["bbox"]
    x1, y1, x2, y2 = clip_boxes([[x, y, x + w, y + h]], width - 1, height - 1)[0].tolist()
    return x1, y1, max(x2, x1), max(y2, y1)


def _fit_text(det: dict[str, Any], font: Any, width: int) -> tuple[str, int, int] | None:
    """``(text, w, h)``: the first of ``"class score"``, ``"class"``, a cut class name whose box fits ``width``."""
    name = str(det["category"])
    for text in (f"{name} {det['score']:.2f}", name, *(name[:n] for n in range(len(name) - 1, 0, -1))):
        left, top, right, bottom = font.getbbox(text)
        text_w, text_h = right - left + 2, bottom - top + 2
        if text_w <= width:
            return text, text_w, text_h
    return None


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place(
    outline: tuple[float, float, float, float], size: tuple[int, int], image: tuple[int, int],
    taken: list[tuple[int, int, int, int]],
) -> tuple[int, int, int, int]:  # fmt: skip
    """The first spot for a ``size`` label near ``outline`` that no ``taken`` box overlaps.

    Tried in order: above the box's top-left corner, inside its top, below it, inside its bottom
    (left-aligned, then right-aligned), then stacked further down and up from above the box. All
    spots are moved inside the image; when none is free, the one overlapping least is used.
    """
    (x1, y1, x2, y2), (w, h), (width, height) = outline, size, image
    lefts = [round(x1), round(x2) + 1 - w]
    tops = [round(y1) - h, round(y1), round(y2) + 1, round(y2) + 1 - h]
    spots = [(left, top) for left in lefts for top in tops]
    steps = range(1, height // max(h, 1) + 2)
    spots += [(left, tops[0] + sign * k * h) for k in steps for left in lefts for sign in (1, -1)]
    boxes = []
    for left, top in spots:
        left, top = min(max(left, 0), width - w), min(max(top, 0), height - h)
        box = (left, top, left + w, top + h)
        if not any(_overlaps(box, other) for other in taken):
            return box
        boxes.append(box)
    return min(boxes, key=lambda b: sum(_overlap_area(b, other) for other in taken))


def _overlap_area(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def layout_labels(
    detections: Sequence[dict[str, Any]], width: int, height: int, font: Any | None = None
) -> list[Label | None]:
    """Where the labels of ``detections`` go on a ``width`` x ``height`` image (see :func:`draw_detections`).

    Labels are placed best detection first (the list order), each above its box's top-left corner
    when that is free, else at the first free spot among inside the box's top, below the box,
    inside its bottom, right-aligned, then stacked away from the box. Every label stays inside the
    image; a label wider than the image keeps only the class name, cut if needed.

    Args:
        detections: ``detections.jsonl`` entries, best first.
        width: Image width in pixels.
        height: Image height.
        font: The font (default :func:`label_font` for the image).

    Returns:
        One :class:`Label` per detection, or None where the image is too small for any text.
    """
    font = label_font(width, height) if font is None else font
    taken: list[tuple[int, int, int, int]] = []
    labels: list[Label | None] = []
    for det in detections:
        fitted = _fit_text(det, font, width)
        if fitted is None or fitted[2] > height:
            labels.append(None)
            continue
        text, text_w, text_h = fitted
        box = _place(_outline(det, width, height), (text_w, text_h), (width, height), taken)
        taken.append(box)
        labels.append(Label(text, box, _PALETTE[det["category_id"] % len(_PALETTE)]))
    return labels


def draw_detections(image: np.ndarray, detections: Sequence[dict[str, Any]]) -> Image.Image:
    """Boxes, class names and scores drawn on a copy of ``image``.

    The font scales with the image; each label has a background in its class colour and stays
    inside the image, and labels never cover each other (:func:`layout_labels` places them).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        detections: ``detections.jsonl`` entries (``bbox`` ``[x, y, w, h]``, ``score``,
            ``category_id``, ``category``), best first.
    """
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    line = max(1, round(min(width, height) / 300))
    font = label_font(width, height)
    for det in reversed(detections):  # best on top
        colour = _PALETTE[det["category_id"] % len(_PALETTE)]
        draw.rectangle(_outline(det, width, height), outline=colour, width=line)
    for label in layout_labels(detections, width, height, font):
        if label is None:
            continue
        left, top, right, bottom = label.box
        draw.rectangle((left, top, right - 1, bottom - 1), fill=label.colour)
        text_left, text_top, _, _ = font.getbbox(label.text)
        dark = 0.299 * label.colour[0] + 0.587 * label.colour[1] + 0.114 * label.colour[2] < 128
        draw.text((left + 1 - text_left, top + 1 - text_top), label.text, fill=(255,) * 3 if dark else (0,) * 3,
                  font=font)  # fmt: skip
    return canvas


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` pixels (its fixed bitmap font without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):
        return ImageFont.load_default()


def _save_annotated(image: np.ndarray, detections: list[dict[str, Any]], path: Path) -> None:
    canvas = draw_detections(image, detections)
    path.parent.mkdir(parents=True, exist_ok=True)
    is_jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    with atomic_open(path, "wb") as f:
        canvas.save(f, format="JPEG" if is_jpeg else "PNG", **({"quality": 90} if is_jpeg else {"compress_level": 1}))


class AnnotatedImageWriter:
    """Draws and encodes annotated copies in background threads (Pillow releases the GIL).

    At most ``2 * threads`` images wait at a time, so memory stays bounded.

    Args:
        out: Output folder; copies go under ``out/images/`` (see :func:`annotated_path`).
        threads: Encoder threads.
    """

    def __init__(self, out: Path, threads: int = 2) -> None:
        self.out = out
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lstmdet-draw")
        self._pending: deque[Future] = deque()
        self._limit = 2 * threads

    def submit(self, file: str, image: torch.Tensor, detections: list[dict[str, Any]]) -> None:
        """Queue the annotated copy of ``file``.

        Args:
            file: Path relative to SRC.
            image: ``(3, H, W)`` float in ``[0, 1]`` or uint8, on any device.
            detections: Its ``detections.jsonl`` entries.
        """
        if image.dtype != torch.uint8:
            image = image.mul(255).round_().to(torch.uint8)
        array = image.permute(1, 2, 0).cpu().numpy().copy()
        while len(self._pending) >= self._limit:
            self._wait(self._pending.popleft())
        self._pending.append(self._pool.submit(_save_annotated, array, detections, annotated_path(self.out, file)))

    def _wait(self, future: Future) -> None:
        try:
            future.result()
        except OSError as exc:
            raise LstmdetError(
                f"cannot write an annotated image under {self.out / ANNOTATED}: {exc}; check free space "
                "and permissions, or run without --save-images"
            ) from None

    def close(self) -> None:
        """Wait for every queued image (raises the first write error)."""
        try:
            while self._pending:
                self._wait(self._pending.popleft())
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
