"""``lstmdet data``: write generated datasets as COCO, convert annotation formats.

::

    lstmdet data digits-det OUT [--images N] [--seed S] [--size PX] [--split train|test] [--exist-ok]
    lstmdet data digits-video OUT [--clips N] [--frames T] [--seed S] [--size PX] [--split train|test]
        [--format png|jpg|mp4] [--fps N] [--exist-ok]
    lstmdet data convert yolo SRC OUT_JSON [--names YAML] [--missing-labels error|empty]

The generated datasets are built through the registry (``digits_det`` / ``digits_video``), so the
files hold exactly what training on ``{name: digits_det, ...}`` sees. Output: ``OUT/images/`` and
``OUT/annotations.json`` (see :func:`lstmdet.data.coco.write_coco_dataset`); clips with ``--format mp4``:
``OUT/videos/*.mp4`` (H.264) and COCO-VID ``OUT/annotations.json``
(:func:`lstmdet.data.video_dataset.write_video_dataset`), read back by the ``coco_video`` dataset.
"""

from __future__ import annotations

import argparse
from typing import Any

from lstmdet.cli.arguments import non_negative_int, positive_int
from lstmdet.errors import LstmdetError, OptionError

EXIST_OK_HELP = (
    "OUT may be non-empty (else refused): first remove OUT/images/ and OUT/annotations.json of an earlier "
    "generation, so that no old image is left among the new ones"
)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``data`` sub-command and its own sub-commands."""
    data = subparsers.add_parser(
        "data",
        help="generate datasets (COCO files) and convert annotation formats",
        description="Write the generated digit datasets as images + COCO json, or convert YOLO labels to COCO.",
    )
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = actions.add_parser(
        "digits-det",
        help="write digits_det scenes (real MNIST digits, tight boxes) as COCO",
        description="Write scenes of real MNIST digits with tight boxes: OUT/images/*.png and OUT/annotations.json.",
    )
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--images", type=positive_int, default=1000, help="number of scenes (default 1000)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed (default 0)")
    p.add_argument("--size", type=positive_int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--split", choices=("train", "test"), default="train",
                   help="MNIST-10k protocol digits to draw: train (default) or test, the held-out ones")  # fmt: skip
    p.add_argument("--format", choices=("png", "jpg"), default="png", help="image file format (default png)")
    p.add_argument("--exist-ok", action="store_true", help=EXIST_OK_HELP)
    p.set_defaults(func=run_generate, dataset="digits_det")

    p = actions.add_parser(
        "digits-video",
        help="write digits_video clips (moving, sometimes occluded digits) as COCO with videos and tracks",
        description="Write Moving-MNIST-style clips: OUT/images/<video>/<frame>.png and OUT/annotations.json "
        "(images carry video_id and frame_index, annotations track_id); with --format mp4 one H.264 video per "
        "clip, OUT/videos/<video>.mp4, and COCO-VID OUT/annotations.json (videos; images with video_id and "
        "frame_id) that the coco_video dataset trains from.",
    )
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--clips", type=positive_int, default=200, help="number of clips (default 200)")
    p.add_argument("--frames", type=positive_int, default=8, help="frames per clip (default 8)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed (default 0)")
    p.add_argument("--size", type=positive_int, default=96, help="frame side in pixels (default 96)")
    p.add_argument("--split", choices=("train", "test"), default="train",
                   help="MNIST-10k protocol digits to draw: train (default) or test, the held-out ones")  # fmt: skip
    p.add_argument("--format", choices=("png", "jpg", "mp4"), default="png",
                   help="png or jpg frame files (default png), or mp4: one H.264 video per clip")  # fmt: skip
    p.add_argument("--fps", type=positive_int, default=10, help="--format mp4: frames per second (default 10)")
    p.add_argument("--exist-ok", action="store_true", help=EXIST_OK_HELP)
    p.set_defaults(func=run_generate, dataset="digits_video")

    convert = actions.add_parser(
        "convert", help="convert annotations to COCO json", description="Convert annotations to COCO json."
    )
    kinds = convert.add_subparsers(dest="source_format", metavar="FORMAT", required=True)
    p = kinds.add_parser(
        "yolo",
        help="YOLO layout (images/, labels/*.txt, names.yaml) to one COCO json",
        description="Convert a YOLO dataset (images/**, labels/** with 'class cx cy w h' lines, names.yaml) to "
        "COCO json with pixel boxes; category_id is the YOLO class index.",
    )
    p.add_argument("src", metavar="SRC", help="YOLO dataset folder")
    p.add_argument("out_json", metavar="OUT_JSON", help="COCO json file to write")
    p.add_argument("--names", default=None, help="class-names YAML (default SRC/names.yaml)")
    p.add_argument(
        "--missing-labels",
        choices=("error", "empty"),
        default="error",
        help="an image without a label file: an error (default), or an image without objects",
    )
    p.set_defaults(func=run_convert_yolo)


def run_generate(args: argparse.Namespace) -> int:
    """Build the generated dataset through the registry and write it as COCO."""
    from lstmdet.data.coco import write_coco_dataset
    from lstmdet.engine.progress import progress
    from lstmdet.manager import current_registry

    options: dict[str, Any] = {"seed": args.seed, "size": args.size, "split": args.split}
    if args.dataset == "digits_det":
        options["images"] = args.images
    else:
        options.update(clips=args.clips, frames=args.frames)
    try:
        dataset = current_registry().create("datasets", args.dataset, **options)
    except OptionError as exc:
        if exc.option not in options:
            raise
        raise LstmdetError(f"--{exc.option} {exc.message} ({args.dataset})") from None
    except LstmdetError:
        raise
    except ValueError as exc:
        raise LstmdetError(f"{args.dataset}: {exc}") from None
    unit = "images" if args.dataset == "digits_det" else "clips"
    with progress(total=len(dataset), desc=args.dataset.replace("_", "-"), unit=unit) as bar:
        if args.format == "mp4":
            from lstmdet.data.video_dataset import write_video_dataset

            summary = write_video_dataset(dataset, args.out, fps=args.fps, on_item=bar.update, exist_ok=args.exist_ok)
        else:
            summary = write_coco_dataset(
                dataset, args.out, image_format=args.format, on_item=bar.update, exist_ok=args.exist_ok
            )
    videos = f" in {summary['videos']} clips" if summary["videos"] else ""
    if args.format == "mp4":
        videos += " (H.264 MP4)"
    print(
        f"wrote {summary['images']} images{videos} with {summary['annotations']} boxes "
        f"({args.dataset}, split {args.split}, seed {args.seed}) to {summary['json']}"
    )
    return 0


def run_convert_yolo(args: argparse.Namespace) -> int:
    """Convert a YOLO dataset to COCO json."""
    from lstmdet.data.coco import yolo_to_coco

    summary = yolo_to_coco(args.src, args.out_json, names=args.names, missing_labels=args.missing_labels)
    skipped = f", {summary['skipped']} unreadable images skipped" if summary["skipped"] else ""
    print(
        f"wrote {summary['images']} images, {summary['annotations']} boxes, {summary['categories']} categories "
        f"to {summary['json']}{skipped}"
    )
    return 0
