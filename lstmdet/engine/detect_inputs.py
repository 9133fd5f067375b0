"""The input side of batch detection: which files, in which order, decoded how, in which batches.

* :func:`list_inputs` lists SRC (a folder searched recursively, or one file) in a fixed order; in
  sequence mode it groups the frames by video folder. Video files (and animated GIFs) are listed
  apart: :mod:`lstmdet.engine.detect_video` runs them after the images.
* :class:`ImageFiles` is the loader's dataset: each item is decoded with
  :func:`~lstmdet.data.images.read_image` (pixel limit checked on the header, EXIF applied, any
  mode to RGB), or is the reason it could not be.
* :class:`Plan` yields the loader's batches: fixed slices of the input order, so an image always
  shares its batch (and its padding) with the same images, which keeps a resumed run identical to
  an uninterrupted one.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lstmdet.data.images import IMAGE_EXTENSIONS, ImageReadError, find_images, read_image_sized
from lstmdet.data.video import VIDEO_EXTENSIONS, is_animated_gif, is_stream_url, is_video_file
from lstmdet.errors import LstmdetError
from lstmdet.transforms import resize_for_detection


@dataclass
class Inputs:
    """The files of one run, in input order (names only: a few dozen bytes per file).

    Attributes:
        root: The folder the names are relative to (SRC, or the folder of a single SRC file).
        names: Paths relative to ``root``, ``/``-separated (the ``file`` of each line).
        videos: Sequence mode: each file's video folder relative to SRC (``"."`` for SRC itself).
        frames: Sequence mode: each file's index among its video's frames.
        video_files: Video files (and animated GIFs) relative to ``root``, sorted; they follow
            the images in the output.
        url: The stream URL when SRC is one (then the one entry of ``video_files``, as given).
    """

    root: Path
    names: list[str]
    videos: list[str] | None = None
    frames: list[int] | None = None
    video_files: list[str] = field(default_factory=list)
    url: str | None = None

    @property
    def files(self) -> list[str]:
        """Every input in output order: the images (input order), then the video files."""
        return self.names + self.video_files

    def source(self, name: str) -> Path | str:
        """What to open for input ``name``: the stream URL, or the file under :attr:`root`."""
        return self.url if name == self.url and self.url is not None else self.root / name


def list_inputs(src: str | Path, out: str | Path, *, sequence: bool = False) -> Inputs:
    """The image and video files of SRC in input order.

    A folder is searched recursively (sorted, extensions in any case, hidden entries skipped,
    symbolic links followed without loops, the ``out`` folder left out when it lies inside SRC);
    a file is taken as it is, and so is a stream URL (:func:`~lstmdet.data.video.is_stream_url`:
    ``rtsp://``, ``http(s)://``, ``file:`` ...; a path that exists is a path). Files with
    :data:`~lstmdet.data.video.VIDEO_EXTENSIONS` and GIFs with more than one frame are videos
    (:attr:`Inputs.video_files`); the rest are images.

    Raises:
        LstmdetError: SRC is missing or holds no image or video files; in sequence mode, SRC is an
            image file, or no sub-folder of SRC holds frames (all images lie directly in SRC: not
            one folder per video).
    """
    if is_stream_url(str(src)) and not Path(src).exists():
        return Inputs(Path("."), [], video_files=[str(src)], url=str(src))
    src = Path(src)
    if src.is_file():
        if is_video_file(src):
            return Inputs(src.parent, [], video_files=[src.name])
        if sequence:
            raise LstmdetError(
                f"--sequence needs a folder with one sub-folder of frames per video, or a video file; {src} is an "
                "image file"
            )
        return Inputs(src.parent, [src.name])
    if not src.is_dir():
        raise LstmdetError(f"SRC {src} does not exist; give an image or video file, or a folder of them")
    names = [p.relative_to(src).as_posix() for p in find_images(src, extensions=IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)]
    with contextlib.suppress(ValueError):  # ValueError: out is not inside src
        inside = Path(out).resolve().relative_to(src.resolve()).as_posix() + "/"
        names = [name for name in names if not name.startswith(inside)]
    if not names:
        raise LstmdetError(
            f"no image or video files in {src} (extensions {', '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)}, any case)"
        )
    video_files = [name for name in names if _is_video_name(src, name)]
    if video_files:
        is_video = set(video_files)
        names = [name for name in names if name not in is_video]
    if not sequence or not names:
        return Inputs(src, names, video_files=video_files)
    by_video: dict[str, list[str]] = defaultdict(list)
    for name in names:
        folder, _, _ = name.rpartition("/")
        by_video[folder or "."].append(name)
    if list(by_video) == ["."]:
        raise LstmdetError(
            f"--sequence wants one sub-folder of frames per video, but {src} has none: its {len(names)} images lie "
            "directly in it. Put each video's frames in a sub-folder of their own (SRC/VIDEO/FRAME.png), or leave "
            "out --sequence to detect the images one by one"
        )
    inputs = Inputs(src, [], [], [], video_files=video_files)
    for video in sorted(by_video, key=lambda v: Path(v).parts):
        frames = by_video.pop(video)
        inputs.names.extend(frames)
        inputs.videos.extend([video] * len(frames))  # one shared string per video
        inputs.frames.extend(range(len(frames)))
    return inputs


def _is_video_name(root: Path, name: str) -> bool:
    suffix = Path(name).suffix.lower()
    return suffix in VIDEO_EXTENSIONS or (suffix == ".gif" and is_animated_gif(root / name))


def model_input(array: np.ndarray, *, uint8: bool, fit: tuple[int, int] | None) -> torch.Tensor:
    """An RGB array as the model takes it (the one conversion of images and video frames).

    Args:
        array: ``(H, W, 3)`` uint8 RGB.
        uint8: Keep ``uint8`` (converted on the GPU, 4x less to copy) instead of float.
        fit: The model's ``(size, max_size)``: float images are resized to the model's input size
            here, exactly as the model would (:func:`~lstmdet.transforms.resize_for_detection`).

    Returns:
        ``(3, H', W')`` uint8, or float in ``[0, 1]``.
    """
    image = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    if uint8:
        return image
    image = image.float().div_(255.0)
    if fit is not None:
        image = resize_for_detection(image, *fit)
    return image


class ImageFiles(Dataset):
    """Decodes files for the loader; a file that cannot be read becomes its error message.

    Args:
        root: Folder the names are relative to.
        names: Image files, ``/``-separated paths relative to ``root``.
        max_pixels: Largest ``width * height`` accepted (checked on the header, before decoding).
        uint8: Return ``uint8`` tensors (converted on the GPU, 4x less to copy) instead of float.
        fit: The model's ``(size, max_size)``: JPEGs decode at reduced scale (see
            :func:`~lstmdet.data.images.read_image_sized`) and float images are resized to the
            model's input size here, in the loader process, exactly as the model would
            (:func:`~lstmdet.transforms.resize_for_detection`). ``None``: full resolution.
    """

    def __init__(
        self, root: Path, names: list[str], max_pixels: int, *, uint8: bool = False, fit: tuple[int, int] | None = None
    ) -> None:
        self.root, self.names, self.max_pixels, self.uint8 = root, names, max_pixels, uint8
        self.fit = fit

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None, tuple[int, int] | None]:
        """``(index, image (3, H', W') float in [0, 1] or uint8, None, (H, W))`` or
        ``(index, None, error, None)``; ``(H, W)`` is the full displayed size of the file."""
        path = self.root / self.names[index]
        try:
            array, size = read_image_sized(path, max_pixels=self.max_pixels, fit=self.fit)
        except ImageReadError as exc:
            return index, None, exc.reason, None
        except Exception as exc:  # e.g. MemoryError on a huge but allowed image: an error line, not a crash
            return index, None, f"cannot decode the image ({type(exc).__name__}: {exc})", None
        return index, model_input(array, uint8=self.uint8, fit=self.fit), None, size


def as_list(batch: list) -> list:
    """``collate_fn`` that keeps a batch as the list of ``ImageFiles`` items (images differ in size)."""
    return batch


class Plan:
    """Batches of input indices to load, made as they are needed (nothing per file is stored).

    Batches are fixed slices of the input order (of each video, in ``by_video`` mode), kept whole
    when any file of the slice (of the video, in ``by_video`` mode) is not yet ``done``.
    """

    def __init__(self, inputs: Inputs, batch_size: int, done: set[str], by_video: bool) -> None:
        self.inputs, self.batch_size, self.done, self.by_video = inputs, batch_size, done, by_video

    def _units(self) -> Iterator[range]:
        videos, n = self.inputs.videos, len(self.inputs.names)
        if not self.by_video or videos is None:
            yield from (range(s, min(s + self.batch_size, n)) for s in range(0, n, self.batch_size))
            return
        start = 0
        while start < n:
            end = start
            while end < n and videos[end] == videos[start]:
                end += 1
            yield range(start, end)
            start = end

    def __iter__(self) -> Iterator[list[int]]:
        for unit in self._units():
            if any(self.inputs.names[i] not in self.done for i in unit):
                for s in range(unit.start, unit.stop, self.batch_size):
                    yield list(range(s, min(s + self.batch_size, unit.stop)))


def batches(loader: DataLoader) -> Iterator[list[tuple[int, torch.Tensor | None, str | None]]]:
    """The loader's batches; a loader process that dies becomes an :class:`LstmdetError`."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except RuntimeError as exc:
            if "worker" not in str(exc).lower():
                raise
            raise LstmdetError(
                f"an image-decoding process died ({exc}); this is usually memory: continue with --resume and "
                "fewer --workers or a lower --max-pixels"
            ) from None
        yield batch
