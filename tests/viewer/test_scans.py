"""Results belong to the scan they were computed for (issues 14 and 16), under Xvfb.

Two scans of different shapes (40 and 32 slices), so any score or map of one that reached the
other would show in shapes, probabilities or the export's input block.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from hyperct.results import SCORED_CALLS
from hyperct_viewer.layers import ct_layer_data, volume_of
from tests.support.volumes import small_ct

pytestmark = pytest.mark.gui


def _two_scans(findings_widget):
    viewer, widget = findings_widget
    layers = []
    for n, seed, name in ((40, 0, "scan A"), (32, 1, "scan B")):
        data, kwargs, _ = ct_layer_data(small_ct(n, seed=seed, description=name))
        layers.append(viewer.add_image(data, **kwargs).__wrapped__)  # the layer, not napari's proxy
    return widget.viewer, widget, *layers


def _idle(widget, qtbot):
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=120000)
    qtbot.wait(20)  # let queued signals of the finished job arrive


def _table_probs(widget) -> dict:
    from hyperct_viewer.widgets.findings import COL_PROB, ROLE_VALUE

    return {fid: item.data(COL_PROB, ROLE_VALUE) for fid, item in widget._items.items()}


def _assert_shows(widget, viewer, layer):
    """The widget, the session, the table and the overlay all belong to ``layer``'s scan."""
    vol = volume_of(layer)
    store = widget.results_of(layer)
    assert widget.ct_layer is layer and widget.session.volume is vol and widget.session.ct_layer is layer
    assert widget.session.result is store.result
    probs = _table_probs(widget)
    if store.result is None:
        assert all(p is None for p in probs.values())
        assert not any(b.isEnabled() for b in widget.export_buttons.values())
    else:
        assert probs == {f.id: f.probability for f in store.result.findings}
    visible = [ly for ly in viewer.layers if ly.visible]
    assert layer in visible
    for other in widget.ct_layers():
        if other is not layer:
            assert other not in visible  # no other scan covers this one (or its overlay)
            ov = widget.results_of(other).overlay
            assert ov is None or not ov.visible
    ov = widget.overlay
    if ov is not None:
        assert ov.data.shape == vol.shape
        np.testing.assert_allclose(ov.extent.world, layer.extent.world)
        assert viewer.layers.index(ov) == viewer.layers.index(layer) + 1  # right above its own CT


def test_two_scans_keep_their_own_table_overlay_and_export(findings_widget, qtbot, tmp_path):
    viewer, widget, a, b = _two_scans(findings_widget)
    # a new scan becomes the selected one and hides the first (its overlay is not left under it)
    assert widget.ct_layer is b and not a.visible
    assert [widget.layer_combo.itemText(i) for i in range(2)] == [a.name, b.name]

    widget.select_scan(a)
    with qtbot.waitSignal(widget.saliency_shown, timeout=120000):
        widget.analyze()
    _idle(widget, qtbot)
    _assert_shows(widget, viewer, a)
    fid = widget.session.selected
    widget.select_scan(b)
    _assert_shows(widget, viewer, b)  # not analysed: empty table, no overlay, no export
    with pytest.raises(RuntimeError, match="Analyze"):
        widget.export_files(("json",), tmp_path / "none")
    with qtbot.waitSignal(widget.saliency_shown, timeout=120000):
        widget.analyze()
    _idle(widget, qtbot)
    _assert_shows(widget, viewer, b)
    assert widget.session.selected == fid and widget.overlay is not None

    ra, rb = widget.results_of(a).result, widget.results_of(b).result
    assert ra is not rb and [f.probability for f in ra.findings] != [f.probability for f in rb.findings]
    for i, (layer, n_slices) in enumerate(
        ((a, 40), (b, 32), (a, 40))
    ):  # back and forth: nothing is recomputed or lost
        widget.select_scan(layer)
        _idle(widget, qtbot)
        _assert_shows(widget, viewer, layer)
        assert widget.overlay is not None and widget.overlay.data.shape[0] == n_slices
        out = tmp_path / f"export{i}"
        written = widget.export_files(("json",), out)
        doc = json.loads(written["json"].read_text())
        assert doc["input"]["slices"] == n_slices
        probs = {f["id"]: f["probability"] for f in doc["findings"]}
        expect = widget.results_of(layer).result
        assert probs == pytest.approx({f.id: f.probability for f in expect.findings})
    assert widget.results_of(a).result is ra and widget.results_of(b).result is rb

    # selecting a CT layer in napari's layer list selects the scan in the widget too
    viewer.layers.selection.active = b
    assert widget.ct_layer is b
    viewer.layers.selection.active = widget.results_of(a).overlay
    assert widget.ct_layer is a


def test_switching_scan_while_analyze_and_all_findings_run_never_mixes_scans(
    findings_widget, qtbot, tmp_path
):
    from hyperct.report import saliency_for_export

    viewer, widget, a, b = _two_scans(findings_widget)
    widget.select_scan(a)
    assert widget.analyze() is not None  # loads the model, then analyses scan A ...
    widget.select_scan(b)  # ... while the user looks at scan B
    assert widget.jobs.busy and widget.layer_combo.isEnabled()
    _idle(widget, qtbot)
    _assert_shows(widget, viewer, b)
    assert widget.results_of(b).result is None and widget.overlay is None
    ra = widget.results_of(a).result
    assert ra is not None and ra.input["slices"] == 40  # A's scores stayed with A

    with qtbot.waitSignal(widget.saliency_shown, timeout=120000):
        widget.analyze()  # B's own analysis
    _idle(widget, qtbot)
    rb = widget.results_of(b).result
    assert rb.input["slices"] == 32
    b_maps_before = {m: set(s.model_maps) for m, s in widget.results_of(b).maps.items()}

    widget.select_scan(a)
    _idle(widget, qtbot)  # the map of the selected finding, computed for A now
    _assert_shows(widget, viewer, a)
    assert widget.overlay.data.shape == volume_of(a).shape
    assert widget.compute_all_saliency() is not None  # all findings of A ...
    widget.select_scan(b)  # ... while the user switches to B
    _idle(widget, qtbot)
    _assert_shows(widget, viewer, b)
    # A got every scored finding's map, B none of them
    a_maps = widget.results_of(a).maps[widget.saliency_method]
    assert a_maps.source_shape == volume_of(a).shape
    assert set(a_maps.model_maps) == {f.id for f in ra.findings if f.call in SCORED_CALLS}
    b_store = widget.results_of(b)
    assert {m: set(s.model_maps) for m, s in b_store.maps.items()} == b_maps_before
    assert all(s.source_shape == volume_of(b).shape for s in b_store.maps.values())

    # B's export: B's scores, B's input, and saliency peaks of B's own maps
    written = widget.export_files(("json",), tmp_path / "b")
    doc = json.loads(written["json"].read_text())
    assert doc["input"]["slices"] == 32
    assert {f["id"]: f["probability"] for f in doc["findings"]} == pytest.approx(
        {f.id: f.probability for f in rb.findings}
    )
    own = saliency_for_export(widget.session.model, volume_of(b), rb)
    for f in doc["findings"]:
        if f["saliency"] is not None:
            assert tuple(f["saliency"]["peak_index"]) == own.peak_index(f["id"])


def test_cancel_then_switch_drops_the_job_and_keeps_the_scan_clean(findings_widget, qtbot):
    viewer, widget, a, b = _two_scans(findings_widget)
    failed = []
    widget.job_failed.connect(failed.append)
    widget.select_scan(a)
    widget.analyze()
    widget.cancel()
    widget.select_scan(b)
    _idle(widget, qtbot)
    assert widget.results_of(a).result is None and widget.results_of(b).result is None
    assert not failed and widget.analyze_button.isEnabled()


def test_closing_the_scan_being_analysed_leaves_the_other_untouched(findings_widget, qtbot):
    viewer, widget, a, b = _two_scans(findings_widget)
    failed = []
    widget.job_failed.connect(failed.append)
    widget.select_scan(a)
    widget.analyze()
    viewer.layers.remove(a)
    assert widget.ct_layer is b and b.visible
    _idle(widget, qtbot)
    assert not failed and widget.results_of(b).result is None and widget.result is None
    assert all(p is None for p in _table_probs(widget).values())
