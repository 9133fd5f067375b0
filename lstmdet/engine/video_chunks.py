"""Long videos cut into chunks of frames that any worker can detect (queued detect jobs).

A queued detect job (:mod:`lstmdet.engine.shards`) runs the images of SRC in shards and each video
file in chunks of ``chunk_frames`` processed frames. :func:`plan_chunks` reads each video's frame
times from its packets (:func:`~lstmdet.data.video.frame_times`: nothing is decoded), applies the
run's ``start``, ``end``, ``vid_stride`` and ``max_frames`` exactly as in-process detection does,
and records where each chunk starts (a time to seek to and the index of that frame) and how many
frames it keeps. :func:`run_chunk` detects one chunk into its own lines file.

State and exactness. For a stateless model a chunk holds whole batches (``chunk_frames`` is rounded
up to a multiple of ``batch_size``), so every frame meets the batch mates it meets in process and
the merged lines equal an in-process run's exactly. A stateful model (a ConvLSTM encoder) starts
every chunk from a fresh state, warmed up on the ``warmup_frames`` processed frames before the
chunk (run through the model, not written), so its lines approach those of one pass through the
whole video; ``benchmarks/video_chunks.py`` measures the gap against the warm-up length.

Cost. A chunk seeks to the key frame before its first frame and decodes from there, so chunks much
shorter than the video's key-frame interval decode frames that other chunks decode too.

Errors. A video that cannot be opened, whose packets cannot all be read, or that lacks time
stamps is one chunk, run exactly as in process. The last chunk of a video reads to the video's
end (or the run's ``end`` / ``max_frames``), so a decode error after the planned frames still gets
its error line. A chunk that meets a decode error writes the frames before it and the error line;
:func:`merged_lines` then drops the later chunks of that video, as in-process detection stops
reading a video at its first decode error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lstmdet.data.video import VideoReadError, frame_times, read_frames
from lstmdet.engine.detect_options import DetectOptions
from lstmdet.errors import LstmdetError

#: Processed frames per chunk of a queued video job, unless the job says otherwise.
DEFAULT_CHUNK_FRAMES = 256
#: Frames a stateful model runs before each chunk (not written) to warm its state up.
DEFAULT_WARMUP_FRAMES = 16


@dataclass(frozen=True)
class VideoChunk:
    """One piece of one video.

    Attributes:
        file: The video's name (relative to the job's root; its ``file`` in ``detections.jsonl``).
        first: Position of the chunk's first written frame among the video's processed frames.
        start: Seconds to read from (the first warm-up frame, else the first written frame);
            ``None``: the run's ``start`` (the first chunk of a video).
        first_index: The index of the frame at ``start`` in the video; ``None``: counted as in
            process (the first chunk).
        frames: Processed frames to read, warm-up included; ``None``: to the video's end (or the
            run's ``end``), as in process.
        warmup: How many of the first frames read only warm the model's state up (not written).
    """

    file: str
    first: int = 0
    start: float | None = None
    first_index: int | None = None
    frames: int | None = None
    warmup: int = 0

    def options(self, opts: DetectOptions) -> DetectOptions:
        """The run's options narrowed to this chunk (``start`` and ``max_frames``)."""
        if self.start is None and self.first == 0:
            return replace(opts, max_frames=self.frames)
        return replace(opts, start=self.start, max_frames=self.frames)


def check_chunking(chunk_frames: int, warmup_frames: int) -> None:
    """Raise a :class:`LstmdetError` that says what to pass when the chunk settings are out of range."""
    if chunk_frames < 1:
        raise LstmdetError(f"chunk_frames must be >= 1 (processed frames per chunk), got {chunk_frames}")
    if warmup_frames < 0:
        raise LstmdetError(f"warmup_frames must be >= 0 (0: no warm-up), got {warmup_frames}")


def plan_chunks(
    root: Path,
    video_files: list[str],
    opts: DetectOptions,
    *,
    chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    warmup_frames: int = DEFAULT_WARMUP_FRAMES,
    stateful: bool,
) -> list[VideoChunk]:
    """The chunks of ``video_files`` (in order), as in-process detection with ``opts`` would read them.

    Args:
        root: The folder the names are relative to.
        video_files: Video file names, in output order.
        opts: Run options (``start``, ``end``, ``vid_stride``, ``max_frames``, ``batch_size``).
        chunk_frames: Processed frames per chunk; a stateless model's chunks are rounded up to
            whole batches of ``opts.batch_size``.
        warmup_frames: Frames run before each chunk but the first, for a stateful model.
        stateful: The model carries a state from frame to frame.
    """
    check_chunking(chunk_frames, warmup_frames)
    size = chunk_frames if stateful else -(-chunk_frames // opts.batch_size) * opts.batch_size
    chunks: list[VideoChunk] = []
    for name in video_files:
        try:
            times, complete = frame_times(root / name)
        except VideoReadError:
            chunks.append(VideoChunk(name, frames=opts.max_frames))  # its error line comes from the run
            continue
        kept = _kept(times, opts)
        if not complete or len(kept) <= size:
            chunks.append(VideoChunk(name, frames=opts.max_frames))
            continue
        for begin in range(0, len(kept), size):
            warmup = min(warmup_frames, begin) if stateful else 0
            last = begin + size >= len(kept)
            frames = warmup + size if not last else (None if opts.max_frames is None else
                                                     warmup + opts.max_frames - begin)  # fmt: skip
            if begin == 0:
                chunks.append(VideoChunk(name, frames=frames))
                continue
            read_from = kept[begin - warmup]
            chunks.append(VideoChunk(name, begin, times[read_from], read_from, frames, warmup))
    return chunks


def _kept(times: list[float], opts: DetectOptions) -> list[int]:
    """Indices (into ``times``) of the frames in-process detection processes: those in the ``start``
    / ``end`` window, every ``vid_stride``-th of them, at most ``max_frames``
    (:func:`~lstmdet.data.video.read_frames`' rules)."""
    window = []
    for index, timestamp in enumerate(times):
        if opts.start is not None and timestamp + 1e-9 < opts.start:
            continue
        if opts.end is not None and timestamp >= opts.end:
            break
        window.append(index)
    kept = window[:: opts.vid_stride]
    return kept if opts.max_frames is None else kept[: opts.max_frames]


def chunk_to_json(chunk: VideoChunk) -> dict[str, Any]:
    """``chunk`` as the plan stores it."""
    return asdict(chunk)


def chunk_from_json(data: dict[str, Any]) -> VideoChunk:
    """A chunk from the plan."""
    return VideoChunk(**data)


def run_chunk(
    runner: Any,
    root: Path,
    chunk: VideoChunk,
    jsonl: Path,
    opts: DetectOptions,
    *,
    out: Path,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[int, int, float]:
    """Detect ``chunk`` and write its lines to ``jsonl`` (a new file).

    Args:
        runner: Runs the model (:class:`lstmdet.engine.detect._Runner`).
        root: The folder the video's name is relative to.
        chunk: The piece to run.
        jsonl: Its lines go here.
        opts: The run's options (``save_video`` is left to the merge: :func:`draw_videos`).
        out: The run's output folder.
        should_stop: Checked between batches; True raises :class:`~lstmdet.errors.Cancelled`.

    Returns:
        ``(lines written, frames with detections, seconds)``.
    """
    from lstmdet.engine.detect_video import detect_video_piece

    return detect_video_piece(
        runner, root / chunk.file, chunk.file, jsonl, replace(chunk.options(opts), save_video=False), out=out,
        first_index=chunk.first_index, warmup=chunk.warmup, should_stop=should_stop,
    )  # fmt: skip


def merged_lines(chunks: list[VideoChunk], lines_of: Callable[[int], Path]) -> Iterator[tuple[int, Path]]:
    """The chunk files to join, in order: ``(chunk number, file)``, without the chunks that follow an error
    line of their video (in-process detection stops reading a video at its first decode error)."""
    stopped: set[str] = set()
    for number, chunk in enumerate(chunks):
        if chunk.file in stopped:
            continue
        path = lines_of(number)
        if _ends_with_error(path, chunk.file):
            stopped.add(chunk.file)
        yield number, path


def _ends_with_error(path: Path, file: str) -> bool:
    """The last line of ``path`` is a whole-video error line (``{"file", "error"}`` without a frame) of ``file``."""
    last = b""
    with path.open("rb") as f:
        for line in f:
            last = line
    if not last.strip():
        return False
    record = json.loads(last)
    return record.get("file") == file and "error" in record and "frame_index" not in record


def draw_videos(root: Path, names: list[str], jsonl: Path, opts: DetectOptions, out: Path) -> None:
    """Write ``--save-video``'s annotated copies of the videos ``names`` from the lines of a merged run.

    ``jsonl`` is read once. Each video's frames are read again with the run's options and drawn with
    their lines' detections, as in-process detection draws them while it runs; nothing is run through
    the model.
    """
    from lstmdet.data.video import FALLBACK_FPS
    from lstmdet.engine.detect_video import AnnotatedVideoWriter, saved_name
    from lstmdet.engine.writers import annotated_video_path

    frames_of: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with jsonl.open("rb") as f:
        for line in f:
            record = json.loads(line)
            if "frame_index" in record and record["file"] in frames_of:
                frames_of[record["file"]].append(record)
    for name, records in frames_of.items():
        if not records:
            continue
        drawer = AnnotatedVideoWriter(annotated_video_path(out, saved_name(name, None)), FALLBACK_FPS)

        def opened(info: Any, drawer: AnnotatedVideoWriter = drawer) -> None:
            drawer.fps = info.fps or FALLBACK_FPS

        frames = read_frames(root / name, stride=opts.vid_stride, start=opts.start, end=opts.end,
                             max_frames=len(records), max_pixels=opts.max_pixels, on_open=opened)  # fmt: skip
        try:
            for frame, record in zip(frames, records, strict=False):
                drawer.write(frame, record.get("detections", []))
        except VideoReadError:
            pass  # the lines already end with this video's error
        finally:
            frames.close()
            drawer.close()
