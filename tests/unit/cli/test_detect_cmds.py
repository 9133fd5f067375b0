"""``lstmdet detect`` and ``lstmdet submit detect`` arguments: defaults, documented in --help."""

from __future__ import annotations

import pytest

from lstmdet.cli.detect_cmds import detect_options
from lstmdet.cli.main import build_parser, main


@pytest.mark.parametrize("command", [["detect"], ["submit", "detect"]])
def test_agnostic_nms_reaches_the_detect_options(command):
    args = build_parser().parse_args([*command, "src", "--out", "out", "--agnostic-nms"])
    assert detect_options(args)["agnostic_nms"] is True
    args = build_parser().parse_args([*command, "src", "--out", "out"])
    assert not detect_options(args).get("agnostic_nms")


def test_help_documents_the_defaults(capsys):
    assert main(["detect", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "default 0.25" in text and "--agnostic-nms" in text
