"""Findings widget mechanics with a tiny random model (GUI, under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from hyperct_viewer.layers import ct_layer_data, window_limits
from tests.viewer.conftest import small_ct

pytestmark = pytest.mark.gui


def _widget(make_napari_viewer_proxy, tiny_checkpoint):
    from hyperct_viewer.widgets.findings import FindingsWidget

    viewer = make_napari_viewer_proxy()
    widget = FindingsWidget(viewer)
    widget.device_combo.setCurrentText("CPU")
    widget.set_model_dirs(str(tiny_checkpoint))
    return viewer, widget


def test_ct_layer_has_mm_geometry_lung_window_and_metadata(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    vol = small_ct()
    data, kwargs, kind = ct_layer_data(vol)
    layer = viewer.add_layer(__import__("napari").layers.Layer.create(data, kwargs, kind))
    assert tuple(layer.scale) == vol.spacing
    assert tuple(layer.translate) == vol.napari_translate
    assert tuple(layer.contrast_limits) == window_limits("lung") == (-1350.0, 150.0)
    assert layer.metadata["header"]["SeriesDescription"] == "small synthetic"
    assert [str(u) for u in layer.units] == ["millimeter"] * 3


def test_analyze_fills_table_and_selecting_shows_saliency_on_the_ct_grid(
    make_napari_viewer_proxy, tiny_checkpoint, qtbot
):
    viewer, widget = _widget(make_napari_viewer_proxy, tiny_checkpoint)
    vol = small_ct()
    data, kwargs, _ = ct_layer_data(vol)
    ct = viewer.add_image(data, **kwargs)
    assert widget.layer_combo.currentText() == ct.name and widget.session.volume is vol

    with qtbot.waitSignal(widget.saliency_shown, timeout=60000):
        widget.analyze()  # the top finding is auto-selected when the analysis ends
    result = widget.session.result
    assert result is not None and len(result.findings) == 25
    probs = [widget._items[f.id].data(1, widget_role()) for f in result.findings]
    assert all(0 <= p <= 1 for p in probs)
    top = max(result.findings, key=lambda f: f.probability)
    assert widget.session.selected == top.id

    with qtbot.waitSignal(widget.saliency_shown, timeout=60000):
        widget.select_finding("pleural_effusion")
    sal = [ly for ly in viewer.layers if ly.name.startswith("Saliency:")]
    assert len(sal) == 1 and sal[0].name == "Saliency: Pleural effusion"
    layer = sal[0]
    assert layer.data.shape == ct.data.shape
    np.testing.assert_allclose(layer.extent.world, ct.extent.world)
    # low saliency is transparent, so the anatomy stays visible; nothing is drawn in the air
    assert layer.blending == "translucent"
    assert layer.colormap.map(np.array([0.0, 0.2]))[:, 3].max() == 0 and layer.colormap.map(np.array([1.0]))[0, 3] > 0.5
    assert layer.data[np.asarray(vol.hu) < -990].max() == 0 and layer.data.max() == pytest.approx(1.0)
    # the view jumped to the map's one peak (the reports' key slice), on every axis
    peak = widget.results_of(ct).maps[widget.saliency_method].peak_index("pleural_effusion")
    for axis in range(3):
        assert viewer.dims.point[axis] == pytest.approx(ct.translate[axis] + peak[axis] * ct.scale[axis])

    widget.opacity_slider.setValue(25)
    assert layer.opacity == pytest.approx(0.25)
    widget.set_window("bone")
    assert tuple(ct.contrast_limits) == window_limits("bone")


def test_cancel_stops_the_analysis_and_leaves_no_result(make_napari_viewer_proxy, tiny_checkpoint, qtbot):
    viewer, widget = _widget(make_napari_viewer_proxy, tiny_checkpoint)
    data, kwargs, _ = ct_layer_data(small_ct())
    viewer.add_image(data, **kwargs)
    assert widget.analyze() is not None
    with qtbot.waitSignal(widget.jobs.busy_changed, timeout=60000, check_params_cb=lambda busy: not busy):
        widget.cancel()
    qtbot.wait(50)
    assert widget.session.result is None and widget.result is None
    assert widget.analyze_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_table_selection_and_session_selection_are_linked(make_napari_viewer_proxy, tiny_checkpoint):
    viewer, widget = _widget(make_napari_viewer_proxy, tiny_checkpoint)
    got = []
    widget.session.finding_selected.connect(got.append)
    widget._items["emphysema"].setSelected(True)
    assert widget.session.selected == "emphysema" and got == ["emphysema"]
    widget.session.select_finding("cardiomegaly")
    assert [i.data(0, 0x0102) for i in widget.table.selectedItems()] or widget._items[
        "cardiomegaly"
    ].isSelected()
    assert widget._items["cardiomegaly"].isSelected() and not widget._items["emphysema"].isSelected()


def widget_role():
    from hyperct_viewer.widgets.findings import ROLE_VALUE

    return ROLE_VALUE
