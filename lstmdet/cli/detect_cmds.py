"""``lstmdet detect``: batch detection of an image folder (or one image), video files included."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lstmdet.cli.arguments import non_negative_int, non_negative_number, positive_int, positive_number, unit_interval

EXIT_STATUS = """\
exit status:
  0  every file was processed
  1  some files could not be read (or some video frames); each has an {"file", "error"} line in detections.jsonl
  2  usage error: SRC missing or without images, bad checkpoint, bad option, --out already used
     (without --resume or --exist-ok), or --resume with options that differ from the first run's
"""

#: Printed once when ``detect`` runs without ``--weights``.
DEFAULT_MODEL_NOTE = (
    "no --weights given: used the model shipped with lstmdet, a detector of handwritten digits 0-9 (not of "
    "objects in photos; digits never overlap, so --agnostic-nms keeps one box per digit); pass --weights CKPT "
    "for your own model (lstmdet train writes DIR/best.pt)"
)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``detect`` sub-command."""
    p = subparsers.add_parser(
        "detect",
        help="detect objects in a folder of images and videos",
        description="Run a detection checkpoint on every image and video under SRC (searched recursively) or on\n"
        "one file. Videos: .mp4 .mkv .avi .mov .webm .m4v and GIFs of more than one frame. Writes to --out:\n"
        "detections.jsonl (one line per image or video frame, written as it goes), images.json and\n"
        "coco_results.json (COCO images and results, for pycocotools' loadRes), summary.json, options.json.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_detect_arguments(p)
    add_video_arguments(p)
    p.add_argument(
        "--resume", action="store_true",
        help="continue an interrupted run in DIR: keep its lines, process the other files; weights and options "
        "left out are those the run recorded in DIR/options.json (giving another value is an error)",
    )  # fmt: skip
    p.add_argument(
        "--exist-ok", action="store_true",
        help="DIR holds a previous run: remove what it wrote (detections.jsonl, images.json, coco_results.json, "
        "summary.json, options.json, images/, videos/) and run afresh; other files in DIR stay",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_detect)


def add_detect_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``detect`` (shared with ``submit detect``), ``--resume`` and ``--quiet`` aside."""
    from lstmdet.data.images import DEFAULT_MAX_PIXELS

    p.add_argument(
        "src", metavar="SRC",
        help="image or video file, folder searched recursively, or a stream URL FFmpeg opens (rtsp://, http(s)://, "
        "file: ...)",
    )  # fmt: skip
    p.add_argument(
        "--weights", metavar="CKPT",
        help="checkpoint file, or 'default' (also when left out): the model shipped with lstmdet",
    )  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--batch-size", type=positive_int, metavar="N", help="images per forward pass (default 8)")
    p.add_argument(
        "--workers", type=non_negative_int, default=None, metavar="N",
        help="image-decoding processes (default: 0 on CPU with <= 2 cores, else min(4, cores/2); CUDA: cores-1, <= 8)",
    )  # fmt: skip
    p.add_argument(
        "--conf", type=unit_interval, metavar="F",
        help="minimum score kept (default 0.25, as Ultralytics; eval and validation keep the head's own low "
        "threshold, e.g. 0.05, which COCO mAP needs)",
    )  # fmt: skip
    p.add_argument("--iou", type=unit_interval, metavar="F", help="NMS IoU threshold (default: the head's)")
    p.add_argument(
        "--agnostic-nms", action="store_true", default=None,
        help="also suppress overlapping boxes of different classes (NMS across classes at --iou): one box per "
        "object, the best-scoring class",
    )  # fmt: skip
    p.add_argument("--max-det", type=positive_int, metavar="N", help="detections kept per image (default: the head's)")
    p.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda or cuda:N")
    p.add_argument(
        "--half", action="store_true", default=None, help="float16 mixed precision (CUDA only; ignored on CPU)"
    )  # fmt: skip
    p.add_argument(
        "--save-images", action="store_true", default=None, help="also write annotated copies under DIR/images/"
    )  # fmt: skip
    p.add_argument(
        "--sequence", action="store_true", default=None,
        help="video mode: each sub-folder of SRC holds the frames of one video (sorted by name); stateful models "
        "carry their state from frame to frame",
    )  # fmt: skip
    p.add_argument(
        "--max-pixels", type=positive_int, metavar="N",
        help=f"largest width*height read; larger files are refused unread (default {DEFAULT_MAX_PIXELS})",
    )  # fmt: skip


def add_video_arguments(p: argparse.ArgumentParser, *, stream: bool = True) -> None:
    """The video options of ``detect`` and ``submit detect`` (``stream``: with ``--stream-timeout``; a queued
    job reads no live stream)."""
    from lstmdet.data.video import DEFAULT_STREAM_TIMEOUT

    g = p.add_argument_group("video files", "how frames are selected and written; images ignore these options")
    g.add_argument("--vid-stride", type=positive_int, metavar="N", help="process every N-th frame (default 1: all)")
    g.add_argument(
        "--start", type=non_negative_number, metavar="S",
        help="first time processed, in seconds: seek there and start at the first frame at or after it",
    )  # fmt: skip
    g.add_argument(
        "--end", type=positive_number, metavar="S", help="seconds: stop before the first frame at or after it"
    )
    g.add_argument(
        "--max-frames", type=positive_int, metavar="N",
        help="process at most N frames of each video (of a live stream: then stop; Ctrl-C stops it too, and either "
        "way the outputs are complete)",
    )  # fmt: skip
    if stream:
        g.add_argument(
            "--stream-timeout", type=positive_number, metavar="S",
            help=f"SRC a stream URL (rtsp://, http(s)://, file: ...): seconds without data, while opening or "
            f"reading, before it is given up with an error line (default {DEFAULT_STREAM_TIMEOUT:g})",
        )  # fmt: skip
    g.add_argument(
        "--save-video", action="store_true", default=None,
        help="also write annotated videos (H.264 MP4, same frame rate and size) under DIR/videos/",
    )  # fmt: skip


def detect_options(args: argparse.Namespace) -> dict:
    """The :class:`~lstmdet.engine.detect_options.DetectOptions` fields given on the command line (only those).

    Options left out take their defaults, or on ``--resume`` the values the run recorded.
    """
    given = {
        "batch_size": args.batch_size, "workers": args.workers, "score_thresh": args.conf, "nms_thresh": args.iou,
        "max_detections": args.max_det, "agnostic_nms": args.agnostic_nms, "device": args.device, "half": args.half,
        "save_images": args.save_images, "sequence": args.sequence, "max_pixels": args.max_pixels,
        **{key: getattr(args, key, None) for key in ("vid_stride", "start", "end", "max_frames", "save_video",
                                                     "stream_timeout")},
    }  # fmt: skip
    return {key: value for key, value in given.items() if value is not None}


def run_detect(args: argparse.Namespace) -> int:
    """Detect, print where the outputs are and a one-line summary; 1 when some files failed."""
    from lstmdet.engine.detect import detect
    from lstmdet.engine.writers import ANNOTATED, ANNOTATED_VIDEOS, DETECTIONS, OPTIONS

    recorded = args.resume and (Path(args.out) / OPTIONS).is_file()  # a resumed run uses the recorded weights
    summary = detect(
        args.src,
        args.out,
        args.weights,
        resume=args.resume,
        exist_ok=args.exist_ok,
        progress=not args.quiet,
        **detect_options(args),
    )
    if args.weights is None and not recorded:  # after the run: a usage error stays one line
        print(DEFAULT_MODEL_NOTE, file=sys.stderr)
    files = "detections.jsonl, images.json, coco_results.json, summary.json"
    folders = "".join(f", {name}/" for name in (ANNOTATED, ANNOTATED_VIDEOS) if (Path(args.out) / name).is_dir())
    print(f"outputs in {args.out}: {files}{folders}")
    resumed = f", {summary['resumed']} kept from the earlier run" if summary["resumed"] else ""
    if summary.get("interrupted"):
        print(f"stream stopped by Ctrl-C; the outputs hold the {summary['frames']} frames read", file=sys.stderr)
    if "fps" in summary:  # the run had video files
        print(
            f"images: {summary['images']}, videos: {summary['videos']} ({summary['frames']} frames, "
            f"{summary['fps']:.1f} frames/s); {summary['ok']} lines ok, {summary['failed']} errors, "
            f"{summary['detections']} detections in {summary['seconds']:.1f} s{resumed}"
        )
    else:
        print(
            f"files: {summary['images']} ({summary['ok']} ok, {summary['failed']} unreadable), "
            f"{summary['detections']} detections in {summary['seconds']:.1f} s ({summary['images_per_s']:.1f} "
            f"images/s{resumed})"
        )
    if summary["failed"]:
        print(f"{summary['failed']} files or frames could not be read; see their error lines in {DETECTIONS}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0
