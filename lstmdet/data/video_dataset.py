"""Clip datasets stored as video files: writing generated clips as H.264 MP4 plus COCO-VID json, and
reading training and evaluation clips straight from the video files (no frame dumps on disk).

Layout (:func:`write_video_dataset`): ``OUT/videos/000001.mp4`` per clip and ``OUT/annotations.json``
in COCO-VID form: ``videos`` (``id``, ``name``, ``file_name`` relative to ``OUT``, ``width``, ``height``,
``frames``, ``fps``), one ``images`` entry per frame (``file_name`` of its video, ``video_id``, ``frame_id``
0-based, ``timestamp`` seconds), ``annotations`` with ``track_id`` (unique over the file, from 1),
categories as :func:`lstmdet.data.coco.write_coco_dataset` writes them.

Reading (:class:`CocoVideo`, the ``coco_video`` dataset): each item is a window of ``frames``
consecutive frames of one video, windows ``stride`` frames apart. A window is read by seeking to its
first frame's presentation time (:func:`lstmdet.data.video.read_frames` seeks to the key frame before
it and drops the frames before), so reading clip ``k`` of a long video costs at most one GOP of extra
decoding; the frames read are checked to be the ones asked for (frame-accurate).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from lstmdet.data.coco import DataFormatError, _annotation, _frame_annotations, _info
from lstmdet.data.video import VideoEncoder, VideoReadError, read_frames
from lstmdet.errors import LstmdetError
from lstmdet.fileio import atomic_write_json, prepare_folder, remove_outputs
from lstmdet.options import check_int

#: What :func:`write_video_dataset` writes in its folder (and ``exist_ok`` removes first).
WRITTEN_VIDEOS = ("videos", "annotations.json")
#: Frame rate of written clips.
DEFAULT_FPS = 10
#: x264 quality of written clips: near-lossless, so that training sees the generator's pixels (noise included).
DATASET_CRF = 12


def write_video_dataset(
    dataset: Any,
    out_dir: str | os.PathLike,
    *,
    fps: int = DEFAULT_FPS,
    on_item: Callable[[], None] | None = None,
    exist_ok: bool = False,
) -> dict[str, Any]:
    """Write a clip dataset as one H.264 MP4 per clip plus COCO-VID ``annotations.json`` (see the module docstring).

    Args:
        dataset: Map-style dataset with ``classes`` (and optionally ``category_ids``) whose items are
            ``(clip (T, H, W, 3) uint8, {"frames": [{"boxes", "labels", "track_ids"?, "occluded"?}, ...]})``.
        out_dir: Output folder; must be empty unless ``exist_ok``.
        fps: Frame rate of the videos (frame ``t`` is shown at ``t / fps`` seconds).
        on_item: Called after each clip is written.
        exist_ok: First remove ``videos/`` and ``annotations.json`` of an earlier generation.

    Returns:
        Summary ``{"out", "json", "images", "annotations", "videos", "categories"}``.

    Raises:
        LstmdetError: A non-empty ``out_dir`` without ``exist_ok``, or items that are not detection clips.
    """
    out = prepare_folder(out_dir)
    held = sorted(p.name for p in out.iterdir())
    if held and not exist_ok:
        raise LstmdetError(
            f"{out} is not empty (it holds {', '.join(held[:3])}{', ...' if len(held) > 3 else ''}); a generated "
            "dataset goes into an empty folder. Pass --exist-ok to replace videos/ and annotations.json of an "
            "earlier generation, or choose another folder"
        )
    remove_outputs(out, WRITTEN_VIDEOS)
    prepare_folder(out / "videos")
    classes = list(dataset.classes)
    category_ids = list(getattr(dataset, "category_ids", range(len(classes))))
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    videos: list[dict[str, Any]] = []
    tracks: dict[tuple[int, int], int] = {}
    for index in range(len(dataset)):
        clip, target = dataset[index]
        clip, where = np.asarray(clip), f"dataset item {index}"
        if "frames" not in target or clip.ndim != 4 or clip.shape[3] != 3 or len(target["frames"]) != clip.shape[0]:
            raise LstmdetError(f"{where}: a video dataset needs clips: a (T, H, W, 3) array and T frame targets")
        video_id = len(videos) + 1
        name = f"videos/{video_id:06d}.mp4"
        height, width = clip.shape[1:3]
        encoder = VideoEncoder(out / name, width, height, Fraction(fps), crf=DATASET_CRF)
        try:
            for t, image in enumerate(clip):
                encoder.write(image, t / fps)
        finally:
            encoder.close()
        videos.append({"id": video_id, "name": f"{video_id:06d}", "file_name": name, "width": int(width),
                       "height": int(height), "frames": int(clip.shape[0]), "fps": fps})  # fmt: skip
        for t, frame in enumerate(target["frames"]):
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": name, "width": int(width), "height": int(height),
                           "video_id": video_id, "frame_id": t, "timestamp": t / fps})  # fmt: skip
            boxes, labels = _frame_annotations(frame, f"{where} frame {t}")
            track_ids, occluded = frame.get("track_ids"), frame.get("occluded")
            for k, (box, label) in enumerate(zip(boxes, labels, strict=True)):
                more: dict[str, Any] = {}
                if track_ids is not None:
                    more["track_id"] = tracks.setdefault((video_id, int(track_ids[k])), len(tracks) + 1)
                if occluded is not None:
                    more["occluded"] = bool(occluded[k])
                annotations.append(_annotation(len(annotations) + 1, image_id, category_ids[label], box, **more))
        if on_item is not None:
            on_item()
    json_path = out / "annotations.json"
    atomic_write_json(json_path, {
        "info": _info(f"written by lstmdet from {type(dataset).__name__} (H.264 MP4 clips)"),
        "videos": videos, "images": images, "annotations": annotations,
        "categories": [{"id": cid, "name": name} for cid, name in zip(category_ids, classes, strict=True)],
    }, indent=None)  # fmt: skip
    return {"out": str(out), "json": str(json_path), "images": len(images), "annotations": len(annotations),
            "videos": len(videos), "categories": len(classes)}  # fmt: skip


class CocoVideo(Dataset):
    """Clips read from video files with COCO-VID annotations (as :func:`write_video_dataset` writes them).

    Args:
        annotations: The COCO-VID annotations file.
        root: Folder the ``file_name`` of ``videos`` are relative to (default: the annotations file's folder).
        frames: Frames per clip ``T``; ``None``: each whole video is one clip.
        stride: Frames between the first frames of two clips of a video (default ``frames``: no overlap).

    Attributes:
        classes: Category names by increasing category id; labels are ``0..K-1`` in that order.
        category_ids: The file's id of each label.
        clips: ``(video index, first frame)`` of each item.
        task: ``"detect"``.

    Items:
        ``(clip (T, H, W, 3) uint8 RGB, {"frames": [{"boxes": (N, 4) float32 xyxy, "labels": (N,) int64,
        "track_ids": (N,) int64} for each frame]})``, as the ``digits_video`` dataset gives them.

    Raises:
        DataFormatError: The json is missing, malformed, or has no ``videos``; an image names an
            unknown video; a video is shorter than ``frames``.
    """

    task = "detect"

    def __init__(
        self,
        annotations: str | os.PathLike,
        root: str | os.PathLike | None = None,
        frames: int | None = None,
        stride: int | None = None,
    ) -> None:
        path = Path(annotations)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataFormatError(f"cannot read the video annotations {path}: {exc}") from None
        if not isinstance(data, dict) or not data.get("videos"):
            raise DataFormatError(f"{path}: no 'videos' list; a coco_video dataset needs COCO-VID annotations "
                                  "(lstmdet data digits-video OUT --format mp4 writes them)")  # fmt: skip
        self.frames = None if frames is None else check_int(frames, "frames", "coco_video", minimum=1)
        self.stride = check_int(stride if stride is not None else (frames or 1), "stride", "coco_video", minimum=1)
        root = Path(root) if root is not None else path.parent
        categories = sorted(data.get("categories", []), key=lambda c: c["id"])
        self.classes = [str(c["name"]) for c in categories]
        self.category_ids = [int(c["id"]) for c in categories]
        label_of = {cid: i for i, cid in enumerate(self.category_ids)}
        self.videos = sorted(data["videos"], key=lambda v: v["id"])
        self.paths = [root / v["file_name"] for v in self.videos]
        self.fps = [Fraction(v.get("fps") or 0).limit_denominator(1001000) or None for v in self.videos]
        position = {v["id"]: i for i, v in enumerate(self.videos)}
        frame_of: dict[int, tuple[int, int]] = {}
        for image in data.get("images", []):
            if image.get("video_id") not in position:
                raise DataFormatError(f"{path}: image {image.get('id')} names no known video "
                                      f"(video_id {image.get('video_id')!r})")  # fmt: skip
            frame_of[image["id"]] = (position[image["video_id"]], int(image["frame_id"]))
        per_frame: dict[tuple[int, int], list[tuple[list[float], int, int]]] = defaultdict(list)
        for ann in data.get("annotations", []):
            x, y, w, h = ann["bbox"]
            per_frame[frame_of[ann["image_id"]]].append(([x, y, x + w, y + h], label_of[ann["category_id"]],
                                                         int(ann.get("track_id", 0))))  # fmt: skip
        self._targets = per_frame
        self.clips: list[tuple[int, int]] = []
        for v, video in enumerate(self.videos):
            count = int(video["frames"])
            length = self.frames or count
            if count < length:
                raise DataFormatError(f"{path}: video {video['file_name']} has {count} frames, fewer than "
                                      f"frames={length}")  # fmt: skip
            self.clips.extend((v, first) for first in range(0, count - length + 1, self.stride))

    def __len__(self) -> int:
        return len(self.clips)

    def target(self, video: int, frame: int) -> dict[str, np.ndarray]:
        """The annotations of frame ``frame`` (0-based) of video ``video`` (index into :attr:`videos`)."""
        objects = self._targets.get((video, frame), [])
        return {
            "boxes": np.array([o[0] for o in objects], dtype=np.float32).reshape(-1, 4),
            "labels": np.array([o[1] for o in objects], dtype=np.int64),
            "track_ids": np.array([o[2] for o in objects], dtype=np.int64),
        }

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        if not 0 <= index < len(self.clips):
            raise IndexError(f"coco_video index {index} out of range for {len(self.clips)} clips")
        video, first = self.clips[index]
        length = self.frames or int(self.videos[video]["frames"])
        fps = self.fps[video]
        start = float(first / fps) if fps and first else None
        try:
            frames = list(read_frames(self.paths[video], start=start, max_frames=length))
        except VideoReadError as exc:
            raise LstmdetError(f"coco_video clip {index}: {exc}") from None
        got = [f.index for f in frames]
        if got != list(range(first, first + length)):
            raise LstmdetError(
                f"coco_video clip {index}: asked for frames {first}..{first + length - 1} of {self.paths[video]}, "
                f"read {got[:3]}...; is the 'fps' of its videos entry right?"
            )
        clip = np.stack([f.image for f in frames])
        return clip, {"frames": [self.target(video, first + t) for t in range(length)]}
