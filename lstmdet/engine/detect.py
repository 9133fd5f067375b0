"""Batch detection of image folders: the engine behind ``lstmdet detect`` and ``lstmdet.detect``.

Pipeline: a ``DataLoader`` with ``workers`` processes decodes the files (:func:`read_image`: pixel
limit checked on the header, EXIF orientation applied, any mode to RGB) while the model runs on the
previous batch under ``torch.inference_mode``; each result is appended to ``detections.jsonl`` at
once (see :mod:`lstmdet.engine.writers`), and the other files are derived from it at the end.

Reproducibility. A detector pads the images of a batch to a common size, so an image's detections
depend slightly on its batch mates. Batches are therefore fixed slices of the input order
(``batch_size`` files each), and ``--resume`` recomputes a whole slice when any of its files is
missing (writing only the missing lines): a resumed run writes exactly what an uninterrupted one
would have. It must use the same options (weights, thresholds, batch size...), which
``options.json`` records.

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
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from lstmdet.data.images import DEFAULT_MAX_PIXELS
from lstmdet.engine.detect_inputs import ImageFiles, Inputs, Plan, as_list, batches, list_inputs
from lstmdet.engine.writers import (
    DETECTIONS,
    OPTIONS,
    SUMMARY,
    AnnotatedImageWriter,
    JsonlAppender,
    detection_record,
    finalize,
    read_done,
    write_json,
)
from lstmdet.errors import LstmdetError
from lstmdet.model import LstmdetModel

#: ``detect`` option -> detection-head attribute it sets for the run.
HEAD_OPTIONS = {"score_thresh": "score_thresh", "nms_thresh": "nms_thresh", "max_detections": "detections_per_img"}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _device(name: str | torch.device, model: LstmdetModel | None) -> torch.device:
    from lstmdet.engine.train import resolve_device

    if str(name) == "auto":
        return model.device if model is not None else resolve_device("auto")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise LstmdetError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LstmdetError(f"device {name!r} was asked for but CUDA is not available; use --device cpu (or auto)")
    return device


def _load(weights: str | Path | None, model: LstmdetModel | None, device: torch.device) -> tuple[LstmdetModel, dict]:
    """The model on ``device`` in eval mode, and what identifies its weights."""
    from lstmdet.checkpoint import default_model_path, load_model

    if model is not None:
        if weights is not None:
            raise LstmdetError("give weights or model, not both")
        return model.to(device).eval(), {"weights": None, "weights_sha256": None}
    model = load_model(weights, map_location=device)
    path = Path(weights) if weights is not None else default_model_path()
    return model, {"weights": str(weights) if weights is not None else "default", "weights_sha256": _sha256(path)}


def _check(value: Any, name: str, flag: str, low: float, high: float | None = None, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        span = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise LstmdetError(f"{name} ({flag}) must be {'an integer' if integer else 'a number'} {span}, got {value!r}")


def _head_options(model: LstmdetModel, **values: Any) -> dict[str, Any]:
    """Set the given head options; returns the previous value of every option the head has."""
    previous = {key: getattr(model.head, attr) for key, attr in HEAD_OPTIONS.items() if hasattr(model.head, attr)}
    for key, value in values.items():
        if value is None:
            continue
        if key not in previous:
            raise LstmdetError(
                f"the model's head {type(model.head).__name__} has no {HEAD_OPTIONS[key]} option; leave {key} unset"
            )
        setattr(model.head, HEAD_OPTIONS[key], float(value) if key != "max_detections" else int(value))
    return previous


class _Runner:
    """Runs the model on decoded images, turning per-image model failures into error messages."""

    def __init__(self, model: LstmdetModel, device: torch.device, half: bool) -> None:
        self.model, self.device, self.half = model, device, half
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
            return [self.step(image, videos[index]) for index, image, *_ in batch if image is not None]
        images = [self.to_device(image) for _, image, *_ in batch if image is not None]
        return self.predict(images) if images else []


def detect(
    src: str | Path,
    out: str | Path,
    weights: str | Path | None = None,
    *,
    model: LstmdetModel | None = None,
    batch_size: int = 8,
    workers: int = 2,
    score_thresh: float | None = None,
    nms_thresh: float | None = None,
    max_detections: int | None = None,
    device: str | torch.device = "auto",
    half: bool = False,
    save_images: bool = False,
    resume: bool = False,
    sequence: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> dict[str, Any]:
    """Detect objects in every image of a folder (or in one file), streaming results to ``out``.

    Args:
        src: Image file or folder (searched recursively). In ``sequence`` mode: a folder with one
            sub-folder of frames per video.
        out: Output folder: ``detections.jsonl``, ``images.json``, ``coco_results.json``,
            ``summary.json``, ``options.json`` and, with ``save_images``, ``images/``.
        weights: Checkpoint file; ``None`` uses ``model``, else the default model shipped with lstmdet.
        model: An already built detection model (instead of ``weights``).
        batch_size: Images per forward pass (frames per loader batch in sequence mode).
        workers: Loader processes decoding images (0: decode in this process).
        score_thresh: Minimum score kept (head default when ``None``).
        nms_thresh: IoU threshold of the NMS (head default when ``None``).
        max_detections: Detections kept per image (head default when ``None``).
        device: ``auto`` (CUDA when present; a given ``model``'s own device), ``cpu``, ``cuda[:N]``.
        half: Mixed precision (float16 autocast); CUDA only, ignored on CPU.
        save_images: Also write annotated copies under ``out/images/``.
        resume: Keep the lines of an interrupted run in ``out`` and process only the other files;
            the files equal those of an uninterrupted run. Without a previous run, start afresh.
        sequence: Video mode: frames of each sub-folder form a clip (see the module docstring).
        max_pixels: Largest ``width * height`` read; larger files (decompression bombs) become
            error lines without being decoded.
        progress: Show a progress bar (images/s) on stderr.

    Returns:
        The ``summary.json`` dict: ``images``, ``ok``, ``failed``, ``detections``, ``seconds`` (the
        whole call), ``images_per_s`` (files per second through the pipeline in this call: decoding,
        model and writing, from the first batch to the last line; model loading excluded),
        ``resumed`` (lines kept from an earlier run), the weights and their SHA-256, the device and
        the options used.

    Raises:
        LstmdetError: SRC missing or empty, bad checkpoint, bad option, ``out`` already holding a
            run while ``resume`` is off, or a resume with options that differ from the first run's.
    """
    started = time.perf_counter()
    _check(batch_size, "batch_size", "--batch-size", 1, integer=True)
    _check(workers, "workers", "--workers", 0, integer=True)
    _check(max_pixels, "max_pixels", "--max-pixels", 1, integer=True)
    for value, name, flag in ((score_thresh, "score_thresh", "--conf"), (nms_thresh, "nms_thresh", "--iou")):
        if value is not None:
            _check(value, name, flag, 0.0, 1.0)
    if max_detections is not None:
        _check(max_detections, "max_detections", "--max-det", 1, integer=True)
    out = Path(out)
    jsonl = out / DETECTIONS
    if jsonl.exists() and not resume:
        raise LstmdetError(f"{out} already holds detections ({DETECTIONS}): pass --resume, or choose another --out")
    inputs = list_inputs(src, out, sequence=sequence)
    dev = _device(device, model)
    half = bool(half) and dev.type == "cuda"
    net, identity = _load(weights, model, dev)
    if net.task != "detect":
        raise LstmdetError(
            f"detect needs a detection model, but {identity['weights'] or 'the model'} is a {net.task} model"
        )
    previous = _head_options(net, score_thresh=score_thresh, nms_thresh=nms_thresh, max_detections=max_detections)
    try:
        options = {
            "weights_sha256": identity["weights_sha256"],
            **{key: getattr(net.head, attr, None) for key, attr in HEAD_OPTIONS.items()},
            "batch_size": batch_size,
            "max_pixels": max_pixels,
            "sequence": sequence,
            "half": half,
        }
        out.mkdir(parents=True, exist_ok=True)
        done, keep = _start(out, options, resume)
        stateful = sequence and net.stateful
        plan = Plan(inputs, batch_size, done, by_video=stateful)
        net_input = net.config["model"]["input"]
        loader = DataLoader(
            ImageFiles(
                inputs.root,
                inputs.names,
                max_pixels,
                uint8=dev.type == "cuda",
                # The model shrinks images to its input size anyway: let JPEGs decode at reduced
                # scale down to it (annotated copies need full resolution).
                fit=None if save_images else (net_input["size"], net_input["max_size"]),
            ),
            batch_sampler=plan,
            num_workers=workers,
            collate_fn=as_list,
            pin_memory=dev.type == "cuda",
            persistent_workers=False,
        )
        runner = _Runner(net, dev, half)
        loop_started = time.perf_counter()
        processed = _process(
            runner, loader, inputs, out, (done, keep), stateful=stateful, save_images=save_images, progress=progress
        )
        loop_seconds = time.perf_counter() - loop_started
        counts = finalize(out, inputs.names)
    finally:
        _head_options(net, **previous)
    seconds = time.perf_counter() - started
    summary = {
        "images": len(inputs.names),
        **counts,
        "seconds": round(seconds, 3),
        "images_per_s": round(processed / loop_seconds, 2) if loop_seconds > 0 else 0.0,
        "resumed": sum(name in done for name in inputs.names),
        **identity,
        "classes": list(net.classes),
        "device": str(dev),
        **{k: v for k, v in options.items() if k != "weights_sha256"},
        "workers": workers,
    }
    if sequence:
        summary["videos"] = len(set(inputs.videos or ()))
    write_json(out / SUMMARY, summary)
    return summary


def _record(
    inputs: Inputs,
    index: int,
    image: torch.Tensor | None,
    result: dict[str, torch.Tensor] | str,
    classes: list[str],
    size: tuple[int, int] | None,
) -> dict[str, Any]:
    """The ``detections.jsonl`` line of input ``index``: detections, or ``error`` with the reason.

    ``size`` is the file's full displayed ``(H, W)``; when the image was decoded at reduced scale,
    boxes are scaled from the decoded image's pixels to full-resolution pixels.
    """
    head: dict[str, Any] = {"file": inputs.names[index]}
    if inputs.videos is not None and inputs.frames is not None:
        head.update(video=inputs.videos[index], frame_index=inputs.frames[index])
    if isinstance(result, str) or image is None:
        return {**head, "error": str(result)}
    height, width = size if size is not None else image.shape[-2:]
    decoded_h, decoded_w = image.shape[-2:]
    if (decoded_h, decoded_w) != (height, width):
        sx, sy = width / decoded_w, height / decoded_h
        result = {**result, "boxes": result["boxes"] * torch.tensor([sx, sy, sx, sy])}
    return {**head, **detection_record(inputs.names[index], int(width), int(height), result, classes)}


def _start(out: Path, options: dict[str, Any], resume: bool) -> tuple[set[str], int]:
    """Record the options (checking them against the first run's on resume); the lines to keep."""
    path = out / OPTIONS
    done, keep = read_done(out / DETECTIONS) if resume else (set(), 0)
    if done and path.is_file():
        first = json.loads(path.read_text(encoding="utf-8"))
        changed = {k: (first.get(k), v) for k, v in options.items() if first.get(k) != v}
        if changed:
            listed = "; ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in changed.items())
            raise LstmdetError(
                f"cannot resume {out}: it was started with other options ({listed}); resume with the same "
                "weights and options, or choose another --out"
            )
    write_json(path, options)
    return done, keep


def _process(
    runner: _Runner,
    loader: DataLoader,
    inputs: Inputs,
    out: Path,
    resumed: tuple[set[str], int],
    *,
    stateful: bool,
    save_images: bool,
    progress: bool,
) -> int:
    """Run the loader's batches through the model and append the new lines; returns how many.

    Args:
        resumed: ``(done, keep)`` from :func:`~lstmdet.engine.writers.read_done`: files whose
            lines are kept (not written again) and the bytes of ``detections.jsonl`` to keep.
    """
    done, keep = resumed
    classes = runner.model.classes
    writer = JsonlAppender(out / DETECTIONS, keep)
    drawer = AnnotatedImageWriter(out) if save_images else None
    kept = sum(name in done for name in inputs.names)
    bar = tqdm(total=len(inputs.names), initial=kept, unit="img", desc="detect", disable=not progress, smoothing=0.1)
    written = 0
    try:
        for batch in batches(loader):
            results = iter(runner.run(batch, inputs.videos if stateful else None))
            for index, image, error, size in batch:
                result = error if image is None else next(results)
                name = inputs.names[index]
                if name in done:
                    continue
                record = _record(inputs, index, image, result, classes, size)
                writer.write(record)
                written += 1
                bar.update()
                if drawer is not None and "detections" in record:
                    drawer.submit(name, image, record["detections"])
            writer.flush()
    finally:
        writer.close()
        bar.close()
        if drawer is not None:
            drawer.close()
    return written
