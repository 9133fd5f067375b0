"""The options of batch detection, what ``options.json`` records of them, and how ``--resume`` reads them back.

:class:`DetectOptions` are the options of :func:`lstmdet.engine.detect.detect` that do not name
files; :func:`head_options` sets the thresholds on the model's head for one run and yields the
run's identity. ``options.json`` holds that identity (weights SHA-256, effective thresholds...,
which a resumed run or a job's shard must match) and, under ``"options"``, the options as given
(:func:`options_record`), so that ``--resume`` without flags runs with the recorded ones
(:func:`resume_options`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lstmdet.data.images import DEFAULT_MAX_PIXELS
from lstmdet.data.video import DEFAULT_STREAM_TIMEOUT
from lstmdet.errors import LstmdetError
from lstmdet.options import check_bool, check_float, check_int

if TYPE_CHECKING:
    from lstmdet.engine.detect import Detector

#: ``detect`` option -> detection-head attribute it sets for the run.
HEAD_OPTIONS = {"score_thresh": "score_thresh", "nms_thresh": "nms_thresh", "max_detections": "detections_per_img"}
#: Minimum score ``detect`` keeps when ``score_thresh`` (``--conf``) is not given (Ultralytics' default):
#: the heads' own thresholds (0.05 and below) suit COCO mAP in ``eval`` and validation, which keep
#: them, but give dozens of low-score boxes per image.
DEFAULT_CONF = 0.25
#: IoU of ``agnostic_nms`` for a head without an ``nms_thresh`` of its own.
AGNOSTIC_IOU = 0.5


@dataclass(frozen=True)
class DetectOptions:
    """How a folder is detected: the options of :func:`detect` that do not name files (checked).

    A queued detect job carries these as JSON (:meth:`to_json`), so a worker runs exactly what
    ``lstmdet detect`` would. ``score_thresh=None`` means :data:`DEFAULT_CONF` for a head with a
    ``score_thresh``; ``nms_thresh`` and ``max_detections`` ``None`` keep the head's.

    Video files: ``vid_stride`` (every N-th frame), ``start`` / ``end`` (seconds, ``end``
    exclusive), ``max_frames`` (per video) select the frames; ``save_video`` writes annotated
    MP4s. They change nothing for images. ``stream_timeout``: seconds a stream URL may stay silent
    (opening it, and between reads) before it is given up with an error line.
    """

    batch_size: int = 8
    workers: int | None = None
    score_thresh: float | None = None
    nms_thresh: float | None = None
    max_detections: int | None = None
    agnostic_nms: bool = False
    device: str = "auto"
    half: bool = False
    save_images: bool = False
    sequence: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    vid_stride: int = 1
    start: float | None = None
    end: float | None = None
    max_frames: int | None = None
    save_video: bool = False
    stream_timeout: float = DEFAULT_STREAM_TIMEOUT

    def __post_init__(self) -> None:
        check_int(self.batch_size, "batch_size (--batch-size)", "detect", minimum=1)
        if self.workers is not None:
            check_int(self.workers, "workers (--workers)", "detect", minimum=0)
        check_int(self.max_pixels, "max_pixels (--max-pixels)", "detect", minimum=1)
        check_bool(self.agnostic_nms, "agnostic_nms (--agnostic-nms)", "detect")
        for value, name in ((self.score_thresh, "score_thresh (--conf)"), (self.nms_thresh, "nms_thresh (--iou)")):
            if value is not None:
                check_float(value, name, "detect", low=0.0, high=1.0)
        if self.max_detections is not None:
            check_int(self.max_detections, "max_detections (--max-det)", "detect", minimum=1)
        check_int(self.vid_stride, "vid_stride (--vid-stride)", "detect", minimum=1)
        check_bool(self.save_video, "save_video (--save-video)", "detect")
        if self.max_frames is not None:
            check_int(self.max_frames, "max_frames (--max-frames)", "detect", minimum=1)
        if self.start is not None:
            check_float(self.start, "start (--start)", "detect", low=0.0)
        if self.end is not None:
            check_float(self.end, "end (--end)", "detect", low=0.0, low_open=True)
        check_float(self.stream_timeout, "stream_timeout (--stream-timeout)", "detect", low=0.0, low_open=True)
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise LstmdetError(
                f"detect: --start ({self.start} s) must come before --end ({self.end} s); --end is the first time "
                "not processed"
            )
        object.__setattr__(self, "device", str(self.device))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DetectOptions:
        """Options from a JSON dict; unknown keys raise an error that lists the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LstmdetError(f"unknown detect option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        """The options as a JSON-ready dict."""
        return asdict(self)

    def loader_workers(self, device: torch.device | str) -> int:
        """Loader processes to use: ``workers``, or when it is ``None`` a choice for this machine.

        On CPU with 2 or fewer cores: 0, since loader processes would compete with the model's
        threads for the cores (measured in ``benchmarks/RESULTS.md``); on CPU otherwise
        ``min(4, cores // 2)``; on CUDA, where the cores are free for decoding, ``min(8, cores - 1)``.
        """
        if self.workers is not None:
            return self.workers
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if torch.device(device).type == "cuda":
            return max(1, min(8, cores - 1))
        return 0 if cores <= 2 else min(4, cores // 2)


@contextlib.contextmanager
def head_options(detector: Detector, opts: DetectOptions) -> Iterator[dict[str, Any]]:
    """Set the run's head options (thresholds) for the duration of the block.

    ``score_thresh`` ``None`` sets :data:`DEFAULT_CONF` on a head that has a ``score_thresh``.

    Yields:
        The run's identity as ``options.json`` records it: weights SHA-256, the head's effective
        thresholds, class-agnostic NMS, batch size, pixel limit, sequence mode and half precision.
        A resumed run or a shard of a job must match it exactly.
    """
    head = detector.model.head
    previous = {key: getattr(head, attr) for key, attr in HEAD_OPTIONS.items() if hasattr(head, attr)}
    conf = opts.score_thresh if opts.score_thresh is not None or "score_thresh" not in previous else DEFAULT_CONF
    wanted = {"score_thresh": conf, "nms_thresh": opts.nms_thresh, "max_detections": opts.max_detections}
    try:
        for key, value in wanted.items():
            if value is None:
                continue
            if key not in previous:
                raise LstmdetError(
                    f"the model's head {type(head).__name__} has no {HEAD_OPTIONS[key]} option; leave {key} unset"
                )
            setattr(head, HEAD_OPTIONS[key], float(value) if key != "max_detections" else int(value))
        yield {
            "weights_sha256": detector.identity["weights_sha256"],
            **{key: getattr(head, attr, None) for key, attr in HEAD_OPTIONS.items()},
            "agnostic_nms": opts.agnostic_nms,
            "batch_size": opts.batch_size,
            "max_pixels": opts.max_pixels,
            "sequence": opts.sequence,
            "half": opts.half and detector.device.type == "cuda",
        }
    finally:
        for key, value in previous.items():
            setattr(head, HEAD_OPTIONS[key], value)


#: Options ``options.json`` does not record: they change how fast a run goes, not what it writes.
NOT_RECORDED = ("workers", "stream_timeout")
#: Option -> its command-line flag, for messages.
FLAGS = {
    "batch_size": "--batch-size", "workers": "--workers", "score_thresh": "--conf", "nms_thresh": "--iou",
    "max_detections": "--max-det", "agnostic_nms": "--agnostic-nms", "device": "--device", "half": "--half",
    "save_images": "--save-images", "sequence": "--sequence", "max_pixels": "--max-pixels", "weights": "--weights",
    "vid_stride": "--vid-stride", "start": "--start", "end": "--end", "max_frames": "--max-frames",
    "save_video": "--save-video", "stream_timeout": "--stream-timeout",
}  # fmt: skip


def options_record(run_options: dict[str, Any], weights: str | None, opts: DetectOptions) -> dict[str, Any]:
    """What ``options.json`` holds: the run's identity and, under ``"options"``, the options as given.

    Args:
        run_options: The identity :func:`head_options` yields.
        weights: The weights as given (a path, ``"default"``), or ``None`` for a model object.
        opts: The run's options; all but :data:`NOT_RECORDED` are recorded.
    """
    given = {k: v for k, v in opts.to_json().items() if k not in NOT_RECORDED}
    return {**run_options, "options": {"weights": weights, **given}}


def resume_options(
    out: Path, path: Path, weights: str | os.PathLike | None, options: dict[str, Any]
) -> tuple[str | os.PathLike | None, dict[str, Any]]:
    """The weights and options of a resumed run: those recorded in ``options.json``, unless given.

    Args:
        out: The output folder (for messages).
        path: Its ``options.json``; a missing file, or one written before options were recorded,
            changes nothing.
        weights: The weights given, or ``None`` to take the recorded ones.
        options: The :class:`DetectOptions` fields given (only those).

    Returns:
        ``(weights, options)``: the given ones completed with the recorded ones.

    Raises:
        LstmdetError: An option is given with another value than the recorded one; the message names both.
    """
    recorded = (json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}).get("options") or {}
    merged = dict(options)
    for key, value in recorded.items():
        if key == "weights" or value is None or key not in {f.name for f in fields(DetectOptions)}:
            continue  # None: the default was used, which the run's identity (thresholds...) pins down
        if key in options and options[key] != value:
            flag = FLAGS.get(key, key)
            raise LstmdetError(
                f"cannot resume {out}: {key} ({flag}) is {options[key]!r} now but the run was started with "
                f"{value!r} (recorded in {path.name}); leave {flag} out to use the recorded value, or choose "
                "another --out"
            )
        merged[key] = value
    if weights is None and recorded.get("weights") not in (None, "default"):
        weights = recorded["weights"]
    return weights, merged
