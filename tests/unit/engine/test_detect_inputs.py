"""The input side of batch detection: which files, in which order, decoded how, in which batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lstmdet.engine.detect_inputs import ImageFiles, Inputs, Plan, as_list, batches, list_inputs
from lstmdet.errors import LstmdetError


def image(path: Path, height: int = 12, width: int = 16, seed: int = 0, fmt: str | None = None) -> Path:
    """A noise image at ``path`` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


# --- listing --------------------------------------------------------------------------------------------------------


def test_a_folder_is_listed_recursively_in_path_order(tmp_path):
    for name in ("b.png", "a.png", "a/z.jpg", "a/b/c.PNG", "UPPER.JPEG", "c.tif"):
        image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    image(tmp_path / ".hidden.png")
    image(tmp_path / ".cache" / "x.png")
    inputs = list_inputs(tmp_path, tmp_path.parent / "out")
    assert inputs.root == tmp_path
    # by path parts: a folder's files come before a sibling file whose name merely starts the same
    assert inputs.names == ["UPPER.JPEG", "a/b/c.PNG", "a/z.jpg", "a.png", "b.png", "c.tif"]
    assert inputs.videos is None and inputs.frames is None


def test_the_out_folder_inside_src_is_left_out(tmp_path):
    image(tmp_path / "a.png")
    image(tmp_path / "det" / "images" / "a.png")  # annotated copies of an earlier run
    image(tmp_path / "detx" / "b.png")  # a sibling whose name starts like the out folder
    assert list_inputs(tmp_path, tmp_path / "det").names == ["a.png", "detx/b.png"]
    assert list_inputs(tmp_path, tmp_path / "elsewhere").names == ["a.png", "det/images/a.png", "detx/b.png"]


def test_a_single_file_is_taken_as_it_is(tmp_path):
    path = image(tmp_path / "sub" / "one.jpg")
    assert list_inputs(path, tmp_path / "out") == Inputs(tmp_path / "sub", ["one.jpg"])


def test_sequence_mode_groups_frames_by_video_folder(tmp_path):
    for name in ("v2/f1.png", "v2/f0.png", "v10/f0.png", "still.png", "a/b/f0.png", "a/b/f1.png", "a/f0.png"):
        image(tmp_path / name)
    inputs = list_inputs(tmp_path, tmp_path / "out", sequence=True)
    assert list(zip(inputs.names, inputs.videos, inputs.frames, strict=True)) == [
        ("still.png", ".", 0),
        ("a/f0.png", "a", 0),
        ("a/b/f0.png", "a/b", 0),
        ("a/b/f1.png", "a/b", 1),
        ("v10/f0.png", "v10", 0),
        ("v2/f0.png", "v2", 0),
        ("v2/f1.png", "v2", 1),
    ]


def test_listing_errors_say_what_to_give(tmp_path):
    with pytest.raises(LstmdetError, match="does not exist; give an image or video file, or a folder of them"):
        list_inputs(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(LstmdetError, match=r"no image or video files in .*empty \(extensions \.jpg, \.jpeg.*\.mp4"):
        list_inputs(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(LstmdetError, match="--sequence needs a folder"):
        list_inputs(image(tmp_path / "one.png"), tmp_path / "out", sequence=True)


def test_video_files_are_listed_apart_after_the_images(tmp_path):
    for name in ("b.png", "still.gif", "a/f.jpg"):
        image(tmp_path / name)
    frames = [Image.fromarray(np.full((8, 8, 3), 40 * t, np.uint8)) for t in range(3)]
    frames[0].save(tmp_path / "a" / "moving.gif", save_all=True, append_images=frames[1:], duration=100)
    for name in ("z.mp4", "c.MKV", "a/d.webm", "e.avi", "f.mov", "g.m4v"):
        (tmp_path / name).write_bytes(b"")  # listed by extension; reading them is the engine's business
    inputs = list_inputs(tmp_path, tmp_path / "out")
    assert inputs.names == ["a/f.jpg", "b.png", "still.gif"]
    assert inputs.video_files == ["a/d.webm", "a/moving.gif", "c.MKV", "e.avi", "f.mov", "g.m4v", "z.mp4"]
    assert inputs.files == inputs.names + inputs.video_files
    one = list_inputs(tmp_path / "z.mp4", tmp_path / "out", sequence=True)  # a video file is a sequence
    assert (one.root, one.names, one.video_files) == (tmp_path, [], ["z.mp4"])
    only = tmp_path / "only"
    (only / "clips").mkdir(parents=True)
    (only / "clips" / "v.mp4").write_bytes(b"")
    for sequence in (False, True):
        assert list_inputs(only, tmp_path / "out", sequence=sequence).files == ["clips/v.mp4"]


def test_sequence_mode_refuses_a_folder_without_video_sub_folders(tmp_path):
    for name in ("f0.png", "f1.png"):
        image(tmp_path / "flat" / name)
    with pytest.raises(LstmdetError, match=r"--sequence wants one sub-folder of frames per video, but .*flat has none"):
        list_inputs(tmp_path / "flat", tmp_path / "out", sequence=True)
    assert len(list_inputs(tmp_path / "flat", tmp_path / "out").names) == 2  # without --sequence: fine


# --- decoding -------------------------------------------------------------------------------------------------------


def test_a_readable_file_becomes_a_float_image_and_its_size(tmp_path):
    path = image(tmp_path / "a.png", height=12, width=16, seed=3)
    pixels = np.array(Image.open(path))
    index, tensor, error, size = ImageFiles(tmp_path, ["a.png"], max_pixels=10_000)[0]
    assert (index, error, size) == (0, None, (12, 16))
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 12, 16)
    assert torch.equal(tensor, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)


def test_uint8_images_are_left_for_the_gpu_to_convert(tmp_path):
    path = image(tmp_path / "a.png", seed=4)
    _, tensor, _, _ = ImageFiles(tmp_path, ["a.png"], max_pixels=10_000, uint8=True, fit=(8, 8))[0]
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 12, 16)  # not resized: the model does it
    assert torch.equal(tensor, torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1))


def test_fit_resizes_float_images_to_the_models_input(tmp_path):
    image(tmp_path / "wide.png", height=20, width=60)
    image(tmp_path / "tall.png", height=60, width=20)
    files = ImageFiles(tmp_path, ["wide.png", "tall.png"], max_pixels=10_000, fit=(10, 24))
    (_, wide, _, wide_size), (_, tall, _, tall_size) = files[0], files[1]
    assert (tuple(wide.shape), wide_size) == ((3, 8, 24), (20, 60))  # the longer side capped at 24
    assert (tuple(tall.shape), tall_size) == ((3, 24, 8), (60, 20))


def test_an_unreadable_file_becomes_its_reason(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not a picture")
    image(tmp_path / "big.png", height=50, width=50)
    files = ImageFiles(tmp_path, ["empty.png", "text.jpg", "big.png", "gone.png"], max_pixels=1000)
    assert len(files) == 4
    reasons = [files[i] for i in range(4)]
    assert [(i, t, s) for i, t, _, s in reasons] == [(0, None, None), (1, None, None), (2, None, None), (3, None, None)]
    assert "empty (0 bytes)" in reasons[0][2]
    assert "not an image" in reasons[1][2]
    assert "2,500 pixels exceeds the limit of 1,000" in reasons[2][2]
    assert reasons[3][2]  # a file that vanished after listing: a reason, not a crash


def test_a_batch_stays_a_list_of_items():
    items = [(0, None, "x", None), (1, None, "y", None)]
    assert as_list(items) is items


# --- batches --------------------------------------------------------------------------------------------------------


def names(count: int) -> list[str]:
    return [f"f{i}.png" for i in range(count)]


def test_batches_are_fixed_slices_of_the_input_order():
    inputs = Inputs(Path("."), names(7))
    assert list(Plan(inputs, 3, set(), by_video=False)) == [[0, 1, 2], [3, 4, 5], [6]]


def test_a_resume_skips_only_batches_that_are_wholly_done():
    inputs = Inputs(Path("."), names(7))
    done = {"f0.png", "f1.png", "f2.png", "f3.png", "f6.png"}
    assert list(Plan(inputs, 3, done, by_video=False)) == [[3, 4, 5]]  # f3 is redone with its batch mates
    assert list(Plan(inputs, 3, set(names(7)), by_video=False)) == []


def test_by_video_batches_never_cross_a_video_and_a_video_is_redone_whole():
    videos = ["a"] * 5 + ["b"] * 2 + ["c"] * 3
    inputs = Inputs(Path("."), names(10), videos, [0, 1, 2, 3, 4, 0, 1, 0, 1, 2])
    assert list(Plan(inputs, 2, set(), by_video=True)) == [[0, 1], [2, 3], [4], [5, 6], [7, 8], [9]]
    done = set(names(10)) - {"f3.png"}  # one frame of video a missing: all of a again
    assert list(Plan(inputs, 2, done, by_video=True)) == [[0, 1], [2, 3], [4]]
    # without by_video (a stateless model), batches are plain slices across videos
    assert list(Plan(inputs, 4, set(), by_video=False)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_dead_loader_process_becomes_an_error_that_says_what_to_do():
    def loader():
        yield [(0, None, "x", None)]
        raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed.")

    got = batches(loader())
    assert next(got) == [(0, None, "x", None)]
    with pytest.raises(LstmdetError, match=r"image-decoding process died .* --resume and fewer --workers"):
        next(got)


def test_other_loader_errors_pass_through():
    def loader():
        raise RuntimeError("CUDA out of memory")
        yield

    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        list(batches(loader()))
