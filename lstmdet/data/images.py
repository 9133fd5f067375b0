"""Reading image files safely into ``(H, W, 3)`` uint8 RGB arrays.

Every image that enters lstmdet (datasets, batch detection) goes through :func:`read_image`, so all
code sees the same pixels for the same file:

* **Hostile files are refused before decoding.** Only the formats in :data:`ALLOWED_FORMATS` are
  opened (never PostScript or other formats that run external programs), and the header's
  ``width * height`` is checked against ``max_pixels`` before any pixel is decoded, so a
  "decompression bomb" (a small file that claims 40000x40000 pixels) costs nothing.
* **EXIF orientation is applied** (:func:`PIL.ImageOps.exif_transpose`): arrays, sizes and box
  coordinates refer to the image as it is displayed, which is also how Ultralytics/YOLO and OpenCV
  read files. :func:`image_size` reports that displayed size from the header alone. A corrupt EXIF
  block is ignored (the stored orientation is used).
* **Modes are converted to 8-bit RGB**: grey (``L``, ``1``) is replicated; palette images go
  through their palette; ``CMYK``, ``YCbCr``, ``HSV`` are converted by Pillow; 16-bit grey
  (``I;16*``) and 32-bit ``I`` images are scaled by ``>> 8`` (65535 -> 255, values outside
  ``[0, 65535]`` clipped first); float ``F`` images are taken as ``[0, 1]`` when their maximum is at
  most 1, else as ``[0, 255]``.
* **Transparency is composited onto black** (:data:`ALPHA_BACKGROUND`): RGBA, LA, PA and palette or
  grey images with a transparent colour become ``rgb * alpha / 255``, so fully transparent pixels
  are black whatever colour they happen to store. Detection and training must use this function
  (not ``Image.convert("RGB")``, which drops alpha) to see the same pixels.

Anything that cannot be read (missing, empty, truncated, not an image, too large, unsupported
mode) raises :class:`ImageReadError`, whose message names the file and says what was wrong.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps

from lstmdet.errors import LstmdetError, LstmdetWarning

#: Default limit on ``width * height`` (Pillow's own default, about 9459 x 9459 pixels).
DEFAULT_MAX_PIXELS = 89_478_485
#: File name extensions treated as images (lower case, with the dot); see :func:`is_image_file`.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
)
#: Pillow format names :func:`read_image` will open; anything else is refused unread.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM")
#: How messages name each of :data:`ALLOWED_FORMATS` (MPO, multi-picture JPEG, is a JPEG to the user).
FORMAT_NAMES: dict[str, str] = {
    "JPEG": "JPEG",
    "MPO": "JPEG",
    "PNG": "PNG",
    "BMP": "BMP",
    "TIFF": "TIFF",
    "WEBP": "WebP",
    "GIF": "GIF (first frame)",
    "PPM": "PNM (.ppm .pgm .pbm .pnm)",
}
#: Colour transparent pixels are composited onto.
ALPHA_BACKGROUND = (0, 0, 0)

_T = TypeVar("_T")


class ImageReadError(LstmdetError):
    """An image file could not be read; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive); the file is not opened."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def find_images(
    root: str | os.PathLike, *, recursive: bool = True, extensions: tuple[str, ...] = IMAGE_EXTENSIONS
) -> list[Path]:
    """Image files under ``root`` (by extension), sorted by path; hidden files and folders skipped.

    Symbolic links to folders are followed, but every real folder is searched once: a link that
    loops back to a folder above it, or a second link to a folder already searched, adds nothing
    (the walk is in sorted order, so which path a folder is listed under is deterministic).

    Args:
        root: Folder to search.
        recursive: Also search sub-folders.
        extensions: The extensions to list (lower case, with the dot; matched in any case), e.g.
            images and videos (:data:`lstmdet.data.video.VIDEO_EXTENSIONS`) for ``detect``.

    Raises:
        LstmdetError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise LstmdetError(f"image folder {root} does not exist or is not a folder")
    found: list[Path] = []
    visited: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            stat = os.stat(dirpath)
        except OSError:  # vanished or unreadable while walking
            dirnames[:] = []
            continue
        if (stat.st_dev, stat.st_ino) in visited:  # a symlink loop or a folder reached twice
            dirnames[:] = []
            continue
        visited.add((stat.st_dev, stat.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            Path(dirpath) / f for f in filenames if not f.startswith(".") and Path(f).suffix.lower() in extensions
        )
        if not recursive:
            break
    return sorted(found)


def _allowed_formats() -> tuple[str, ...]:
    """:data:`ALLOWED_FORMATS` that this Pillow build can open (plugins loaded on first use)."""
    Image.init()
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


def supported_formats() -> str:
    """The formats :func:`read_image` reads with this Pillow build, in words: ``"JPEG, PNG, ..."``."""
    return ", ".join(dict.fromkeys(FORMAT_NAMES[f] for f in _allowed_formats()))


def _open(path: Path, max_pixels: int) -> Image.Image:
    """Open ``path`` (header only) and check its size; the caller closes the image."""
    try:
        if path.is_dir():
            raise ImageReadError(path, "it is a folder, not a file")
        if path.stat().st_size == 0:
            raise ImageReadError(path, "the file is empty (0 bytes)")
    except OSError as exc:
        raise ImageReadError(path, exc.strerror or str(exc)) from None
    try:
        if max_pixels > (Image.MAX_IMAGE_PIXELS or 0):
            # The caller allows more than Pillow warns about; lstmdet checks max_pixels itself below.
            # (Only in this case: catch_warnings changes process-wide state and is not thread-safe.)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(path, formats=_allowed_formats())
        else:
            image = Image.open(path, formats=_allowed_formats())
    except Image.DecompressionBombError:
        raise ImageReadError(
            path, f"its header claims more pixels than Pillow allows ({2 * Image.MAX_IMAGE_PIXELS:,}); refused"
        ) from None
    except Image.UnidentifiedImageError:
        raise ImageReadError(
            path, f"not an image in a format lstmdet reads ({supported_formats()}) or the header is corrupt"
        ) from None
    except Exception as exc:  # Pillow raises many types for hostile headers
        raise ImageReadError(path, f"invalid image header ({type(exc).__name__}: {exc})") from None
    width, height = image.size
    if width <= 0 or height <= 0 or width * height > max_pixels:
        image.close()
        raise ImageReadError(
            path,
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "(possible decompression bomb); raise max_pixels if the image is genuine",
        )
    return image


def _orientation(image: Image.Image) -> int:
    """EXIF orientation 1..8 of an opened image (1 when absent or unreadable)."""
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # corrupt EXIF: use the stored orientation
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def image_size(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Displayed ``(width, height)`` of an image from its header, without decoding pixels.

    EXIF orientations 5-8 (rotations by 90 degrees) swap the stored width and height, exactly as
    :func:`read_image` does when it applies the orientation.

    Raises:
        ImageReadError: The header cannot be read or exceeds ``max_pixels``.
    """
    path = Path(path)
    with _open(path, max_pixels) as image:
        width, height = image.size
        return (height, width) if _orientation(image) >= 5 else (width, height)


def read_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as displayed, in 8-bit RGB.

    Args:
        path: Image file; the format is detected from its content, not its name.
        max_pixels: Largest ``width * height`` accepted, checked on the header before decoding.

    Returns:
        ``(H, W, 3)`` uint8 RGB array (a writable copy) with EXIF orientation applied and
        transparency composited onto black (see the module docstring for every mode).

    Raises:
        ImageReadError: The file is missing, empty, truncated, not a supported image, larger than
            ``max_pixels`` or of an unsupported mode.
    """
    return read_image_sized(path, max_pixels=max_pixels)[0]


def read_image_sized(
    path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, fit: tuple[int, int] | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`read_image`, optionally decoding a JPEG at reduced scale, plus the full displayed size.

    Args:
        path: Image file.
        max_pixels: Largest ``width * height`` accepted, checked on the header before decoding.
        fit: ``(size, max_size)`` of a model that resizes the shorter side to ``size`` with the longer
            side capped at ``max_size``. A JPEG is then decoded at 1/2, 1/4 or 1/8 scale (libjpeg's
            DCT scaling, several times faster than a full decode) as long as it stays at least as
            large as the model will make it. ``None`` decodes at full resolution.

    Returns:
        ``((H', W', 3) uint8 RGB array, (H, W))``: the decoded image and the displayed size at full
        resolution (EXIF orientation applied), which coordinates should be reported in.

    Raises:
        ImageReadError: As :func:`read_image`.
    """
    path = Path(path)
    with _open(path, max_pixels) as image:
        width, height = image.size
        if fit is not None and image.format in ("JPEG", "MPO"):
            short, long = min(width, height), max(width, height)
            needed = min(fit[0], fit[1] * short / long)  # the shorter side after the model's resize
            scale = max(s for s in (1, 2, 4, 8) if s == 1 or short / s >= needed)
            if scale > 1:
                image.draft(None, (-(-width // scale), -(-height // scale)))
        try:
            image.load()
        except Exception as exc:  # truncated or corrupt pixel data
            reason = f"the pixel data is truncated or corrupt ({type(exc).__name__}: {exc})"
            raise ImageReadError(path, reason) from None
        orientation = _orientation(image)
        if orientation != 1:
            with contextlib.suppress(Exception):  # corrupt EXIF: keep the stored orientation
                transposed = ImageOps.exif_transpose(image)
                if orientation in (5, 6, 7, 8):
                    width, height = height, width
                image = transposed
        return _to_rgb(image, path), (height, width)


def _to_rgb(image: Image.Image, path: Path) -> np.ndarray:
    mode = image.mode
    try:
        if mode == "RGB":
            return np.array(image, dtype=np.uint8)
        if mode.startswith("I;16") or mode == "I":
            values = np.clip(np.array(image).astype(np.int64), 0, 65535)
            return _grey((values >> 8).astype(np.uint8))
        if mode == "F":
            values = np.array(image, dtype=np.float32)
            values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
            scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
            return _grey(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8))
        if mode == "LAB":
            raise ImageReadError(path, "CIELAB images are not supported; convert the file to RGB first")
        if "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
            rgba = np.array(image.convert("RGBA"), dtype=np.uint16)
            alpha = rgba[..., 3:4]
            background = np.array(ALPHA_BACKGROUND, dtype=np.uint16)
            rgb = (rgba[..., :3] * alpha + background * (255 - alpha) + 127) // 255
            return rgb.astype(np.uint8)
        return np.array(image.convert("RGB"), dtype=np.uint8)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(path, f"cannot convert mode {mode!r} to RGB ({type(exc).__name__}: {exc})") from None


def _grey(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(values[..., None], 3, axis=2))


class SkipsUnreadable:
    """Mixin for datasets of files: records unreadable files and serves the next readable item.

    A dataset checks headers at construction (:func:`image_size`) and calls
    :meth:`_note_skipped` for each bad file. A file that only fails when decoded (truncated pixel
    data) is recorded on first access and, in training, the next readable item is returned instead,
    so a map-style dataset never breaks a training run. Evaluation must not score an image twice:
    it sets ``replace_unreadable = False`` (:class:`lstmdet.engine.data.AugmentedDataset` does for
    its ``eval`` split), and such an item raises :class:`ImageReadError` for the caller to count as
    skipped. Note: with ``DataLoader(num_workers > 0)`` first-access skips are recorded in the worker
    processes, not in the main process's ``skipped``.

    Attributes:
        skipped_files: ``{path: reason}`` of files left out.
        replace_unreadable: Serve the next readable item in place of an unreadable one (default
            ``True``); ``False`` raises :class:`ImageReadError` instead.
    """

    skipped_files: dict[str, str]
    replace_unreadable: bool = True

    @property
    def skipped(self) -> int:
        """Number of files left out because they could not be read."""
        return len(self.skipped_files)

    def _note_skipped(self, path: str | os.PathLike, reason: str) -> None:
        if not hasattr(self, "skipped_files"):
            self.skipped_files = {}
        if str(path) not in self.skipped_files:
            self.skipped_files[str(path)] = reason
            warnings.warn(f"skipping unreadable image {path}: {reason}", LstmdetWarning, stacklevel=3)

    def _probe_all(self, paths: Iterable[Path], max_pixels: int) -> list[tuple[Path, tuple[int, int]]]:
        """``(path, (width, height))`` of the readable files among ``paths``; the rest are recorded."""
        if not hasattr(self, "skipped_files"):
            self.skipped_files = {}
        readable = []
        for path in paths:
            try:
                readable.append((path, image_size(path, max_pixels=max_pixels)))
            except ImageReadError as exc:
                self._note_skipped(path, exc.reason)
        return readable

    def _read_with_fallback(
        self, index: int, count: int, path_of: Callable[[int], Path], load: Callable[[int], _T]
    ) -> _T:
        """``load(index)``; if its file is unreadable, record it and try the following indices.

        Raises:
            ImageReadError: The file of ``index`` is unreadable and :attr:`replace_unreadable` is off.
        """
        if not 0 <= index < count:
            raise IndexError(f"index {index} out of range for a dataset of {count} items")
        if not self.replace_unreadable:
            path = str(path_of(index))
            if path in self.skipped_files:
                raise ImageReadError(path, self.skipped_files[path])
            try:
                return load(index)
            except ImageReadError as exc:
                self._note_skipped(exc.path, exc.reason)
                raise
        for step in range(count):
            i = (index + step) % count
            if str(path_of(i)) in self.skipped_files:
                continue
            try:
                return load(i)
            except ImageReadError as exc:
                self._note_skipped(exc.path, exc.reason)
        raise LstmdetError(f"none of the {count} images of this dataset can be read; see the warnings")
