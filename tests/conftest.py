"""Shared pytest setup: GUI tests run only with a display (pytest-xvfb provides one when Xvfb exists)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HYPERCT_NO_PROGRESS", "1")
# the shared helpers' asserts (e.g. tests.support.dicom.assert_matches_phantom) report values too
pytest.register_assert_rewrite("tests.support")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("CI"):
        return  # in CI the GUI tests must run (under Xvfb): never skip them there
    skip = pytest.mark.skip(reason="GUI test needs a display: install xvfb (pytest-xvfb then starts it)")
    for item in items:
        if "gui" in item.keywords:
            item.add_marker(skip)
