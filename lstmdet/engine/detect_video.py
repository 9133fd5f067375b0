"""Video files in batch detection: frames decoded as they are needed, one ``detections.jsonl`` line each.

:func:`detect_videos` runs after the images of a run (:func:`lstmdet.engine.detect.detect`), one
video at a time in sorted order. Frames come from :func:`lstmdet.data.video.read_frames` (a
generator: PyAV decodes with FFmpeg's threads, nothing is collected, memory stays flat for any
length), decoded ahead in a background thread (:func:`~lstmdet.data.video.decode_ahead`: at most
one batch waits) while the model runs, in batches of ``batch_size`` frames, converted exactly as
image files are (:func:`~lstmdet.engine.detect_inputs.model_input`), so a frame gives the
detections its pixels would give as an image file.

State. A stateful model (e.g. a ConvLSTM encoder) sees each video frame by frame through
:meth:`LstmdetModel.predict_step` with its state reset at the start of every video, as
``--sequence`` does for folders of frames: the detections equal ``model.predict`` on the whole
clip of selected frames. A stateless model runs the frames of a batch together.

Lines. Each processed frame gets ``{"file", "frame_index", "timestamp", "width", "height",
"detections"}`` (a frame the model fails on: ``{"file", "frame_index", "timestamp", "error"}``).
A video that cannot be opened gets one ``{"file", "error"}`` line; one whose decoding stops in the
middle keeps the lines of the frames before and then gets that error line; one without any frame
between ``start`` and ``end`` gets an error line saying so. The run goes on with the next video.

``save_video`` writes ``OUT/videos/<file>.mp4`` (:func:`~lstmdet.engine.writers.annotated_video_path`):
the processed frames with boxes, labels and scores drawn as ``--save-images`` draws them, at the
video's frame rate and size, H.264. An interrupted run (Ctrl-C, a cancelled job) still closes the
video it was writing into a complete, playable file, and leaves ``detections.jsonl`` with whole
lines only; ``--resume`` then runs that video again.

Streams. SRC may be a stream URL (``rtsp://``, ``http(s)://``, ``file:`` ...): it is one video whose
``file`` is the URL and whose annotated copy is ``OUT/videos/<URL made a file name>.mp4``. A live
stream ends at ``--max-frames``, when the server ends it (the frames read are kept, no error), when
nothing comes for ``--stream-timeout`` seconds (an error line after the frames read), or on Ctrl-C:
:func:`stream_interrupts` turns the first SIGINT into the end of the stream, so the run finishes
its outputs as for a video that ended (a second Ctrl-C aborts).
"""

from __future__ import annotations

import contextlib
import math
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Container, Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from lstmdet.data.video import (
    FALLBACK_FPS,
    DecodedFrame,
    VideoEncoder,
    VideoInfo,
    VideoReadError,
    decode_ahead,
    probe_video,
    read_frames,
)
from lstmdet.engine.detect_inputs import Inputs, model_input
from lstmdet.engine.detect_options import DetectOptions
from lstmdet.engine.progress import progress as progress_display
from lstmdet.engine.writers import JsonlAppender, annotated_video_path, draw_detections, scaled_record
from lstmdet.errors import Cancelled

if TYPE_CHECKING:
    from lstmdet.engine.detect import _Runner


class AnnotatedVideoWriter:
    """The annotated copy of one video (``--save-video``): detections drawn on each processed frame.

    The encoder opens at the first frame (its size is the video's displayed size); a later frame of
    another size is scaled to it.

    Args:
        path: The ``.mp4`` to write (its folder is created).
        fps: The video's frame rate.
    """

    def __init__(self, path: Path, fps: Fraction) -> None:
        self.path, self.fps = path, fps
        self._encoder: VideoEncoder | None = None

    def write(self, frame: DecodedFrame, detections: list[dict[str, Any]]) -> None:
        """Draw ``detections`` (``detections.jsonl`` entries) on ``frame`` and encode it."""
        canvas = draw_detections(frame.image, detections)
        if self._encoder is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._encoder = VideoEncoder(self.path, canvas.width, canvas.height, self.fps)
        if canvas.size != (self._encoder.width, self._encoder.height):
            canvas = canvas.resize((self._encoder.width, self._encoder.height), Image.BILINEAR)
        self._encoder.write(np.asarray(canvas), frame.timestamp)

    def close(self) -> None:
        """Finish the file (nothing is written for a video without frames)."""
        if self._encoder is not None:
            self._encoder.close()


@contextlib.contextmanager
def stream_interrupts(enabled: bool = True) -> Iterator[threading.Event]:
    """While inside, the first Ctrl-C (SIGINT) sets the yielded event instead of raising.

    Pass the event to :func:`detect_videos` as ``ended``: a live stream then ends there, and the
    run writes complete outputs. A second Ctrl-C raises :class:`KeyboardInterrupt` as usual. Off
    the main thread (where Python cannot take signals), or with ``enabled`` False, nothing is installed.
    """
    ended = threading.Event()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield ended
        return

    def handle(signum: int, frame: Any) -> None:
        if ended.is_set():
            raise KeyboardInterrupt
        ended.set()
        print("Ctrl-C: ending the stream here and writing the outputs (Ctrl-C again to abort)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield ended
    finally:
        signal.signal(signal.SIGINT, previous)


def saved_name(name: str, url: str | None) -> str:
    """The name ``--save-video`` writes video ``name`` under: itself, or for the stream ``url`` a file name
    made of it (``rtsp://cam:554/live`` -> ``cam_554_live``)."""
    if name != url:
        return name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.split(":", 1)[1]).strip("._") or "stream"


def expected_frames(path: Path | str, opts: DetectOptions) -> int | None:
    """About how many frames of ``path`` the options select (for the progress bar), ``None`` if unknown
    (a stream URL, given as ``str``, is not probed)."""
    if isinstance(path, str):
        return opts.max_frames
    try:
        info = probe_video(path)
    except VideoReadError:
        return 0
    if info.frames is None or not info.fps:
        return None
    first = math.ceil((opts.start or 0.0) * info.fps)
    last = info.frames if opts.end is None else min(info.frames, math.ceil(opts.end * info.fps))
    count = math.ceil(max(0, last - first) / opts.vid_stride)
    return count if opts.max_frames is None else min(count, opts.max_frames)


def detect_videos(
    runner: _Runner,
    inputs: Inputs,
    jsonl: Path,
    opts: DetectOptions,
    *,
    out: Path,
    done: Container[str] = (),
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
    ended: threading.Event | None = None,
) -> tuple[int, int, float]:
    """Detect the video files of ``inputs`` and append their lines to ``jsonl`` (after its content).

    Args:
        runner: Runs the model (:class:`lstmdet.engine.detect._Runner`).
        inputs: The run's inputs; :attr:`~Inputs.video_files` are processed, in order.
        jsonl: ``detections.jsonl``; lines are appended to what it holds.
        opts: Run options (``batch_size``, ``vid_stride``, ``start``, ``end``, ``max_frames``,
            ``max_pixels``, ``save_video``).
        out: The run's output folder (annotated videos go to ``out/videos/``).
        done: Videos whose lines an earlier run kept (skipped).
        progress: Show a progress bar (frames/s).
        should_stop: Checked between batches; True raises :class:`~lstmdet.errors.Cancelled`.
        ended: Set from elsewhere (:func:`stream_interrupts`): the video being read ends there, as
            if its last frame had come, and so do the ones after it.

    Returns:
        ``(lines written, frames with detections, seconds of the loop)``.
    """
    todo = [name for name in inputs.video_files if name not in done]
    estimates = [expected_frames(inputs.source(name), opts) for name in todo] if progress else [None]
    total = None if any(e is None for e in estimates) else sum(estimates)
    bar = progress_display(total=total, unit="frames", desc="detect videos", enabled=progress)
    writer = JsonlAppender(jsonl, jsonl.stat().st_size if jsonl.is_file() else 0)
    net_input = runner.model.config["model"]["input"]
    video = _Video(runner, writer, bar, (net_input["size"], net_input["max_size"]), runner.device.type == "cuda")
    started = time.perf_counter()
    try:
        for name in todo:
            if ended is not None and ended.is_set():
                break
            video.run(inputs.source(name), name, opts, out, should_stop, ended, saved_name(name, inputs.url))
    finally:
        writer.close()
        bar.close()
    return video.lines, video.frames, time.perf_counter() - started


def detect_video_piece(
    runner: _Runner,
    path: Path,
    name: str,
    jsonl: Path,
    opts: DetectOptions,
    *,
    out: Path,
    first_index: int | None = None,
    warmup: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[int, int, float]:
    """Detect the frames of video ``name`` that ``opts`` select into a new ``jsonl`` (a chunk of a queued job).

    Args:
        runner: Runs the model (:class:`lstmdet.engine.detect._Runner`).
        path: The video file.
        name: Its ``file`` in the lines.
        jsonl: The lines go here (the file is replaced).
        opts: ``start`` and ``max_frames`` select the piece (:meth:`~lstmdet.engine.video_chunks.VideoChunk.options`).
        out: The run's output folder.
        first_index: The index of the frame at ``opts.start`` (``None``: counted as in process).
        warmup: The first ``warmup`` frames read run through the model and are not written.
        should_stop: Checked between batches; True raises :class:`~lstmdet.errors.Cancelled`.

    Returns:
        ``(lines written, frames with detections, seconds)``.
    """
    writer = JsonlAppender(jsonl, 0)
    net_input = runner.model.config["model"]["input"]
    bar = progress_display(total=None, unit="frames", desc="detect video", enabled=False)
    video = _Video(runner, writer, bar, (net_input["size"], net_input["max_size"]), runner.device.type == "cuda")
    started = time.perf_counter()
    try:
        video.run(path, name, opts, out, should_stop, first_index=first_index, warmup=warmup)
    finally:
        writer.close()
    return video.lines, video.frames, time.perf_counter() - started


class _Video:
    """Runs one video after another through the model, counting lines and frames."""

    def __init__(self, runner: _Runner, writer: JsonlAppender, bar: Any, fit: tuple[int, int], uint8: bool) -> None:
        self.runner, self.writer, self.bar, self.fit, self.uint8 = runner, writer, bar, fit, uint8
        self.lines = self.frames = 0

    def run(
        self, path: Path | str, name: str, opts: DetectOptions, out: Path, should_stop: Callable[[], bool] | None,
        ended: threading.Event | None = None, saved: str | None = None, *, first_index: int | None = None,
        warmup: int = 0, drawn: Path | None = None,
    ) -> None:  # fmt: skip
        """Detect video ``name`` (at ``path``, a file or a stream URL): its frame lines, then an error line if
        decoding stopped. ``saved``: the name of its ``--save-video`` copy (default ``name``).

        A piece of a video (:mod:`lstmdet.engine.video_chunks`) passes ``opts`` whose ``start`` and
        ``max_frames`` select it, ``first_index`` (the index of its first frame), ``warmup`` (its
        first frames run through the model, to warm a recurrent state up, and are not written) and
        ``drawn`` (where its annotated frames go instead of ``OUT/videos/``).
        """
        self.runner.video = None  # a fresh state for every video
        drawer = None
        if opts.save_video:
            drawer = AnnotatedVideoWriter(drawn or annotated_video_path(out, saved or name), FALLBACK_FPS)

        def opened(info: VideoInfo) -> None:  # in the decoding thread, before the first frame is handed over
            if drawer is not None:
                drawer.fps = info.fps or FALLBACK_FPS

        frames = decode_ahead(read_frames(path, stride=opts.vid_stride, start=opts.start, end=opts.end,
                                          max_frames=opts.max_frames, max_pixels=opts.max_pixels,
                                          timeout=opts.stream_timeout, on_open=opened, first_index=first_index),
                              depth=opts.batch_size, end=ended)  # fmt: skip
        error, batch, written, skip = None, [], 0, warmup
        try:
            while True:
                try:
                    batch.append(next(frames))
                except StopIteration:
                    break
                except VideoReadError as exc:
                    error = exc.reason
                    break
                if len(batch) == (min(skip, opts.batch_size) or opts.batch_size):
                    written += self._batch(name, batch, drawer, should_stop, write=not skip)
                    skip, batch = max(0, skip - len(batch)), []
            if batch:
                written += self._batch(name, batch, drawer, should_stop, write=not skip)
            if error is None and written == 0 and ended is not None and ended.is_set():
                error = "stopped by Ctrl-C before the first frame came"
            elif error is None and written == 0:
                window = f"between --start {opts.start or 0} s and --end {opts.end} s" if opts.end else (
                    f"at or after --start {opts.start} s" if opts.start else "")  # fmt: skip
                error = f"the video has no frame {window}".rstrip()
            if error is not None:
                self.writer.write({"file": name, "error": error})
                self.writer.flush()
                self.lines += 1
        finally:
            frames.close()
            if drawer is not None:
                drawer.close()

    def _batch(
        self, name: str, batch: list[DecodedFrame], drawer: AnnotatedVideoWriter | None,
        should_stop: Callable[[], bool] | None, write: bool = True,
    ) -> int:  # fmt: skip
        """Run ``batch`` through the model and write its lines; returns how many (0 when not ``write``:
        warm-up frames)."""
        model = self.runner.model
        tensors = [model_input(frame.image, uint8=self.uint8, fit=self.fit) for frame in batch]
        items = [(i, tensor, None) for i, tensor in enumerate(tensors)]
        results = self.runner.run(items, [name] * len(items) if model.stateful else None)
        if not write:
            return 0
        for frame, tensor, result in zip(batch, tensors, results, strict=True):
            head = {"file": name, "frame_index": frame.index, "timestamp": frame.timestamp}
            if isinstance(result, str):
                record = {**head, "error": result}
            else:
                size = frame.image.shape[:2]
                record = {**head, **scaled_record(name, tuple(tensor.shape[-2:]), size, result, model.classes,
                                                  model.category_ids)}  # fmt: skip
                self.frames += 1
            self.writer.write(record)
            self.bar.update()
            if drawer is not None:
                drawer.write(frame, record.get("detections", []))
        self.writer.flush()
        self.lines += len(batch)
        if should_stop is not None and should_stop():
            raise Cancelled(f"detection of {name} was cancelled; {self.lines} new lines kept")
        return len(batch)
