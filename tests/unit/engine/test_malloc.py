"""Allocator tuning for inference: set on glibc, skipped when switched off."""

from __future__ import annotations

import platform

import pytest

from lstmdet.engine import malloc


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(malloc, "_tuned", None)  # the module tunes once per process


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("LSTMDET_MALLOC_TUNING", "0")
    assert malloc.keep_freed_memory() is False


def test_thresholds_are_accepted_by_glibc_and_set_once(monkeypatch):
    monkeypatch.delenv("LSTMDET_MALLOC_TUNING", raising=False)
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert malloc.keep_freed_memory() is glibc  # mallopt returns 1 only for valid parameters and values
    monkeypatch.setenv("LSTMDET_MALLOC_TUNING", "0")
    assert malloc.keep_freed_memory() is glibc  # already decided for this process
