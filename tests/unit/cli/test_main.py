"""The one place the CLI reports errors: user errors one line and exit 2, bugs a traceback and exit 1."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from lstmdet.cli import inspect_cmds
from lstmdet.cli.main import main


def _boom(args):
    raise RuntimeError("boom: a bug, not a user error")


def test_a_bug_prints_the_traceback_and_exits_1(monkeypatch, capsys):
    monkeypatch.setattr(inspect_cmds, "run_plugins", _boom)
    assert main(["plugins"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RuntimeError: boom" in err
    assert "internal error" in err.splitlines()[-1]


def test_a_bug_exits_1_through_the_console_entry_point():
    """Same rule when the process ends: the status main returns is the exit status."""
    code = (
        "import sys; from lstmdet.cli import inspect_cmds, main\n"
        "def boom(args): raise RuntimeError('boom')\n"
        "inspect_cmds.run_plugins = boom\n"
        "sys.exit(main(['plugins']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: boom" in result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "digits-det", "x", "--images", "x"],
         "lstmdet data digits-det: error: --images: expected a positive integer, got 'x'"),
        (["data", "digits-video", "x", "--frames", "-1"],
         "lstmdet data digits-video: error: --frames: expected a positive integer, got '-1'"),
        (["model", "c.yaml", "--frames", "0"], "lstmdet model: error: --frames: expected a positive integer, got '0'"),
        (["detect", "src", "--out", "o", "--conf", "2"], "lstmdet detect: error: --conf: expected a number in [0, 1]"),
        (["detect", "src", "--out", "o", "--max-pixels", "0"], "lstmdet detect: error: --max-pixels: expected a "),
        (["detect", "src"], "lstmdet detect: error: the following arguments are required: --out"),
        (["nosuch"], "lstmdet: error: COMMAND: invalid choice: 'nosuch'"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line_naming_the_flag(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert "usage:" not in err and "_positive" not in err and "score_thresh" not in err and "max_pixels" not in err


def test_help_and_version_exit_0(capsys):
    assert main(["--help"]) == 0
    assert "usage: lstmdet" in capsys.readouterr().out
    assert main(["detect", "--help"]) == 0
    assert "exit status" in capsys.readouterr().out


def _yolo_with_a_clipped_box(root):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.new("RGB", (40, 30)).save(root / "images" / "a.png")
    (root / "labels" / "a.txt").write_text("0 0.9 0.5 0.5 0.5\n")  # reaches past the right edge
    (root / "names.yaml").write_text("names: [thing]\n")
    return root


def test_lstmdet_warnings_print_as_one_plain_line(tmp_path, capsys):
    src = _yolo_with_a_clipped_box(tmp_path / "yolo")
    assert main(["data", "convert", "yolo", str(src), str(tmp_path / "out.json")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("lstmdet: warning: ") and "clipped" in err[0]
    assert "UserWarning" not in err[0] and ".py:" not in err[0]


def test_lstmdet_warnings_print_as_one_plain_line_from_the_console_script(tmp_path):
    from helpers import run_cli

    src = _yolo_with_a_clipped_box(tmp_path / "yolo")
    result = run_cli("data", "convert", "yolo", str(src), str(tmp_path / "out.json"))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lstmdet: warning: ") and "clipped" in lines[0], lines
