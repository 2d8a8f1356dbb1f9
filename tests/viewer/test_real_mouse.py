"""Window/level and preset shortcuts with real X input events (xdotool on Xvfb), not Python calls.

Runs scripts/check_mouse_xdotool.py once (its own Xvfb and viewer, about a minute and a half) and
checks its verdict against the viewer's own constants. Skipped where xdotool or Xvfb is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_mouse_xdotool.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("xdotool") is None, reason="needs xdotool (apt-get install -y xdotool)"),
    pytest.mark.skipif(shutil.which("Xvfb") is None, reason="needs Xvfb (apt-get install -y xvfb)"),
]


@pytest.fixture(scope="module")
def verdict(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("xdotool")
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"the check printed no JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    assert "error" not in result, f"{result['error']} (viewer log: {out / 'viewer.log'})"
    return {c["name"]: c for c in result["checks"]}


def _show(check: dict) -> str:
    return json.dumps(check, indent=1)


def test_right_drag_sets_window_and_level_and_nothing_else(verdict):
    from hyperct_viewer.layers import WL_HU_PER_PIXEL

    c = verdict["right_drag_on_image"]
    assert c["new_drag_presses"] == [2], _show(c)  # the callback saw one right-button press
    (lo, hi), (dx, dy) = c["limits_before"], c["move_px"]
    width, level = hi - lo + WL_HU_PER_PIXEL * dx, (lo + hi) / 2 - WL_HU_PER_PIXEL * dy
    assert c["limits_after"] == pytest.approx([level - width / 2, level + width / 2]), _show(c)
    # napari's camera zooms on a right drag unless the callback marks the moves handled
    assert c["zoom_after"] == pytest.approx(c["zoom_before"]), _show(c)
    assert c["center_after"] == pytest.approx(c["center_before"]), _show(c)
    assert not c["new_errors"], _show(c)


def test_right_click_without_drag_changes_nothing(verdict):
    c = verdict["right_click_no_drag"]
    assert c["limits_after"] == c["limits_before"] and c["zoom_after"] == c["zoom_before"], _show(c)
    assert not c["new_errors"], _show(c)


@pytest.mark.parametrize(
    "name", ["key_mediastinum", "key_bone", "key_lung", "key_mediastinum_focus_on_layer_list"]
)
def test_preset_shortcut_keys(verdict, name):
    from hyperct_viewer.layers import window_limits

    c = verdict[name]
    assert not c["new_errors"], _show(c)  # a key press that raises in napari's key handler does nothing
    assert c["limits_after"] == pytest.approx(list(window_limits(c["preset"]))), _show(c)


def test_left_drag_still_pans(verdict):
    c = verdict["left_drag_pans"]
    assert c["center_after"] != pytest.approx(c["center_before"]), _show(c)
    assert c["limits_after"] == c["limits_before"], _show(c)


def test_right_drag_off_the_image_is_harmless(verdict):
    outside, dock = verdict["right_drag_outside_image"], verdict["right_drag_on_dock"]
    assert outside["outside_image"] and not outside["new_errors"], _show(outside)
    assert outside["zoom_after"] == pytest.approx(outside["zoom_before"]), _show(outside)
    assert dock["limits_after"] == dock["limits_before"] and not dock["new_errors"], _show(dock)
