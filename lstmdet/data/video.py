"""Reading and writing video files with PyAV (FFmpeg): frames as ``(H, W, 3)`` uint8 RGB arrays.

* :func:`is_video_file` tells videos from images: the extensions of :data:`VIDEO_EXTENSIONS`, and
  a GIF with more than one frame (a single-frame GIF stays an image).
* :func:`read_frames` yields the frames of one video one at a time (a generator: frames are never
  collected, so memory stays flat for any length), each with its index in the video and its
  presentation time, selected by stride, start, end and a maximum count. FFmpeg decodes with its
  own threads (``thread_type = "AUTO"``). The display matrix (a phone's rotation, a mirror; an
  older file's ``rotate`` tag when there is none) is applied as EXIF orientation is for photos:
  arrays and sizes are those of the video as displayed.
* :func:`decode_ahead` decodes in a background thread while the model runs on earlier frames.
* :func:`probe_video` reads size, frame rate, frame count and duration from the header.
* :class:`VideoEncoder` writes RGB frames as an H.264 MP4.

Streams. :func:`read_frames` also reads a URL FFmpeg opens (:func:`is_stream_url`: ``rtsp://``,
``http(s)://``, ``file:`` ...). Opening it and every later read give up after ``timeout`` seconds
without data (:data:`DEFAULT_STREAM_TIMEOUT`, ``--stream-timeout``) with a :class:`VideoReadError`
saying so; a stream that ends (the server closes it) ends the frames like the end of a file.

Anything that cannot be read raises :class:`VideoReadError`, whose ``reason`` says what was wrong;
an error in the middle of a video is raised after the frames decoded before it were yielded.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from queue import Empty, Full, Queue
from typing import Any

import numpy as np

from lstmdet.errors import LstmdetError
from lstmdet.fileio import atomic_path

#: File name extensions treated as videos (lower case, with the dot); animated GIFs are videos too.
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v")
#: Frame rate assumed for a stream that declares none (only for writing and frame indices).
FALLBACK_FPS = Fraction(25)
#: URL schemes read as streams (lower case); anything else is a file path.
STREAM_SCHEMES: tuple[str, ...] = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://",
                                   "srt://", "file:")  # fmt: skip
#: Seconds a stream may stay silent (while opening, and between reads) before the run gives up on it.
DEFAULT_STREAM_TIMEOUT = 10.0
#: Time base of written videos: the MPEG 90 kHz clock (whole ticks for 24, 25, 30, 30000/1001, 60 ... fps).
ENCODER_TIME_BASE = Fraction(1, 90000)


class VideoReadError(LstmdetError):
    """A video file could not be read (or stopped decoding); the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read video {self.path}: {reason}")


def is_stream_url(source: str | os.PathLike) -> bool:
    """Whether ``source`` is a stream URL (one of :data:`STREAM_SCHEMES`, any case) rather than a file path."""
    return isinstance(source, str) and source.lower().startswith(STREAM_SCHEMES)


def is_animated_gif(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a GIF with more than one frame (False for anything unreadable)."""
    from PIL import Image

    try:
        with Image.open(path, formats=("GIF",)) as image:
            return bool(getattr(image, "is_animated", False))
    except Exception:  # not a GIF, or broken: the image reader reports it
        return False


def is_video_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a video: one of :data:`VIDEO_EXTENSIONS` (any case), or an animated GIF."""
    suffix = Path(path).suffix.lower()
    return suffix in VIDEO_EXTENSIONS or (suffix == ".gif" and is_animated_gif(path))


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says.

    Attributes:
        width: Stored width in pixels (before the display matrix; see :func:`probe_video`).
        height: Stored height.
        fps: Average frame rate, or ``None`` when the stream declares none.
        frames: Frame count the container declares, else estimated from duration and frame rate;
            ``None`` when neither is known.
        duration: Seconds, or ``None``.
    """

    width: int
    height: int
    fps: Fraction | None
    frames: int | None
    duration: float | None


@dataclass
class DecodedFrame:
    """One decoded frame.

    Attributes:
        index: Position in the video, 0 for the first frame (counted while decoding; after a
            seek to ``start``, computed from the timestamp and the frame rate).
        timestamp: Presentation time in seconds from the start of the stream.
        image: ``(H, W, 3)`` uint8 RGB, as displayed (display matrix applied).
    """

    index: int
    timestamp: float
    image: np.ndarray


def _open(path: Path | str, timeout: float | None = None) -> tuple[Any, Any]:
    """``(container, video stream)`` of a file or a stream URL (given as ``str``); raises :class:`VideoReadError`.

    ``timeout``: seconds without data before giving up (opening and each read); streams only.
    """
    import av

    if isinstance(path, str):
        return _open_stream(path, DEFAULT_STREAM_TIMEOUT if timeout is None else timeout)
    try:
        if path.is_dir():
            raise VideoReadError(path, "it is a folder, not a file")
        if path.stat().st_size == 0:
            raise VideoReadError(path, "the file is empty (0 bytes)")
    except OSError as exc:
        raise VideoReadError(path, exc.strerror or str(exc)) from None
    try:
        container = av.open(str(path), mode="r", metadata_errors="ignore")
    except Exception as exc:  # av.FFmpegError and friends: not a container FFmpeg can read
        raise VideoReadError(path, f"not a video FFmpeg can read, or the file is truncated ({_why(exc)})") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(path, "the file has no video stream (audio only?)")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # FFmpeg's frame and slice threads
    return container, stream


def _open_stream(url: str, timeout: float) -> tuple[Any, Any]:
    import av

    try:
        container = av.open(url, mode="r", metadata_errors="ignore", timeout=timeout)
    except av.error.ExitError:  # PyAV's interrupt callback: nothing came within ``timeout``
        raise VideoReadError(url, f"no answer within {timeout:g} s; check the URL, or raise --stream-timeout "
                             "for a slow source") from None  # fmt: skip
    except Exception as exc:
        raise VideoReadError(url, f"FFmpeg cannot open the stream ({_why(exc)})") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(url, "the stream has no video")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _fps(stream: Any) -> Fraction | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else None


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Size, frame rate, frame count and duration from the header; no frame is decoded.

    Raises:
        VideoReadError: The file is missing, empty, not a video or has no video stream.
    """
    container, stream = _open(Path(path))
    try:
        return _info(container, stream)
    finally:
        container.close()


def _info(container: Any, stream: Any) -> VideoInfo:
    fps = _fps(stream)
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000  # AV_TIME_BASE
    frames = stream.frames or (round(duration * fps) if duration is not None and fps else None)
    return VideoInfo(stream.codec_context.width, stream.codec_context.height, fps, frames, duration)


def display_transform(matrix: np.ndarray | None) -> tuple[bool, bool, bool]:
    """``(transpose, flip_rows, flip_columns)`` that turn a stored frame into the displayed one.

    Args:
        matrix: FFmpeg's 3x3 display matrix as 9 int32 (``AV_FRAME_DATA_DISPLAYMATRIX``), or
            ``None``. Only its 2x2 part counts (rotations by multiples of 90 degrees and mirrors;
            other angles are left as stored). A displayed pixel ``(x', y')`` comes from the stored
            ``(x, y)`` by ``x' = a x + c y``, ``y' = b x + d y`` with ``a, b, c, d = m[0], m[1],
            m[3], m[4]`` (their signs), which is what ``ffmpeg`` applies by default.
    """
    if matrix is None:
        return False, False, False
    a, b, c, d = (int(np.sign(matrix[i])) for i in (0, 1, 3, 4))
    if a and d and not b and not c:
        return False, d < 0, a < 0
    if b and c and not a and not d:
        return True, b < 0, c < 0
    return False, False, False


def rotate_tag_transform(metadata: dict[str, str]) -> tuple[bool, bool, bool]:
    """:func:`display_transform` of an older file's ``rotate`` tag (clockwise degrees, any key case).

    Used only for frames without a display matrix; multiples of 90 degrees, others left as stored.
    """
    value = next((v for k, v in metadata.items() if k.lower() == "rotate"), None)
    try:
        degrees = round(float(value)) % 360 if value is not None else 0
    except ValueError:
        return False, False, False
    return {90: (True, False, True), 180: (False, True, True), 270: (True, True, False)}.get(
        degrees, (False, False, False)
    )


def _display_matrix(frame: Any) -> np.ndarray | None:
    from av.sidedata.sidedata import Type

    with contextlib.suppress(Exception):
        data = frame.side_data.get(Type.DISPLAYMATRIX)
        if data is not None:
            return np.frombuffer(bytes(data), dtype=np.int32)[:9]
    return None


def to_display(image: np.ndarray, transform: tuple[bool, bool, bool]) -> np.ndarray:
    """``image`` ``(H, W, 3)`` with :func:`display_transform`'s ``transform`` applied (a contiguous array)."""
    transpose, flip_rows, flip_columns = transform
    if transpose:
        image = image.transpose(1, 0, 2)
    if flip_rows:
        image = image[::-1]
    if flip_columns:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def _decode(container: Any, stream: Any) -> Iterator[Any]:
    """The decoded frames of ``stream`` (a seam for tests).

    When reading or decoding fails (a corrupt packet, a stream whose connection closes), the frames
    the decoder still holds (its threads keep a few) are yielded before the error is raised again.
    """
    try:
        for packet in container.demux(stream):
            yield from stream.decode(packet)
    except Exception as exc:
        with contextlib.suppress(Exception):
            yield from stream.decode(None)
        raise exc


def read_frames(
    path: str | os.PathLike,
    *,
    stride: int = 1,
    start: float | None = None,
    end: float | None = None,
    max_frames: int | None = None,
    max_pixels: int | None = None,
    timeout: float | None = None,
    on_open: Callable[[VideoInfo], None] | None = None,
    first_index: int | None = None,
) -> Iterator[DecodedFrame]:
    """The frames of a video file or stream, one at a time, as displayed, in 8-bit RGB.

    Frames are selected in this order: those at or after ``start`` and before ``end``, of those
    every ``stride``-th (the first one kept), of those the first ``max_frames``. With ``start``
    the demuxer seeks to the key frame before it and the frames before ``start`` are decoded and
    dropped.

    Args:
        path: Video file (any container and codec FFmpeg reads; an animated GIF), or a stream URL
            (a ``str`` for which :func:`is_stream_url` holds).
        stride: Keep every ``stride``-th frame.
        start: Seconds; ``None`` or 0 from the first frame.
        end: Seconds, exclusive; ``None`` to the last frame.
        max_frames: Stop after this many frames; ``None``: no limit.
        max_pixels: Largest stored ``width * height`` accepted (checked on the header).
        timeout: Streams: seconds without data before giving up (``None``: :data:`DEFAULT_STREAM_TIMEOUT`).
        on_open: Called with the header's :class:`VideoInfo` once the video is open, before the first frame.
        first_index: The index of the first frame at or after ``start`` when the caller knows it
            (:func:`frame_times`); by default it is counted, or after a seek computed from its time.

    Yields:
        :class:`DecodedFrame` items in presentation order.

    Raises:
        VideoReadError: Before the first frame when the file cannot be opened; after the frames
            decoded so far when decoding stops in the middle.
    """
    path = path if is_stream_url(path) else Path(path)
    container, stream = _open(path, timeout)
    try:
        width, height = stream.codec_context.width, stream.codec_context.height
        if max_pixels is not None and width * height > max_pixels:
            raise VideoReadError(
                path, f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,}; raise "
                "max_pixels (--max-pixels) if the video is genuine",
            )  # fmt: skip
        if on_open is not None:
            on_open(_info(container, stream))
        yield from _select(path, container, stream, stride, start, end, max_frames, first_index)
    finally:
        container.close()


def _select(
    path: Path | str,
    container: Any,
    stream: Any,
    stride: int,
    start: float | None,
    end: float | None,
    limit: int | None,
    first_index: int | None = None,
) -> Iterator[DecodedFrame]:
    time_base = stream.time_base or Fraction(1, 1)
    origin = stream.start_time or 0
    fps = _fps(stream)
    seek = bool(start) and fps is not None
    if seek:
        with contextlib.suppress(Exception):  # a file that cannot seek is decoded from its start
            container.seek(origin + int(Fraction(start) / time_base), stream=stream, backward=True)
    index = None if seek or first_index is not None else 0
    kept = selected = 0
    tagged = rotate_tag_transform(dict(stream.metadata or {}))
    frames = _decode(container, stream)
    while limit is None or kept < limit:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except Exception as exc:  # av.FFmpegError (corrupt data), or a conversion failure
            where = "before the first frame" if index in (None, 0) else f"after frame {index - 1}"
            if type(exc).__name__ == "ExitError":  # a stream's read time-out (PyAV's interrupt callback)
                raise VideoReadError(path, f"the stream sent nothing for too long (--stream-timeout); stopped "
                                     f"{where}") from None  # fmt: skip
            raise VideoReadError(path, f"decoding stopped {where} ({_why(exc)})") from None
        if frame.pts is not None:
            timestamp = float((frame.pts - origin) * time_base)
        else:
            timestamp = (index or 0) / float(fps or FALLBACK_FPS)
        if index is None and first_index is not None:  # the caller knows the index of the first frame kept
            if start is not None and timestamp + 1e-9 < start:
                continue
            index = first_index
        if index is None:  # the first frame after a seek: its index from its time
            index = round(timestamp * fps) if fps else 0
        current, index = index, index + 1
        if start is not None and timestamp + 1e-9 < start:
            continue
        if end is not None and timestamp >= end:
            return
        selected += 1
        if (selected - 1) % stride:
            continue
        try:
            image = frame.to_ndarray(format="rgb24")
        except Exception as exc:
            raise VideoReadError(path, f"cannot convert frame {current} to RGB ({_why(exc)})") from None
        kept += 1
        matrix = _display_matrix(frame)
        transform = display_transform(matrix) if matrix is not None else tagged
        yield DecodedFrame(current, round(timestamp, 6), to_display(image, transform))


def frame_times(path: str | os.PathLike) -> tuple[list[float], bool]:
    """The presentation time (seconds, unrounded: pass one as ``start`` to :func:`read_frames`) of every
    frame of a video file, in order, read from the packets without decoding (a second or so for an hour of video).

    Returns:
        ``(times, complete)``: ``complete`` is False when the packets could not all be read (a
        truncated or corrupt file) or some lack a time stamp; ``times`` then holds what was read.

    Raises:
        VideoReadError: The file cannot be opened.
    """
    container, stream = _open(Path(path))
    time_base = stream.time_base or Fraction(1, 1)
    origin = stream.start_time or 0
    points: list[int] = []
    complete = True
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's closing empty packet
                continue
            if packet.pts is None:
                complete = False
                continue
            points.append(packet.pts)
    except Exception:  # av.FFmpegError: the file breaks off here
        complete = False
    finally:
        container.close()
    points.sort()
    return [float((pts - origin) * time_base) for pts in points], complete


def decode_ahead(
    frames: Iterator[DecodedFrame], depth: int, end: threading.Event | None = None
) -> Iterator[DecodedFrame]:
    """``frames`` decoded in a background thread while the caller works (FFmpeg releases the GIL).

    At most ``depth`` frames wait at a time, so memory stays flat. An exception of ``frames``
    (:class:`VideoReadError` in the middle of a video) is raised here after the frames before it.
    Closing this generator (a finished or interrupted caller) stops the thread and closes ``frames``.

    Args:
        frames: A :func:`read_frames` generator (not yet started).
        depth: Frames decoded ahead (>= 1).
        end: Set from elsewhere (Ctrl-C on a live stream): the frames end as if the video did, at
            once, without the frames still waiting. The thread, which may be waiting for a silent
            stream, then gets a second to finish; it is left to end on its own after that.
    """
    queue: Queue = Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def work() -> None:
        try:
            for frame in frames:
                if not put(("frame", frame)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the caller
            put(("error", exc))
        finally:
            frames.close()

    thread = threading.Thread(target=work, name="lstmdet-decode", daemon=True)
    thread.start()
    try:
        while True:
            try:
                kind, item = queue.get(timeout=0.1) if end is not None else queue.get()
            except Empty:
                kind, item = "wait", None
            if (end is not None and end.is_set()) or kind == "end":
                return
            if kind == "error":
                raise item
            if kind == "frame":
                yield item
    finally:
        stop.set()
        thread.join(timeout=1.0 if end is not None and end.is_set() else None)


class VideoEncoder:
    """Writes ``(H, W, 3)`` uint8 RGB frames as an H.264 MP4 (libx264 through PyAV).

    The file is written under a temporary name and renamed into place by :meth:`close`, also when
    the run is interrupted (the frames so far form a complete, playable file). Frames are placed at
    their timestamps (on a 90 kHz clock, exact for the usual frame rates), so a video written with a
    stride or a start, or one of variable frame rate, keeps its timing. Sizes with an
    odd side use 4:4:4 chroma (4:2:0 needs even sides).

    Args:
        path: The ``.mp4`` to write (its folder must exist).
        width: Frame width.
        height: Frame height.
        fps: Frame rate (the time base of the timestamps).
        crf: x264's constant rate factor: 0 lossless, 20 (default) visually clean, higher smaller.
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: Fraction, crf: int = 20) -> None:
        import av

        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(path))
        self.fps, self.width, self.height = Fraction(fps).limit_denominator(1001 * 1000), width, height
        self._container = av.open(str(tmp), mode="w", format="mp4")
        self._stream = self._container.add_stream(
            "libx264", rate=self.fps, options={"preset": "veryfast", "crf": str(crf)}
        )
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self._stream.codec_context.time_base = ENCODER_TIME_BASE
        self._last = -1

    def write(self, image: np.ndarray, timestamp: float) -> None:
        """Encode one frame shown at ``timestamp`` seconds."""
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.time_base = ENCODER_TIME_BASE
        self._last = frame.pts = max(round(timestamp / ENCODER_TIME_BASE), self._last + 1)
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        """Flush the encoder, finish the file and rename it into place."""
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self._container.close()
            self._stack.__exit__(type(exc), exc, exc.__traceback__)  # removes the temporary file
            raise
        self._stack.close()
