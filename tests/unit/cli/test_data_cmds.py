"""``lstmdet data``: generated datasets written as COCO."""

from __future__ import annotations

import pytest

from lstmdet.cli.main import main


@pytest.mark.parametrize("action", ["digits-det", "digits-video"])
def test_help_documents_the_default_split(action, capsys):
    with pytest.raises(SystemExit):
        main(["data", action, "--help"])
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
