"""Batch detection of image folders: the engine behind ``lstmdet detect`` and ``lstmdet.detect``.

Video files (and animated GIFs) in SRC run after the images, frame by frame
(:mod:`lstmdet.engine.detect_video`).

Pipeline: a ``DataLoader`` with ``workers`` processes decodes the files (:func:`read_image`: pixel
limit checked on the header, EXIF orientation applied, any mode to RGB) while the model runs on the
previous batch under ``torch.inference_mode``; each result is appended to ``detections.jsonl`` at
once (see :mod:`lstmdet.engine.writers`), and the other files are derived from it at the end.

Loader processes. ``workers=None`` (the default) chooses for the machine
(:meth:`DetectOptions.loader_workers`): on CPU none where it has 2 or fewer cores (decoding in this
process, between batches, is faster there than processes competing with the model's threads for
the cores; figures in ``benchmarks/RESULTS.md``), else ``min(4, cores // 2)``; on CUDA
``min(8, cores - 1)``.

Reproducibility. A detector pads the images of a batch to a common size, so an image's detections
depend slightly on its batch mates. (Running each padded shape as its own batch would avoid that,
but on CPU the extra forward passes cost more than the padding: see ``benchmarks/RESULTS.md``.)
Batches are therefore fixed slices of the input order (``batch_size`` files each), and
``--resume`` recomputes a whole slice when any of its files is missing (writing only the missing
lines): a resumed run writes exactly what an uninterrupted one would have. It must use the same
options (weights, thresholds, batch size...), which ``options.json`` records: options left out
of a resume are read back from it.

Sequence mode (``--sequence``): SRC holds one folder of frames per video (any depth; the frames
of a video are the image files directly in its folder, sorted by name). A stateful model (e.g. a
ConvLSTM encoder) sees each video frame by frame through :meth:`LstmdetModel.predict_step`, with
its state reset at the start of every video, which gives the detections of ``model.predict`` on
the whole clip. Videos run one at a time (their frames are still decoded ahead by the loader); an
unreadable frame gets an error line and the state carries on to the next readable frame. A
stateless model runs frames in batches like still images.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader

from lstmdet.boxes import class_agnostic_nms
from lstmdet.engine.detect_inputs import ImageFiles, Inputs, Plan, as_list, batches, list_inputs
from lstmdet.engine.detect_options import AGNOSTIC_IOU, DetectOptions, head_options, options_record, resume_options
from lstmdet.engine.detect_video import detect_videos, stream_interrupts
from lstmdet.engine.device import resolve_device
from lstmdet.engine.malloc import keep_freed_memory
from lstmdet.engine.progress import progress as progress_display
from lstmdet.engine.writers import (
    ANNOTATED,
    ANNOTATED_VIDEOS,
    DETECTIONS,
    OPTIONS,
    OUTPUTS,
    SUMMARY,
    AnnotatedImageWriter,
    JsonlAppender,
    finalize,
    read_done,
    scaled_record,
)
from lstmdet.errors import Cancelled, LstmdetError
from lstmdet.fileio import atomic_write_json, prepare_folder, remove_outputs
from lstmdet.model import LstmdetModel


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _device(name: str | torch.device, model: LstmdetModel | None) -> torch.device:
    """``auto`` with a model given: the model's device; otherwise :func:`resolve_device`."""
    if str(name) == "auto" and model is not None:
        return model.device
    return resolve_device(name)


class Detector(NamedTuple):
    """A detection model ready to run.

    Attributes:
        model: The model, in eval mode on ``device``.
        device: Where it runs.
        identity: ``{"weights": path or "default" or None, "weights_sha256": hex or None}``.
    """

    model: LstmdetModel
    device: torch.device
    identity: dict[str, str | None]


def open_detector(
    weights: str | Path | None = None, *, model: LstmdetModel | None = None, device: str | torch.device = "auto"
) -> Detector:
    """Load a detection checkpoint (or take ``model``) onto ``device``.

    Args:
        weights: Checkpoint file, ``"default"`` for the model shipped with lstmdet, an exported
            ``.onnx`` detector (run by ONNX Runtime), or ``torchvision:<builder>`` (a COCO detector,
            :mod:`lstmdet.pretrained`); ``None`` uses ``model``, else the shipped model.
        model: An already built detection model (instead of ``weights``).
        device: ``auto`` (CUDA when present; a given ``model``'s own device), ``cpu``, ``cuda[:N]``.

    Raises:
        LstmdetError: Both ``weights`` and ``model``, a bad device or checkpoint, or a model that
            is not a detector.
    """
    from lstmdet.checkpoint import DEFAULT_WEIGHTS, default_model_path, load_model
    from lstmdet.pretrained import builder_name, is_pretrained_name, weights_file

    onnx_file = model is None and weights is not None and Path(weights).suffix.lower() == ".onnx"
    dev = torch.device("cpu") if onnx_file else _device(device, model)  # ONNX Runtime is fed from the CPU
    if onnx_file:  # an exported detector: ONNX Runtime behind the same interface (lstmdet.export.runtime)
        from lstmdet.export.runtime import OnnxModel

        net = OnnxModel(weights, device=str(device))
        identity = {"weights": str(weights), "weights_sha256": _sha256(Path(weights))}
    elif model is not None:
        if weights is not None:
            raise LstmdetError("give weights or model, not both")
        net, identity = model.to(dev).eval(), {"weights": None, "weights_sha256": None}
    else:
        net = load_model(weights, map_location=dev)
        shipped = weights is None or str(weights) == DEFAULT_WEIGHTS
        path = default_model_path() if shipped else Path(weights)
        if is_pretrained_name(str(weights)):  # the identity of a torchvision detector: its weights file
            path = weights_file(builder_name(str(weights), "--weights"))[0]
        identity = {"weights": DEFAULT_WEIGHTS if shipped else str(weights), "weights_sha256": _sha256(path)}
    if net.task != "detect":
        raise LstmdetError(
            f"detect needs a detection model, but {identity['weights'] or 'the model'} is a {net.task} model"
        )
    return Detector(net, dev, identity)


class _Runner:
    """Runs the model on decoded images, turning per-image model failures into error messages.

    Args:
        model: The detection model, in eval mode on ``device``.
        device: Where it runs.
        half: float16 autocast (CUDA).
        agnostic_iou: IoU of class-agnostic NMS applied to every prediction, or ``None`` for none.
    """

    def __init__(self, model: LstmdetModel, device: torch.device, half: bool, agnostic_iou: float | None) -> None:
        self.model, self.device, self.half, self.agnostic_iou = model, device, half, agnostic_iou
        self.state: Any = None
        self.video: str | None = None
        self.video_size: tuple[int, ...] = ()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.half:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def to_device(self, image: torch.Tensor) -> torch.Tensor:
        image = image.to(self.device, non_blocking=self.device.type == "cuda")
        return image.float().div_(255.0) if image.dtype == torch.uint8 else image

    def predict(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor] | str]:
        """Predictions for still images; a batch that fails is retried image by image."""
        try:
            with self._autocast():
                return self.model.predict(images)
        except (RuntimeError, ValueError, LstmdetError) as exc:
            if len(images) == 1:
                return [f"the model failed on this image ({type(exc).__name__}: {exc})"]
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return [out for image in images for out in self.predict([image])]

    def step(self, frame: torch.Tensor, video: str) -> dict[str, torch.Tensor] | str:
        """The next frame of ``video``; a new video starts from a fresh state.

        A frame whose size differs from the first frame of its video, or on which the model fails,
        gets an error message and leaves the state as it was.
        """
        size = tuple(frame.shape[-2:])
        if video != self.video:
            self.video, self.video_size, self.state = video, size, None
        if size != self.video_size:
            (h, w), (h0, w0) = size, self.video_size
            return (
                f"the frame is {w}x{h} but the first frame of video {video!r} is {w0}x{h0}; "
                "frames of a video must share one size"
            )
        try:
            with self._autocast():
                outputs, self.state = self.model.predict_step([self.to_device(frame)], self.state)
        except (RuntimeError, ValueError, LstmdetError) as exc:
            return f"the model failed on this frame ({type(exc).__name__}: {exc})"
        return outputs[0]

    def run(self, batch: list[tuple[int, torch.Tensor | None, str | None]], videos: list[str] | None) -> list:
        """Predictions for the readable images of a loader batch, in order.

        Args:
            batch: ``(index, image or None, error or None)`` items.
            videos: Each input's video, for a stateful model in sequence mode (frame by frame);
                ``None`` runs the batch as still images.
        """
        if videos is not None:
            results = [self.step(image, videos[index]) for index, image, *_ in batch if image is not None]
        else:
            images = [self.to_device(image) for _, image, *_ in batch if image is not None]
            results = self.predict(images) if images else []
        if self.agnostic_iou is None:
            return results
        return [r if isinstance(r, str) else class_agnostic_nms(r, self.agnostic_iou) for r in results]


def detect(
    src: str | Path,
    out: str | Path,
    weights: str | Path | None = None,
    *,
    model: LstmdetModel | None = None,
    resume: bool = False,
    exist_ok: bool = False,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Detect objects in every image and video of a folder (or in one file), streaming results to ``out``.

    Args:
        src: Image or video file, or a folder (searched recursively) of images and videos. In
            ``sequence`` mode: a folder with one sub-folder of frames per video (video files too).
        out: Output folder: ``detections.jsonl``, ``images.json``, ``coco_results.json``,
            ``summary.json``, ``options.json`` and, with ``save_images``, ``images/``, with
            ``save_video``, ``videos/``.
        weights: Checkpoint file; ``None`` uses ``model``, else the default model shipped with lstmdet.
        model: An already built detection model (instead of ``weights``).
        resume: Keep the lines of an interrupted run in ``out`` and process only the other files;
            the files equal those of an uninterrupted run. Without a previous run, start afresh.
            Weights and options not given are those recorded in ``options.json`` (see
            :func:`~lstmdet.engine.detect_options.resume_options`); one given with another value
            than the recorded one is an error.
        exist_ok: When ``out`` holds a previous run, remove what lstmdet wrote there
            (:data:`~lstmdet.engine.writers.OUTPUTS`: the five files and ``images/``) and run
            afresh. Other files in ``out`` are left alone.
        progress: Show a progress bar (images/s) on stderr.
        should_stop: Called between batches; when it returns True the run stops with
            :class:`~lstmdet.errors.Cancelled`, leaving ``detections.jsonl`` resumable and no
            final file written.
        **options: The fields of :class:`DetectOptions`: ``batch_size`` (images per forward
            pass; frames per loader batch in sequence mode), ``workers`` (loader
            processes; 0 decodes in this process; ``None`` chooses, see the module docstring),
            ``score_thresh`` (``None``: :data:`DEFAULT_CONF`, 0.25), ``nms_thresh``, ``max_detections``
            (the head's when ``None``), ``agnostic_nms`` (NMS across classes after the head's
            per-class NMS, at ``nms_thresh``: one box per object), ``device`` (``auto``, ``cpu``,
            ``cuda[:N]``), ``half`` (float16 autocast, CUDA only), ``save_images`` (annotated copies under
            ``out/images/``), ``sequence`` (video mode, see the module docstring), ``max_pixels``
            (largest ``width * height`` read; larger files become error lines undecoded); for
            video files (see :mod:`lstmdet.engine.detect_video`) ``vid_stride``, ``start``,
            ``end`` (seconds, exclusive), ``max_frames`` (per video) and ``save_video``.

    Returns:
        The ``summary.json`` dict: ``images``, ``ok``, ``failed``, ``detections``, ``seconds`` (the
        whole call), ``images_per_s`` (files per second through the pipeline in this call: decoding,
        model and writing, from the first batch to the last line; model loading excluded),
        ``resumed`` (files kept from an earlier run), the weights and their SHA-256, the device and
        the options used; with video files also ``videos``, ``frames`` (frames with detections)
        and ``fps`` (frames per second through the video loop: decoding, model and writing).

    Raises:
        LstmdetError: SRC missing or empty, bad checkpoint, bad option, ``out`` already holding a
            run while ``resume`` and ``exist_ok`` are off, both on, or a resume with options that
            differ from the first run's.
    """
    started = time.perf_counter()
    out = Path(out)
    jsonl = out / DETECTIONS
    if resume and exist_ok:
        raise LstmdetError("--resume continues the run in --out and --exist-ok replaces it; pass one of them")
    if jsonl.exists() and not (resume or exist_ok):
        raise LstmdetError(
            f"{out} already holds detections ({DETECTIONS}): pass --resume to continue that run, --exist-ok to "
            "replace it, or choose another --out"
        )
    if resume:
        recorded_weights, options = resume_options(out, out / OPTIONS, weights, options)
        weights = weights if model is not None else recorded_weights
    opts = DetectOptions.from_json(options)
    inputs = list_inputs(src, out, sequence=opts.sequence)
    detector = open_detector(weights, model=model, device=opts.device)
    if exist_ok:
        remove_previous_run(out, inputs)
    with head_options(detector, opts) as run_options:
        prepare_folder(out, "--out")
        record = options_record(run_options, detector.identity["weights"], opts)
        done, keep = _start(out, run_options, record, resume, set(inputs.video_files))
        if inputs.names:
            processed, loop_seconds = detect_files(
                detector, inputs, jsonl, opts, out=out, resumed=(done, keep), progress=progress,
                should_stop=should_stop,
            )  # fmt: skip
        else:
            JsonlAppender(jsonl, keep).close()  # cut what an interrupted run left after its last whole video
            processed, loop_seconds = 0, 0.0
        fps = None
        with stream_interrupts(enabled=inputs.url is not None) as ended:  # Ctrl-C ends a live stream cleanly
            if inputs.video_files:
                _, frames, video_seconds = detect_videos(
                    _runner(detector, opts), inputs, jsonl, opts, out=out, done=done, progress=progress,
                    should_stop=should_stop, ended=ended,
                )  # fmt: skip
                fps = frames / video_seconds if video_seconds > 0 else 0.0
        counts = finalize(out, inputs.files, videos=bool(inputs.video_files))
    seconds = time.perf_counter() - started
    summary = summary_record(
        detector.identity, detector.model.classes, str(detector.device), inputs, opts, run_options, counts,
        seconds=seconds, images_per_s=processed / loop_seconds if loop_seconds > 0 else 0.0,
        resumed=sum(name in done for name in inputs.files), fps=fps,
    )  # fmt: skip
    if inputs.url is not None:
        summary["interrupted"] = ended.is_set()
    atomic_write_json(out / SUMMARY, summary)
    return summary


def detect_files(
    detector: Detector,
    inputs: Inputs,
    jsonl: Path,
    opts: DetectOptions,
    *,
    out: Path,
    resumed: tuple[set[str], int] = (set(), 0),
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[int, float]:
    """Detect ``inputs`` and append one line per file to ``jsonl``; call inside :func:`head_options`.

    Args:
        detector: The model to run (:func:`open_detector`).
        inputs: The files, in input order (all of a run, or one shard of a job).
        jsonl: The ``detections.jsonl`` lines go here.
        opts: Run options.
        out: The run's output folder (annotated copies go to ``out/images/``).
        resumed: ``(done, keep)`` from :func:`~lstmdet.engine.writers.read_done`: files whose
            lines are kept and the bytes of ``jsonl`` to keep.
        progress: Show a progress bar.
        should_stop: Checked between batches; True raises :class:`~lstmdet.errors.Cancelled`.

    Returns:
        ``(lines written, seconds of the loop)``.
    """
    stateful = opts.sequence and detector.model.stateful
    net_input = detector.model.config["model"]["input"]
    cuda = detector.device.type == "cuda"
    loader = DataLoader(
        ImageFiles(
            inputs.root,
            inputs.names,
            opts.max_pixels,
            uint8=cuda,
            # The model shrinks images to its input size anyway: let JPEGs decode at reduced
            # scale down to it (annotated copies need full resolution).
            fit=None if opts.save_images else (net_input["size"], net_input["max_size"]),
        ),
        batch_sampler=Plan(inputs, opts.batch_size, resumed[0], by_video=stateful),
        num_workers=opts.loader_workers(detector.device),
        collate_fn=as_list,
        pin_memory=cuda,
        persistent_workers=False,
    )
    keep_freed_memory()
    runner = _runner(detector, opts)
    started = time.perf_counter()
    written = _process(
        runner, loader, inputs, jsonl, out, resumed,
        stateful=stateful, save_images=opts.save_images, progress=progress, should_stop=should_stop,
    )  # fmt: skip
    return written, time.perf_counter() - started


def _runner(detector: Detector, opts: DetectOptions) -> _Runner:
    agnostic_iou = getattr(detector.model.head, "nms_thresh", AGNOSTIC_IOU) if opts.agnostic_nms else None
    return _Runner(detector.model, detector.device, opts.half and detector.device.type == "cuda", agnostic_iou)


def summary_record(
    identity: dict[str, Any],
    classes: list[str],
    device: str,
    inputs: Inputs,
    opts: DetectOptions,
    run_options: dict[str, Any],
    counts: dict[str, int],
    *,
    seconds: float,
    images_per_s: float,
    resumed: int,
    fps: float | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` dict of a finished run (see :func:`detect`).

    Args:
        identity: ``weights`` and ``weights_sha256`` (:attr:`Detector.identity`).
        classes: The model's class names.
        device: Where the model ran.
        inputs: Every input of the run.
        opts: Run options.
        run_options: What ``options.json`` records.
        counts: ``ok``, ``failed`` and ``detections`` from :func:`~lstmdet.engine.writers.finalize`.
        seconds: Wall time of the run.
        images_per_s: Throughput to report.
        resumed: Files kept from an earlier run.
        fps: Video frames per second, for a run with video files.
    """
    summary = {
        "images": len(inputs.names),
        **counts,
        "seconds": round(seconds, 3),
        "images_per_s": round(images_per_s, 2),
        "resumed": resumed,
        **identity,
        "classes": list(classes),
        "device": str(device),
        **{k: v for k, v in run_options.items() if k != "weights_sha256"},
        "workers": opts.loader_workers(device),
    }
    if opts.sequence or inputs.video_files:
        summary["videos"] = len(set(inputs.videos or ())) + len(inputs.video_files)
    if inputs.video_files:
        summary["fps"] = round(fps or 0.0, 2)
    return summary


def _record(
    inputs: Inputs,
    index: int,
    image: torch.Tensor | None,
    result: dict[str, torch.Tensor] | str,
    model: LstmdetModel,
    size: tuple[int, int] | None,
) -> dict[str, Any]:
    """The ``detections.jsonl`` line of input ``index``: detections, or ``error`` with the reason.

    ``size`` is the file's full displayed ``(H, W)``; when the image was decoded at reduced scale,
    boxes are scaled from the decoded image's pixels to full-resolution pixels. Classes and
    category ids are ``model``'s.
    """
    head: dict[str, Any] = {"file": inputs.names[index]}
    if inputs.videos is not None and inputs.frames is not None:
        head.update(video=inputs.videos[index], frame_index=inputs.frames[index])
    if isinstance(result, str) or image is None:
        return {**head, "error": str(result)}
    decoded = tuple(image.shape[-2:])
    return {**head, **scaled_record(inputs.names[index], decoded, size, result, model.classes, model.category_ids)}


def _start(
    out: Path, options: dict[str, Any], record: dict[str, Any], resume: bool, videos: set[str]
) -> tuple[set[str], int]:
    """Write ``options.json`` (``record``) after checking ``options``, the run's identity, against the
    first run's on resume; returns the lines to keep (a video possibly cut short is not kept)."""
    path = out / OPTIONS
    done, keep = read_done(out / DETECTIONS, videos) if resume else (set(), 0)
    if done and path.is_file():
        first = json.loads(path.read_text(encoding="utf-8"))
        # a key the first run did not record is an option its lstmdet did not have (e.g. agnostic_nms): off then
        changed = {k: (first[k], v) for k, v in options.items() if k in first and first[k] != v}
        if changed:
            listed = "; ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in changed.items())
            raise LstmdetError(
                f"cannot resume {out}: it was started with other options ({listed}); resume with the same "
                "weights and options, or choose another --out"
            )
    atomic_write_json(path, record)
    return done, keep


def remove_previous_run(out: Path, inputs: Inputs) -> None:
    """``--exist-ok``: remove the files a previous run wrote in ``out`` (:data:`~lstmdet.engine.writers.OUTPUTS`).

    Raises:
        LstmdetError: Inputs of this run lie inside ``out/images/`` or ``out/videos/``, which would be removed.
    """
    root = inputs.root.resolve()
    for folder in (ANNOTATED, ANNOTATED_VIDEOS):
        annotated = (out / folder).resolve()
        inside = root == annotated or annotated in root.parents
        if not inside and root in annotated.parents:
            prefix = annotated.relative_to(root).as_posix() + "/"
            inside = any(name.startswith(prefix) for name in inputs.files)
        if inside:
            raise LstmdetError(
                f"--exist-ok would remove {out / folder}, but {'images' if folder == ANNOTATED else 'files'} to "
                "detect lie inside it; choose another --out"
            )
    remove_outputs(out, OUTPUTS)


def _process(
    runner: _Runner,
    loader: DataLoader,
    inputs: Inputs,
    jsonl: Path,
    out: Path,
    resumed: tuple[set[str], int],
    *,
    stateful: bool,
    save_images: bool,
    progress: bool,
    should_stop: Callable[[], bool] | None,
) -> int:
    """Run the loader's batches through the model and append the new lines; returns how many.

    Args:
        resumed: ``(done, keep)`` from :func:`~lstmdet.engine.writers.read_done`: files whose
            lines are kept (not written again) and the bytes of ``detections.jsonl`` to keep.
    """
    done, keep = resumed
    writer = JsonlAppender(jsonl, keep)
    drawer = AnnotatedImageWriter(out) if save_images else None
    kept = sum(name in done for name in inputs.names)
    bar = progress_display(total=len(inputs.names), initial=kept, unit="images", desc="detect", enabled=progress)
    written = 0
    try:
        for batch in batches(loader):
            results = iter(runner.run(batch, inputs.videos if stateful else None))
            for index, image, error, size in batch:
                result = error if image is None else next(results)
                name = inputs.names[index]
                if name in done:
                    continue
                record = _record(inputs, index, image, result, runner.model, size)
                writer.write(record)
                written += 1
                bar.update()
                if drawer is not None and "detections" in record:
                    drawer.submit(name, image, record["detections"])
            writer.flush()
            if should_stop is not None and should_stop():
                raise Cancelled(f"detection of {inputs.root} was cancelled; {written} new lines kept in {jsonl}")
    finally:
        writer.close()
        bar.close()
        if drawer is not None:
            drawer.close()
    return written
