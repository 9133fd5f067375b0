"""``lstmdet data``: generated datasets on disk, with progress that reads well in a log file."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from helpers import LSTMDET_BIN

from lstmdet.cli.main import main


def test_digits_det_logs_plain_progress_lines_when_stderr_is_a_file(tmp_path):
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        done = subprocess.run(
            [str(LSTMDET_BIN), "data", "digits-det", str(tmp_path / "scenes"), "--images", "20", "--size", "48"],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
        )  # fmt: skip
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text
    lines = [line for line in text.splitlines() if line.startswith("digits-det: ")]
    assert len(lines) == 10, text  # one line per tenth of the images
    assert re.fullmatch(r"digits-det: 2/20 images \(10%\), [\d.]+ images/s, \d+ s left", lines[0]), lines[0]
    assert re.fullmatch(r"digits-det: 20/20 images \(100%\), [\d.]+ images/s", lines[-1]), lines[-1]
    assert done.stdout.startswith("wrote 20 images")
    assert len(json.loads((tmp_path / "scenes" / "annotations.json").read_text())["images"]) == 20


@pytest.mark.parametrize("action", ["digits-det", "digits-video"])
def test_help_documents_the_default_split(action, capsys):
    assert main(["data", action, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "train (default)" in text


@pytest.mark.parametrize(
    ("action", "big", "small", "files"),
    [
        ("digits-det", ["--images", "3"], ["--images", "2"], 2),
        ("digits-video", ["--clips", "2", "--frames", "2"], ["--clips", "1", "--frames", "2"], 2),
    ],
)
def test_an_earlier_generation_is_refused_or_replaced_never_mixed(action, big, small, files, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", action, str(out), "--size", "32", *big]) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["data", action, str(out), "--size", "32", *small]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty" in err and "--exist-ok" in err
    assert main(["data", action, str(out), "--size", "32", *small, "--exist-ok"]) == 0
    assert len([p for p in (out / "images").rglob("*.png")]) == files  # none left from the first generation
    assert (out / "notes.txt").read_text() == "mine"
