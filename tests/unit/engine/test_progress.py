"""Progress displays (lstmdet.engine.progress): a live bar on a terminal, plain lines anywhere else."""

from __future__ import annotations

import io
import re

import numpy as np
from helpers import save_tiny
from PIL import Image
from tqdm import tqdm

import lstmdet
from lstmdet.engine.progress import PlainProgress, is_terminal, progress


class FakeTty(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class Clock:
    """A fake monotonic clock advanced by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_terminal_gets_a_live_bar_redrawn_in_place():
    stream = FakeTty()
    bar = progress(total=5, desc="detect", unit="images", stream=stream)
    assert isinstance(bar, tqdm)
    for _ in range(5):
        bar.update()
    bar.close()
    text = stream.getvalue()
    assert "\r" in text and "detect" in text and "5/5" in text and "images/s" in text


def test_anything_else_gets_plain_lines_every_tenth_without_carriage_returns():
    stream, clock = io.StringIO(), Clock()
    bar = progress(total=1000, desc="digits-det", unit="images", stream=stream)
    assert isinstance(bar, PlainProgress)
    bar = PlainProgress(total=1000, desc="digits-det", unit="images", stream=stream, clock=clock)
    with bar:
        for _ in range(1000):
            clock.now += 0.1
            bar.update()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 10
    assert lines[0] == "digits-det: 100/1000 images (10%), 10.0 images/s, 90 s left"
    assert lines[-1] == "digits-det: 1000/1000 images (100%), 10.0 images/s"


def test_plain_lines_come_every_so_many_seconds_when_the_total_is_unknown_or_far():
    stream, clock = io.StringIO(), Clock()
    bar = PlainProgress(total=None, desc="eval", unit="items", stream=stream, every_seconds=30, clock=clock)
    for _ in range(7):
        clock.now += 10
        bar.update(2)
    bar.close()  # a last line for what advanced since the previous one
    assert stream.getvalue().splitlines() == [
        "eval: 6 items, 0.2 items/s",
        "eval: 12 items, 0.2 items/s",
        "eval: 14 items, 0.2 items/s",
    ]


def test_plain_lines_carry_the_postfix_and_count_from_a_resumed_start():
    stream, clock = io.StringIO(), Clock()
    batches = PlainProgress(range(4), desc="epoch 1/2", unit="batches", initial=6, total=10, stream=stream, clock=clock)
    for _ in batches:
        clock.now += 1
        batches.set_postfix(loss="0.5000", img_s="8.0")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "epoch 1/2: 7/10 batches (70%), 1.0 batches/s, 3 s left, loss=0.5000, img_s=8.0"
    assert lines[-1] == "epoch 1/2: 10/10 batches (100%), 1.0 batches/s, loss=0.5000, img_s=8.0"
    assert len(lines) == 4


def test_a_disabled_display_prints_nothing():
    for stream in (io.StringIO(), FakeTty()):
        with progress(total=3, desc="x", unit="images", enabled=False, stream=stream) as bar:
            bar.update(3)
        assert stream.getvalue() == ""


def test_closed_and_plain_streams_are_not_terminals(tmp_path):
    closed = (tmp_path / "log").open("w")
    closed.close()  # isatty() now raises ValueError
    assert not is_terminal(closed) and not is_terminal(io.StringIO()) and not is_terminal(object())
    assert is_terminal(FakeTty())


def test_detect_logs_plain_lines_when_stderr_is_not_a_terminal(tmp_path, capfd):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(src / f"{i}.png")
    lstmdet.detect(src, tmp_path / "out", save_tiny(tmp_path / "m.pt"), workers=0, batch_size=2)
    err = capfd.readouterr().err
    assert "\r" not in err
    assert re.search(r"^detect: 5/5 images \(100%\), [\d.]+ images/s$", err, re.MULTILINE), err
