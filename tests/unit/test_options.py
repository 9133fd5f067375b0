"""Option checkers: what they accept, what they convert, and the messages and error types they raise."""

from __future__ import annotations

import math
import pickle
from functools import partial

import numpy as np
import pytest

from lstmdet.errors import ConfigError, LstmdetError, OptionError
from lstmdet.options import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_list,
    check_type,
    is_int,
    is_number,
)


@pytest.mark.parametrize(
    ("value", "bounds", "ok"),
    [
        (3, {}, True),
        (np.int64(3), {"minimum": 1}, True),
        (True, {}, False),
        (3.0, {}, False),
        ("3", {}, False),
        (0, {"minimum": 1}, False),
        (5, {"minimum": 1, "maximum": 5}, True),
        (6, {"minimum": 1, "maximum": 5}, False),
    ],
)
def test_is_int(value, bounds, ok):
    assert is_int(value, **bounds) is ok


@pytest.mark.parametrize(
    ("value", "bounds", "ok"),
    [
        (0.5, {}, True),
        (2, {}, True),
        (np.float32(0.5), {"low": 0, "high": 1}, True),
        (False, {}, False),
        (math.nan, {}, False),
        (math.inf, {}, False),
        ("0.5", {}, False),
        (0.0, {"low": 0.0}, True),
        (0.0, {"low": 0.0, "low_open": True}, False),
        (1.0, {"high": 1.0}, True),
        (1.0, {"high": 1.0, "high_open": True}, False),
    ],
)
def test_is_number(value, bounds, ok):
    assert is_number(value, **bounds) is ok


def test_check_int_returns_an_int_and_names_owner_option_value_and_range():
    assert check_int(np.int64(4), "size", "digits_det", minimum=4) == 4
    assert type(check_int(np.int64(4), "size", "digits_det")) is int
    with pytest.raises(OptionError) as info:
        check_int(0, "hidden", "lstm encoder", minimum=1)
    assert str(info.value) == "lstm encoder: hidden must be a positive integer, got 0"
    assert (info.value.owner, info.value.option) == ("lstm encoder", "hidden")
    assert isinstance(info.value, ValueError) and isinstance(info.value, LstmdetError)
    with pytest.raises(OptionError, match=r"^fcos head: num_convs must be an integer >= 0, got -1$"):
        check_int(-1, "num_convs", "fcos head", minimum=0)
    with pytest.raises(OptionError, match=r"must be an integer in \[1, 3\], got 4"):
        check_int(4, "n", "x", minimum=1, maximum=3)
    with pytest.raises(OptionError, match=r"must be an integer <= 3, got 4"):
        check_int(4, "n", "x", maximum=3)
    with pytest.raises(OptionError, match=r"must be an integer, got True"):
        check_int(True, "n", "x")


def test_without_owner_the_option_is_a_config_field():
    with pytest.raises(ConfigError) as info:
        check_int(0, "model.neck.channels", minimum=1)
    assert info.value.field == "model.neck.channels"
    assert str(info.value) == "config field model.neck.channels: must be a positive integer, got 0"
    with pytest.raises(ConfigError, match=r"^config field task: must be one of classify, detect, got 'segment'$"):
        check_choice("segment", "task", choices=("classify", "detect"))
    with pytest.raises(
        OptionError, match=r"^lstm encoder: scan must be one of rows, cols, both, got 'row' \(did you mean 'rows'\?\)$"
    ):
        check_choice("row", "scan", "lstm encoder", choices=("rows", "cols", "both"))


def test_check_float_bounds_and_messages():
    assert check_float(1, "score_thresh", "fcos head", low=0.0, high=1.0) == 1.0
    assert isinstance(check_float(1, "score_thresh", "fcos head"), float)
    cases = [
        ({"low": 0.0, "high": 1.0}, 1.5, r"a number in \[0, 1\], got 1\.5"),
        ({"low": 0.0, "high": 1.0, "high_open": True}, 1.0, r"a number in \[0, 1\), got 1\.0"),
        ({"low": 0.0, "high": 1.0, "low_open": True}, 0, r"a number in \(0, 1\], got 0"),
        ({"low": 0.0, "low_open": True}, -2.0, r"a number > 0, got -2\.0"),
        ({"low": 0.1}, 0.05, r"a number >= 0\.1, got 0\.05"),
        ({"high": 2.0, "high_open": True}, 2.0, r"a number < 2, got 2\.0"),
        ({}, math.inf, r"a number, got inf"),
        ({}, "1", r"a number, got '1'"),
    ]
    for bounds, value, message in cases:
        with pytest.raises(OptionError, match=rf"^head: opt must be {message}$"):
            check_float(value, "opt", "head", **bounds)


def test_check_choice_lists_the_choices_and_adds_the_hint():
    assert check_choice("rows", "scan", "lstm encoder", choices=("rows", "cols")) == "rows"
    with pytest.raises(OptionError, match=r"^lstm encoder: scan must be one of rows, cols, got 'diag'$"):
        check_choice("diag", "scan", "lstm encoder", choices=("rows", "cols"))
    with pytest.raises(OptionError, match=r"got None; 'rows' sweeps rows$"):
        check_choice(None, "scan", "lstm encoder", choices=("rows",), hint="'rows' sweeps rows")
    with pytest.raises(OptionError, match="one of rows"):
        check_choice(["rows"], "scan", "lstm encoder", choices=("rows",))  # unhashable values are refused too


def test_check_bool_refuses_numbers_and_strings():
    assert check_bool(False, "resume", "train job spec") is False
    for value in (0, 1, "true", None):
        with pytest.raises(OptionError, match=rf"^train job spec: resume must be true or false, got {value!r}$"):
            check_bool(value, "resume", "train job spec")


def test_check_type_names_the_types_and_keeps_bool_apart():
    assert check_type(None, "train.patience", types=(int, type(None))) is None
    with pytest.raises(ConfigError, match=r"train\.patience: must be int or null, got True"):
        check_type(True, "train.patience", types=(int, type(None)))
    assert check_type(True, "train.amp", types=bool) is True
    with pytest.raises(OptionError, match=r"^eval job spec: weights must be a path \(a string\), got None$"):
        check_type(None, "weights", "eval job spec", types=str, what="a path (a string)")


def test_check_list_shapes_items_and_repeats():
    positive = partial(is_number, low=0.0, low_open=True)
    assert check_list((0.5, 2), "aspect_ratios", "retinanet head", of="positive numbers", item=positive) == [0.5, 2]
    for bad in ((), "1.0", (1.0, -2.0), None):
        with pytest.raises(OptionError, match=r"^retinanet head: aspect_ratios must be a non-empty list of positive"):
            check_list(bad, "aspect_ratios", "retinanet head", of="positive numbers", item=positive)
    with pytest.raises(ConfigError, match=r"model\.input\.mean: must be a list of 3 numbers \(R, G, B\), got \[1, 2\]"):
        check_list([1, 2], "model.input.mean", of="numbers (R, G, B)", item=is_number, length=3)
    with pytest.raises(OptionError, match=r"without repeats, got \['c3', 'c3'\]"):
        check_list(["c3", "c3"], "levels", "small_cnn backbone", of="level names", unique=True)


def test_option_error_survives_pickling():
    error = OptionError("fcos head", "score_thresh", "must be a number in [0, 1], got 2")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is OptionError and str(copy) == str(error) and copy.option == "score_thresh"


def test_registry_reports_a_component_option_on_its_config_section():
    from lstmdet.manager import current_registry

    with pytest.raises(ConfigError) as info:
        current_registry().create_from_spec(
            "heads", {"name": "fcos", "score_thresh": 2}, "model.head", 32, 3, context={"feature_info": [("c3", 32, 8)]}
        )
    assert info.value.field == "model.head"
    assert str(info.value) == (
        "config field model.head: fcos: fcos head: score_thresh must be a number in [0, 1], got 2"
    )
