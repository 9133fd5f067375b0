"""Feature-level names and the ``levels`` option, read the same way by config and backbones."""

from __future__ import annotations

import pytest

from lstmdet.errors import ConfigError, OptionError
from lstmdet.levels import level_name, parse_levels


def test_level_name_is_c_and_the_log2_of_the_stride():
    assert [level_name(s) for s in (1, 2, 8, 32)] == ["c0", "c1", "c3", "c5"]
    for bad in (0, 3, 12, -8, 8.0, True):
        with pytest.raises(ValueError, match="power of two"):
            level_name(bad)


def test_parse_levels_forms_and_defaults():
    assert parse_levels(None, "levels", "x backbone") is None
    assert parse_levels(None, "levels", "x backbone", default=("c3", "c4")) == ["c3", "c4"]
    assert parse_levels("c4", "levels", "x backbone") == ["c4"]
    assert parse_levels(("c4", "c3"), "levels", "x backbone") == ["c4", "c3"]  # order kept; the backbone sorts


@pytest.mark.parametrize("bad", [[], [3], 7, ["c3", "c3"], {"c3": 1}])
def test_parse_levels_refuses_other_forms_naming_owner_and_option(bad):
    with pytest.raises(OptionError, match=r"^small_cnn backbone: levels must be a non-empty list of level names"):
        parse_levels(bad, "levels", "small_cnn backbone")


def test_config_levels_are_config_errors_on_the_field():
    with pytest.raises(ConfigError, match=r"config field model\.encoder\.levels: must be a non-empty list") as info:
        parse_levels([], "model.encoder.levels")
    assert info.value.field == "model.encoder.levels"
