"""Reading videos with PyAV: frames and timestamps as PyAV decodes them, selection, rotation, bad files, writing."""

from __future__ import annotations

import re
import threading
from fractions import Fraction

import av
import numpy as np
import pytest
from helpers import decode_video, digit_clip, encode_video
from PIL import Image

from lstmdet.data import video as video_module
from lstmdet.data.video import (
    VideoEncoder,
    VideoReadError,
    decode_ahead,
    display_transform,
    is_video_file,
    probe_video,
    read_frames,
    rotate_tag_transform,
)

FPS = 10


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return digit_clip(12, size=48)


@pytest.fixture(scope="module")
def mp4(clip, tmp_path_factory):
    return encode_video(tmp_path_factory.mktemp("video") / "clip.mp4", clip, FPS)


def test_frames_and_timestamps_equal_pyav_decode(mp4):
    images, times = decode_video(mp4)
    frames = list(read_frames(mp4))
    assert len(frames) == len(images) == 12
    assert [f.index for f in frames] == list(range(12))
    assert [f.timestamp for f in frames] == pytest.approx(times, abs=1e-6)
    assert times == pytest.approx([t / FPS for t in range(12)], abs=1e-6)
    for frame, image in zip(frames, images, strict=True):
        assert frame.image.dtype == np.uint8 and frame.image.shape == (48, 48, 3)
        assert np.array_equal(frame.image, image)
    info = probe_video(mp4)
    assert (info.width, info.height, info.fps, info.frames) == (48, 48, Fraction(FPS), 12)


@pytest.mark.parametrize(
    ("options", "indices"),
    [
        ({"stride": 3}, [0, 3, 6, 9]),
        ({"start": 0.5}, [5, 6, 7, 8, 9, 10, 11]),  # a seek to the key frame at 4, then frames before 0.5 s dropped
        ({"end": 0.35}, [0, 1, 2, 3]),  # end is exclusive
        ({"start": 0.25, "end": 0.85, "stride": 2}, [3, 5, 7]),
        ({"start": 0.25, "end": 0.85, "stride": 2, "max_frames": 2}, [3, 5]),
        ({"max_frames": 1}, [0]),
        ({"start": 5.0}, []),
    ],
)
def test_stride_start_end_and_max_frames_select_the_right_frames(mp4, options, indices):
    images, times = decode_video(mp4)
    frames = list(read_frames(mp4, **options))
    assert [f.index for f in frames] == indices
    for frame in frames:
        assert frame.timestamp == pytest.approx(times[frame.index], abs=1e-6)
        assert np.array_equal(frame.image, images[frame.index])


@pytest.mark.parametrize(
    ("rotation", "hflip", "expected"),
    [
        (90, False, lambda a: np.rot90(a, 1)),
        (-90, False, lambda a: np.rot90(a, -1)),
        (180, False, lambda a: a[::-1, ::-1]),
        (0, True, lambda a: a[:, ::-1]),
    ],
)
def test_the_display_matrix_is_applied(tmp_path, rotation, hflip, expected):
    frames = np.stack([np.asarray(Image.fromarray(image).resize((48, 32))) for image in digit_clip(3, size=32)])
    path = encode_video(tmp_path / "phone.mp4", frames, FPS, rotation=rotation, hflip=hflip)
    stored, _ = decode_video(path)  # PyAV alone does not rotate
    read = list(read_frames(path))
    assert len(read) == 3
    for frame, image in zip(read, stored, strict=True):
        assert np.array_equal(frame.image, expected(image))
        assert frame.image.flags.c_contiguous


def test_an_older_rotate_tag_is_applied_when_there_is_no_display_matrix(tmp_path):
    import av

    frames = np.stack([np.asarray(Image.fromarray(image).resize((48, 32))) for image in digit_clip(2, size=32)])
    path = encode_video(tmp_path / "tagged.mkv", frames, FPS)
    tagged = tmp_path / "retagged.mkv"
    with av.open(str(path)) as src, av.open(str(tagged), mode="w") as dst:  # a remux with the tag
        stream = dst.add_stream_from_template(src.streams.video[0])
        stream.metadata["rotate"] = "90"
        for packet in src.demux(src.streams.video[0]):
            if packet.size:  # not the final empty (flush) packet
                packet.stream = stream
                dst.mux(packet)
    stored, _ = decode_video(path)
    read = list(read_frames(tagged))
    assert len(read) == 2 and all(np.array_equal(f.image, np.rot90(a, -1)) for f, a in zip(read, stored, strict=True))
    assert rotate_tag_transform({"ROTATE": "270"}) == (True, True, False)
    assert rotate_tag_transform({"rotate": "x"}) == rotate_tag_transform({}) == (False, False, False)


def test_display_transform_of_each_matrix_shape():
    one = 1 << 16
    assert display_transform(None) == (False, False, False)
    assert display_transform(np.array([one, 0, 0, 0, one, 0, 0, 0, 1 << 30])) == (False, False, False)
    assert display_transform(np.array([0, -one, 0, one, 0, 0, 0, 0, 1 << 30])) == (True, True, False)  # 90 ccw
    assert display_transform(np.array([30000, 30000, 0, -30000, 30000, 0, 0, 0, 1 << 30])) == (False, False, False)


def test_an_animated_gif_is_a_video_and_a_single_frame_gif_an_image(tmp_path, clip):
    images = [Image.fromarray(clip[t]) for t in range(4)]
    images[0].save(tmp_path / "moving.gif", save_all=True, append_images=images[1:], duration=100, loop=0)
    images[0].save(tmp_path / "still.gif")
    (tmp_path / "upper.MP4").write_bytes(b"")
    assert is_video_file(tmp_path / "moving.gif") and not is_video_file(tmp_path / "still.gif")
    assert is_video_file(tmp_path / "upper.MP4") and not is_video_file(tmp_path / "x.png")
    frames = list(read_frames(tmp_path / "moving.gif"))
    assert len(frames) == 4 and frames[0].image.shape == (48, 48, 3)
    assert [f.timestamp for f in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3], abs=1e-6)


def _audio_only(path):
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("mp2", rate=16000, layout="mono")
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1152
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def test_bad_files_raise_a_reason(tmp_path, mp4):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n")
    whole = mp4.read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    _audio_only(tmp_path / "audio.mkv")
    (tmp_path / "folder.mp4").mkdir()
    expected = {
        "empty.mp4": "empty (0 bytes)",
        "text.mp4": "not a video FFmpeg can read",
        "truncated.mp4": "not a video FFmpeg can read",
        "audio.mkv": "no video stream",
        "folder.mp4": "a folder",
        "missing.mp4": "No such file",
    }
    for name, reason in expected.items():
        with pytest.raises(VideoReadError, match=re.escape(reason)) as caught:
            list(read_frames(tmp_path / name))
        assert name in str(caught.value)
    with pytest.raises(VideoReadError, match="exceeds the limit of 1,000"):
        list(read_frames(mp4, max_pixels=1000))


def test_an_error_in_the_middle_comes_after_the_frames_before_it(mp4, monkeypatch):
    real = video_module._decode

    def breaks_after_three(container, stream):
        for n, frame in enumerate(real(container, stream)):
            if n == 3:
                raise av.InvalidDataError(1094995529, "Invalid data found when processing input")
            yield frame

    monkeypatch.setattr(video_module, "_decode", breaks_after_three)
    for frames in (read_frames(mp4), decode_ahead(read_frames(mp4), depth=2)):
        assert [next(frames).index for _ in range(3)] == [0, 1, 2]
        with pytest.raises(VideoReadError, match="decoding stopped after frame 2"):
            next(frames)


def test_decode_ahead_gives_the_same_frames_and_stops_when_closed(mp4):
    ahead = list(decode_ahead(read_frames(mp4), depth=3))
    assert [(f.index, f.timestamp) for f in ahead] == [(f.index, f.timestamp) for f in read_frames(mp4)]
    ahead = decode_ahead(read_frames(mp4), depth=2)
    assert next(ahead).index == 0
    ahead.close()  # an interrupted caller: the thread stops and closes the file
    assert not [t for t in threading.enumerate() if t.name == "lstmdet-decode"]


@pytest.mark.parametrize(("width", "height"), [(48, 32), (33, 17)])
def test_the_encoder_writes_every_frame_at_its_size(tmp_path, width, height):
    rng = np.random.default_rng(0)
    encoder = VideoEncoder(tmp_path / "out.mp4", width, height, Fraction(30000, 1001))
    for t in range(5):
        encoder.write(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), t * 1001 / 30000)
    assert not (tmp_path / "out.mp4").exists()  # written under a temporary name until closed
    encoder.close()
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    images, times = decode_video(tmp_path / "out.mp4")
    assert len(images) == 5 and images[0].shape == (height, width, 3)
    assert times == pytest.approx([t * 1001 / 30000 for t in range(5)], abs=1e-3)
    info = probe_video(tmp_path / "out.mp4")
    assert info.fps == Fraction(30000, 1001)


def test_memory_stays_flat_however_long_the_video(tmp_path):
    """Frames are never collected: a frame handed out and dropped by the caller is freed by the next one."""
    import gc
    import weakref

    rng = np.random.default_rng(1)
    path = encode_video(tmp_path / "long.mkv", rng.integers(0, 256, (240, 64, 96, 3), dtype=np.uint8), 30, gop=30)
    gc.disable()  # freed by reference counting alone, not by a later collection
    try:
        seen: list[weakref.ref] = []
        most_alive = 0
        for frame in decode_ahead(read_frames(path, stride=1), depth=4):
            seen.append(weakref.ref(frame.image))
            del frame
            most_alive = max(most_alive, sum(ref() is not None for ref in seen))
    finally:
        gc.enable()
    assert len(seen) == 240 and most_alive <= 1  # the one the generator still names until the next
