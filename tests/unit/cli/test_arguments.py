"""Value types of the CLI's options: messages name what was expected and what was given."""

from __future__ import annotations

import argparse

import pytest

from lstmdet.cli.arguments import (
    Parser,
    non_negative_int,
    non_negative_number,
    positive_int,
    positive_number,
    unit_interval,
)


@pytest.mark.parametrize(
    ("kind", "good", "bad", "expected"),
    [
        (positive_int, {"1": 1, "12": 12}, ["0", "-1", "x", "1.5", ""], "a positive integer"),
        (non_negative_int, {"0": 0, "3": 3}, ["-1", "x", "2.0"], "an integer >= 0"),
        (positive_number, {"0.5": 0.5, "2": 2.0}, ["0", "-1", "nan", "inf", "x"], "a number > 0"),
        (non_negative_number, {"0": 0.0, "1.5": 1.5}, ["-0.1", "nan", "x"], "a number >= 0"),
        (unit_interval, {"0": 0.0, "1": 1.0, "0.25": 0.25}, ["1.5", "-0.1", "nan", "x"], "a number in [0, 1]"),
    ],
)
def test_types_accept_and_refuse(kind, good, bad, expected):
    for text, value in good.items():
        assert kind(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError) as info:
            kind(text)
        assert str(info.value) == f"expected {expected}, got {text!r}"


def test_parser_reports_one_line_with_the_flag(capsys):
    parser = Parser(prog="lstmdet demo")
    parser.add_argument("--images", type=positive_int, default=1)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--images", "x"])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "lstmdet demo: error: --images: expected a positive integer, got 'x'; see `lstmdet demo --help`\n"
    )
    subparsers = parser.add_subparsers(dest="command")
    assert isinstance(subparsers.add_parser("sub"), Parser)
