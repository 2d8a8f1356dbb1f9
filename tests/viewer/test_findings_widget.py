"""Findings widget mechanics with a tiny random model (GUI, under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from hyperct_viewer.layers import ct_layer_data, window_limits
from tests.support.volumes import small_ct

pytestmark = pytest.mark.gui


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


def test_analyze_fills_table_and_selecting_shows_saliency_on_the_ct_grid(findings_widget, qtbot):
    viewer, widget = findings_widget
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
    assert (
        layer.colormap.map(np.array([0.0, 0.2]))[:, 3].max() == 0
        and layer.colormap.map(np.array([1.0]))[0, 3] > 0.5
    )
    assert layer.data[np.asarray(vol.hu) < -990].max() == 0 and layer.data.max() == pytest.approx(1.0)
    # the view jumped to the map's one peak (the reports' key slice), on every axis
    peak = widget.results_of(ct).maps[widget.saliency_method].peak_index("pleural_effusion")
    for axis in range(3):
        assert viewer.dims.point[axis] == pytest.approx(ct.translate[axis] + peak[axis] * ct.scale[axis])
    # 1-based in the widget (as in the PDF), with napari's 0-based slider position beside it
    assert (
        f"slice {peak[0] + 1} of {vol.shape[0]} (napari's slider counts from 0: {peak[0]})"
        in widget.status.text()
    )
    assert viewer.dims.current_step[0] == peak[0]

    widget.opacity_slider.setValue(25)
    assert layer.opacity == pytest.approx(0.25)
    widget.set_window("bone")
    assert tuple(ct.contrast_limits) == window_limits("bone")


def test_cancel_stops_the_analysis_and_leaves_no_result(findings_widget, qtbot):
    viewer, widget = findings_widget
    data, kwargs, _ = ct_layer_data(small_ct())
    viewer.add_image(data, **kwargs)
    assert widget.analyze() is not None
    with qtbot.waitSignal(widget.jobs.busy_changed, timeout=60000, check_params_cb=lambda busy: not busy):
        widget.cancel()
    qtbot.wait(50)
    assert widget.session.result is None and widget.result is None
    assert widget.analyze_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_table_selection_and_session_selection_are_linked(findings_widget):
    viewer, widget = findings_widget
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


def test_table_before_analysis_is_in_catalogue_order_conventional_first(make_napari_viewer_proxy):
    from hyperct.findings import GROUP_LABELS, catalogue
    from hyperct_viewer.widgets.findings import FindingsWidget

    widget = FindingsWidget(make_napari_viewer_proxy())
    tree = widget.table
    groups = [tree.topLevelItem(i).text(0) for i in range(tree.topLevelItemCount())]
    assert groups == list(GROUP_LABELS.values()) == ["Conventional", "Opportunistic"]
    names = [
        tree.topLevelItem(i).child(j).text(0)
        for i in range(tree.topLevelItemCount())
        for j in range(tree.topLevelItem(i).childCount())
    ]
    cat = catalogue()
    expect = [f.name for g in GROUP_LABELS for f in cat if f.group == g]
    assert names == expect
    # names may be elided in a narrow dock: the tooltip starts with the full name
    item = widget._items[cat[0].id]
    assert item.toolTip(0).startswith(cat[0].name)


def test_no_valid_score_is_shown_apart_and_gets_no_saliency(findings_widget, qtbot, monkeypatch):
    import hyperct.inference as inference
    from hyperct.results import CALL_NO_SCORE

    real = inference.analysis_steps

    def steps(*args, **kwargs):  # the model gives NaN for emphysema
        result = yield from real(*args, **kwargs)
        f = result["emphysema"]
        f.probability, f.logit, f.call = None, None, CALL_NO_SCORE
        return result

    monkeypatch.setattr(inference, "analysis_steps", steps)
    viewer, widget = findings_widget
    data, kwargs, _ = ct_layer_data(small_ct())
    viewer.add_image(data, **kwargs)
    widget.select_finding("emphysema")  # chosen before the analysis: no map may be asked for it
    widget.analyze()
    qtbot.waitUntil(lambda: widget.result is not None and not widget.jobs.busy, timeout=60000)
    qtbot.wait(20)
    item = widget._items["emphysema"]
    assert item.text(3) == "no valid score" and item.text(1) == "—"
    assert item.text(3) != widget._items["lung_nodule"].text(3)
    assert "not a finite number" in item.toolTip(3)
    assert "no valid score" in widget.status.text()
    assert widget.overlay is None and not widget.jobs.busy
    assert all("emphysema" not in m for m in widget.results_of().maps.values())
    # an unscored row sorts below every scored one
    emph_row = item.parent().indexOfChild(item)
    assert emph_row == item.parent().childCount() - 1


def test_a_finding_with_a_high_specificity_threshold_says_why_in_its_tooltip(
    findings_widget, tiny_checkpoint, tmp_path, qtbot
):
    import shutil

    from hyperct.checkpoint import update_manifest

    ckpt = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    # as `hyperct evaluate --write-thresholds` writes it (an unknown id in it is ignored)
    update_manifest(
        ckpt, threshold_calibration={"high_specificity": {"findings": ["lung_nodule", "not_a_finding"]}}
    )
    viewer, widget = findings_widget
    widget.set_model_dirs(str(ckpt))
    data, kwargs, _ = ct_layer_data(small_ct())
    viewer.add_image(data, **kwargs)
    widget.analyze()
    qtbot.waitUntil(lambda: widget.result is not None and not widget.jobs.busy, timeout=60000)
    nodule, effusion = widget._items["lung_nodule"], widget._items["pleural_effusion"]
    for col in (1, 2, 3):
        assert "99 % specificity" in nodule.toolTip(col) and "did not detect" in nodule.toolTip(col)
        assert "specificity" not in effusion.toolTip(col)
    assert nodule.text(2).endswith(" *") and not effusion.text(2).endswith("*")


def test_export_of_an_existing_file_asks_in_gui_words_and_replaces_it_without_error(
    analysed_widget, qtbot, tmp_path, monkeypatch
):
    from qtpy.QtWidgets import QMessageBox

    viewer, widget = analysed_widget
    widget.out_edit.setText(str(tmp_path))
    first = widget.export_files(("json",), tmp_path)["json"]
    first.write_text("old")
    failed, asked = [], []
    widget.job_failed.connect(failed.append)

    def answer(reply):
        def question(parent, title, text, *args):
            asked.append(title + "\n" + text)
            return reply

        return question

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.No))
    assert widget.export_clicked(("json",)) is None
    assert first.read_text() == "old" and "kept" in widget.status.text()

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Yes))
    worker = widget.export_clicked(("json",))
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=60000)
    qtbot.wait(20)
    assert first.read_text().startswith("{") and not failed
    assert len(asked) == 2 and first.name in asked[0]
    assert all("--overwrite" not in t and "overwrite=True" not in t for t in asked)
    assert widget.status.text().startswith("Exported")


def test_window_presets_have_keyboard_shortcuts(make_napari_viewer_proxy):
    from napari.utils.key_bindings import coerce_keybinding

    from hyperct_viewer.widgets.findings import WINDOW_KEYS, FindingsWidget

    viewer = make_napari_viewer_proxy()
    widget = FindingsWidget(viewer)
    data, kwargs, _ = ct_layer_data(small_ct())
    ct = viewer.add_image(data, **kwargs)
    real = widget.viewer
    for preset, key in WINDOW_KEYS.items():
        real.keymap[coerce_keybinding(key)](real)
        assert tuple(ct.contrast_limits) == window_limits(preset)
        assert key in widget.window_buttons[preset].toolTip()


def test_a_slow_cpu_analysis_says_how_long_it_will_take(findings_widget, qtbot, monkeypatch):
    from hyperct import inference

    viewer, widget = findings_widget
    data, kwargs, _ = ct_layer_data(small_ct())
    viewer.add_image(data, **kwargs)
    monkeypatch.setattr(inference, "estimated_cpu_seconds", lambda loaded, n=25: 600.0)
    seen = []
    widget.progress.valueChanged.connect(lambda *_: seen.append(widget.status.text()))
    widget.analyze()  # loads the model first, then the analysis starts
    qtbot.waitUntil(lambda: any("scoring" in t for t in seen), timeout=60000)
    scoring = [t for t in seen if "scoring" in t]
    assert all("about 10 min per scan" in t and "GPU" in t for t in scoring)  # stays while it runs
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=60000)


def test_right_drag_on_a_ct_sets_window_and_level(findings_widget):
    from types import SimpleNamespace

    from hyperct_viewer.layers import WL_HU_PER_PIXEL

    viewer, widget = findings_widget
    data, kwargs, _ = ct_layer_data(small_ct())
    ct = viewer.add_image(data, **kwargs)
    assert widget._window_level_drag in viewer.mouse_drag_callbacks  # on the canvas, whatever layer is active
    ct.contrast_limits = (-1000.0, 200.0)  # level -400, width 1200

    def drag(button, moves):
        event = SimpleNamespace(button=button, pos=(100.0, 100.0), type="mouse_press")
        gen = widget._window_level_drag(viewer, event)
        try:
            next(gen)
        except StopIteration:  # not its button: the callback lets napari have the drag
            return
        for dx, dy in moves:
            event.type, event.pos = "mouse_move", (100.0 + dx, 100.0 + dy)
            next(gen)
        event.type = "mouse_release"
        with pytest.raises(StopIteration):
            next(gen)

    drag(1, [(50, 50)])  # left button: pan/zoom stays napari's, the window is untouched
    assert tuple(ct.contrast_limits) == (-1000.0, 200.0)
    drag(2, [(10, 0), (50, -25)])
    width, level = 1200 + WL_HU_PER_PIXEL * 50, -400 + WL_HU_PER_PIXEL * 25
    assert tuple(ct.contrast_limits) == pytest.approx((level - width / 2, level + width / 2))
