"""read_image: EXIF orientation, every pixel mode to 8-bit RGB, and refusal of broken or hostile files."""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from lstmdet.data.images import (
    DEFAULT_MAX_PIXELS,
    FORMAT_NAMES,
    IMAGE_EXTENSIONS,
    ImageReadError,
    find_images,
    image_size,
    is_image_file,
    read_image,
)
from lstmdet.errors import LstmdetError


def _quadrants(width: int, height: int) -> np.ndarray:
    """RGB image whose top-left quadrant is red, top-right green, bottom-left blue, bottom-right white."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[: height // 2, : width // 2] = (255, 0, 0)
    array[: height // 2, width // 2 :] = (0, 255, 0)
    array[height // 2 :, : width // 2] = (0, 0, 255)
    array[height // 2 :, width // 2 :] = (255, 255, 255)
    return array


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` but holds almost no data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_is_applied(tmp_path, orientation):
    stored = _quadrants(64, 32)  # stored grid: 64 wide, 32 high
    path = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    image = read_image(path)
    # Displayed = stored rotated: 3 -> 180 degrees, 6 -> 90 clockwise, 8 -> 90 counter-clockwise.
    expected = {1: stored, 3: np.rot90(stored, 2), 6: np.rot90(stored, -1), 8: np.rot90(stored, 1)}[orientation]
    assert image.shape == expected.shape and image.dtype == np.uint8
    assert image_size(path) == (expected.shape[1], expected.shape[0])
    assert np.abs(image.astype(int) - expected.astype(int)).mean() < 8  # JPEG loss only
    if orientation == 6:  # the red top-left corner of the stored image is displayed top-right
        assert image.shape == (64, 32, 3)
        assert tuple(image[2, -3]) == pytest.approx((255, 0, 0), abs=30)


def test_grey_and_bilevel_become_three_equal_channels(tmp_path):
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    assert image.shape == (16, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], grey)
    Image.fromarray(grey > 127).save(tmp_path / "b.png")  # mode "1"
    assert set(np.unique(read_image(tmp_path / "b.png"))) == {0, 255}


def test_alpha_is_composited_on_black(tmp_path):
    rgba = np.array([[[255, 0, 0, 0], [10, 20, 30, 255], [200, 100, 50, 128]]], dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(image[0, 0], (0, 0, 0))  # fully transparent: black, not red
    np.testing.assert_array_equal(image[0, 1], (10, 20, 30))
    np.testing.assert_array_equal(image[0, 2], (100, 50, 25))  # value * 128 / 255, rounded

    la = np.array([[[200, 128], [90, 255]]], dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png")[0], [[100, 100, 100], [90, 90, 90]])


def test_palette_with_transparency(tmp_path):
    palette = Image.new("P", (4, 1))
    palette.putpalette([255, 255, 255, 255, 0, 0] + [0, 0, 0] * 254)  # 0: white, 1: red
    palette.putdata([0, 1, 1, 0])
    palette.save(tmp_path / "p.png", transparency=0)  # index 0 is transparent
    image = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(image[0], [[0, 0, 0], [255, 0, 0], [255, 0, 0], [0, 0, 0]])
    palette.save(tmp_path / "opaque.png")  # without transparency: the palette colours
    np.testing.assert_array_equal(read_image(tmp_path / "opaque.png")[0, 0], (255, 255, 255))


@pytest.mark.parametrize("mode", ["P", "L", "RGB"])
def test_gif_first_frame_any_mode(tmp_path, mode):
    """A GIF (palette, grey or RGB source; animated or not) is read as its first frame."""
    first = np.zeros((6, 8, 3), np.uint8)
    first[:, :4] = (255, 0, 0) if mode != "L" else (200, 200, 200)
    second = np.full((6, 8, 3), 90, np.uint8)
    frames = [Image.fromarray(first), Image.fromarray(second)]
    if mode == "L":
        frames = [f.convert("L") for f in frames]
    elif mode == "P":
        frames = [f.convert("P", palette=Image.Palette.ADAPTIVE, colors=4) for f in frames]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=40, loop=0)
    frames[0].save(tmp_path / "still.gif")
    assert Image.open(tmp_path / "anim.gif").n_frames == 2
    for name in ("anim.gif", "still.gif"):
        image = read_image(tmp_path / name)
        assert image.shape == (6, 8, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, first)
    assert image_size(tmp_path / "anim.gif") == (8, 6)


def test_pnm_family(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey).save(tmp_path / "g.pgm")
    Image.fromarray(np.stack([grey] * 3, axis=2)).save(tmp_path / "c.ppm")
    for name in ("g.pgm", "c.ppm"):
        np.testing.assert_array_equal(read_image(tmp_path / name), np.stack([grey] * 3, axis=2))
    assert [p.name for p in find_images(tmp_path)] == ["c.ppm", "g.pgm"]


def test_cmyk(tmp_path):
    cmyk = np.array([[[0, 0, 0, 0], [0, 255, 255, 0], [0, 0, 0, 255]]], dtype=np.uint8)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "c.tiff")
    np.testing.assert_array_equal(read_image(tmp_path / "c.tiff")[0], [[255, 255, 255], [255, 0, 0], [0, 0, 0]])


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d16.png")  # 16-bit grey PNG
    assert Image.open(tmp_path / "d16.png").mode in ("I;16", "I")
    image = read_image(tmp_path / "d16.png")
    np.testing.assert_array_equal(image[0, :, 0], [0, 1, 128, 255])  # Pillow's convert("RGB") gives 0, 255, 255, 255
    assert image.dtype == np.uint8 and image.shape == (1, 4, 3)

    wide = np.array([[-5, 256, 65535, 70000]], dtype=np.int32)
    Image.fromarray(wide, mode="I").save(tmp_path / "d32.tiff")
    np.testing.assert_array_equal(read_image(tmp_path / "d32.tiff")[0, :, 1], [0, 1, 255, 255])


def test_broken_files_raise_image_read_error_naming_the_file(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(_quadrants(64, 64)).save(good)
    cases = {
        "empty.jpg": b"",
        "truncated.jpg": good.read_bytes()[: len(good.read_bytes()) // 2],
        "random.png": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "text.jpg": b"this is a text file, not a JPEG\n" * 10,
    }
    reasons = {"empty.jpg": "empty", "truncated.jpg": "truncated", "random.png": "not an image", "text.jpg": "not an"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageReadError) as info:
            read_image(tmp_path / name)
        assert isinstance(info.value, LstmdetError)
        assert name in str(info.value) and reasons[name] in str(info.value)
    with pytest.raises(ImageReadError, match=r"missing\.png"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 40000, 40000)  # 1.6 billion pixels claimed by a file of ~100 bytes
    assert bomb.stat().st_size < 200
    start = time.perf_counter()
    with pytest.raises(ImageReadError, match=r"bomb\.png.*pixels"):
        read_image(bomb)
    with pytest.raises(ImageReadError, match=r"bomb\.png"):
        image_size(bomb)
    assert time.perf_counter() - start < 1.0

    # Below Pillow's own limit the configurable one decides, still before decoding.
    medium = tmp_path / "medium.png"
    _png_header_only(medium, 12000, 10000)  # 120 MP: above the default limit, below Pillow's hard one
    assert DEFAULT_MAX_PIXELS < 12000 * 10000
    with pytest.raises(ImageReadError, match=r"120,000,000 pixels exceeds the limit"):
        read_image(medium)

    small = tmp_path / "small.png"
    Image.fromarray(_quadrants(20, 20)).save(small)
    with pytest.raises(ImageReadError, match="400 pixels exceeds the limit of 100"):
        read_image(small, max_pixels=100)
    assert read_image(small, max_pixels=400).shape == (20, 20, 3)


def test_image_extensions(tmp_path):
    assert is_image_file("a/B.JPG") and is_image_file("x.TiFf") and is_image_file("y.webp")
    assert is_image_file("z.GIF") and is_image_file("p.ppm") and is_image_file("g.pgm")
    assert not is_image_file("notes.txt") and not is_image_file("jpg")
    for name in ("b.PNG", "a.jpg", "sub/c.jpeg", ".hidden.jpg", "d.txt", "e.Gif"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)] == [
        "a.jpg",
        "b.PNG",
        "e.Gif",
        "sub/c.jpeg",
    ]
    assert len(find_images(tmp_path, recursive=False)) == 3


def test_reduced_scale_jpeg_decode_reports_the_full_size(tmp_path):
    """A 640x480 JPEG for a model that makes it 128x96 decodes at 1/4 scale; PNGs never shrink."""
    from PIL import Image

    from lstmdet.data.images import read_image_sized

    pixels = np.zeros((480, 640, 3), np.uint8)
    pixels[100:300, 200:500] = 255
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    small, size = read_image_sized(tmp_path / "a.jpg", fit=(128, 128))
    assert size == (480, 640) and small.shape == (120, 160, 3)
    assert small[25:75, 50:125].mean() > 240 and small[:20].mean() < 15  # the square, at 1/4 scale
    full, size = read_image_sized(tmp_path / "a.jpg")
    assert full.shape == (480, 640, 3) and size == (480, 640)
    png, size = read_image_sized(tmp_path / "a.png", fit=(128, 128))
    assert png.shape == (480, 640, 3) and size == (480, 640)
    big_model, _ = read_image_sized(tmp_path / "a.jpg", fit=(480, 800))
    assert big_model.shape == (480, 640, 3)


def test_the_unreadable_file_message_lists_exactly_the_formats_that_are_read(tmp_path):
    """Every extension the folder scan takes is read, and the message names those formats and no others."""
    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    read = set()
    for ext in IMAGE_EXTENSIONS:
        path = tmp_path / f"image{ext}"
        Image.fromarray(pixels).convert("1" if ext == ".pbm" else "RGB").save(path)
        assert read_image(path).shape == (4, 4, 3), ext
        with Image.open(path) as image:
            read.add(FORMAT_NAMES[image.format])
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / "notes.png")
    listed = str(info.value).split("not an image in a format lstmdet reads (", 1)[1].rsplit(") or the header", 1)[0]
    assert sorted(listed.split(", ")) == sorted(read)
    assert "PNM (.ppm .pgm .pbm .pnm)" in listed and "GIF (first frame)" in listed and "MPO" not in listed
