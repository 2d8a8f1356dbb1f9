"""Task Embeddings widget: views, linked selection with the session, workers, export (GUI, under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from hyperct import embeddings as emb
from hyperct.errors import CheckpointError
from hyperct.loading import load_model
from tests.support.volumes import small_ct

pytestmark = pytest.mark.gui


@pytest.fixture
def loaded(tiny_checkpoint):
    return load_model(tiny_checkpoint, device="cpu")


def _widget(make_napari_viewer_proxy, qtbot, loaded=None):
    from hyperct_viewer.widgets.embeddings import TaskEmbeddingsWidget

    viewer = make_napari_viewer_proxy()
    widget = TaskEmbeddingsWidget(viewer)
    qtbot.addWidget(widget)
    widget.resize(520, 760)
    widget.show()
    qtbot.waitExposed(widget)
    if loaded is not None:
        widget.session.set_model(loaded)
    return viewer, widget


def _wait_analysis(qtbot, widget, representation):
    qtbot.waitUntil(
        lambda: widget.analysis is not None and widget.analysis.representation == representation,
        timeout=30000,
    )
    return widget.analysis


def _qt_click(qtbot, canvas, x, y):
    """A real Qt left click on the canvas at matplotlib display coordinates (x, y)."""
    from qtpy.QtCore import QPoint, Qt

    ratio = canvas.device_pixel_ratio
    pos = QPoint(int(round(x / ratio)), int(round((canvas.figure.bbox.height - y) / ratio)))
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=pos)


def _mpl_click(canvas, x, y):
    from matplotlib.backend_bases import MouseEvent

    MouseEvent("button_press_event", canvas, x, y, button=1)._process()


def test_without_a_model_it_says_so_and_a_failed_demo_load_explains_why(
    make_napari_viewer_proxy, qtbot, monkeypatch
):
    _, widget = _widget(make_napari_viewer_proxy, qtbot)
    assert widget.analysis is None and widget.plots == {}
    assert "No model loaded" in widget.status_label.text()
    assert widget.load_button.isVisible() and not widget.export_view_button.isEnabled()

    def missing(*a, **k):
        raise CheckpointError(
            "the embedded demo model is missing from this installation", hint="pass --model DIR"
        )

    monkeypatch.setattr("hyperct.loading.load_model", missing)
    widget.load_demo_model()
    qtbot.waitUntil(lambda: "Could not load the demo model" in widget.status_label.text(), timeout=10000)
    assert "embedded demo model is missing" in widget.status_label.text()
    assert widget.session.model is None and not widget.busy


def test_task_embedding_views_show_all_findings_with_short_names_and_groups(
    make_napari_viewer_proxy, qtbot, loaded
):
    _, widget = _widget(make_napari_viewer_proxy, qtbot, loaded)
    a = _wait_analysis(qtbot, widget, "task_embeddings")
    np.testing.assert_allclose(a.cosine, emb.analyze_task_embeddings(loaded).cosine)
    assert set(widget.plots) == {"pca", "heatmap", "dendrogram"}
    pca = widget.plots["pca"]
    assert sum(len(pc.get_offsets()) for pc in pca.points) == 25
    assert [t.get_text() for t in pca.labels] == a.short_names
    assert pca.labels[a.index("cardiomegaly")].get_color() == emb.GROUP_COLORS["conventional"]
    assert pca.labels[a.index("pulmonary_hypertension")].get_color() == emb.GROUP_COLORS["opportunistic"]
    assert "% of variance" in pca.ax.get_xlabel()
    heat = widget.plots["heatmap"]
    assert [t.get_gid() for t in heat.row_labels] == [a.ids[i] for i in a.clustering.order]
    dendro = widget.plots["dendrogram"]
    assert f"k = {a.clustering.k}" in dendro.ax.get_title() or a.clustering.k == 1
    assert widget.export_view_button.isEnabled() and not widget.load_button.isVisible()


def test_clicking_a_point_selects_it_for_the_session_and_the_findings_widget(
    make_napari_viewer_proxy, qtbot, loaded
):
    from hyperct_viewer.widgets.findings import FindingsWidget

    viewer, widget = _widget(make_napari_viewer_proxy, qtbot, loaded)
    findings = FindingsWidget(viewer)  # listens to the same session
    qtbot.addWidget(findings)
    assert findings.session is widget.session
    a = _wait_analysis(qtbot, widget, "task_embeddings")
    got = []
    widget.session.finding_selected.connect(got.append)
    canvas = widget.canvases["pca"]
    canvas.draw()
    fid = "emphysema"
    x, y = widget.plots["pca"].ax.transData.transform(a.pca.coords[a.index(fid), :2])
    _qt_click(qtbot, canvas, x, y)
    assert widget.session.selected == fid and got == [fid]  # emitted once, not re-emitted
    assert findings._items[fid].isSelected()
    assert widget.plots["pca"].highlighted == fid


def test_heatmap_label_and_dendrogram_leaf_clicks_select(make_napari_viewer_proxy, qtbot, loaded):
    _, widget = _widget(make_napari_viewer_proxy, qtbot, loaded)
    a = _wait_analysis(qtbot, widget, "task_embeddings")
    got = []
    widget.session.finding_selected.connect(got.append)

    widget.tabs.setCurrentIndex(1)
    canvas = widget.canvases["heatmap"]
    canvas.draw()
    heat = widget.plots["heatmap"]
    label = heat.row_labels[4]  # a row label, outside the axes: found by picking
    bb = label.get_window_extent()
    _mpl_click(canvas, (bb.x0 + bb.x1) / 2, (bb.y0 + bb.y1) / 2)
    assert got == [a.ids[a.clustering.order[4]]]
    x, y = heat.ax.transData.transform((10, 7))  # a cell: selects its row
    _mpl_click(canvas, x, y)
    assert got[-1] == a.ids[a.clustering.order[7]]

    widget.tabs.setCurrentIndex(2)
    canvas = widget.canvases["dendrogram"]
    canvas.draw()
    dendro = widget.plots["dendrogram"]
    leaf = dendro.leaf_labels[-1]
    bb = leaf.get_window_extent()
    _mpl_click(canvas, (bb.x0 + bb.x1) / 2, (bb.y0 + bb.y1) / 2)
    assert got[-1] == leaf.get_gid() == a.ids[dendro.leaf_order[-1]]
    assert widget.session.selected == got[-1] and len(got) == 3


def test_selection_made_elsewhere_is_highlighted_in_every_view(make_napari_viewer_proxy, qtbot, loaded):
    _, widget = _widget(make_napari_viewer_proxy, qtbot, loaded)
    a = _wait_analysis(qtbot, widget, "task_embeddings")
    got = []
    widget.session.finding_selected.connect(got.append)
    widget.session.select_finding("cardiomegaly")  # what the Findings widget does
    assert got == ["cardiomegaly"]  # the embeddings widget does not re-emit
    i = a.index("cardiomegaly")
    pca = widget.plots["pca"]
    assert pca.highlighted == "cardiomegaly"
    np.testing.assert_allclose(np.ravel(pca._ring.get_data()), a.pca.coords[i, :2])
    assert pca.labels[i].get_fontweight() == "bold"
    heat = widget.plots["heatmap"]
    pos = list(a.clustering.order).index(i)
    assert heat._row_box.get_visible() and heat._row_box.get_y() == pos - 0.5
    assert heat.row_labels[pos].get_fontweight() == "bold"
    dendro = widget.plots["dendrogram"]
    bold = [t.get_gid() for t in dendro.leaf_labels if t.get_fontweight() == "bold"]
    assert bold == ["cardiomegaly"]
    # the highlight survives a change of representation
    widget.center_check.setChecked(True)
    assert widget.plots["pca"].highlighted == "cardiomegaly"
    widget.session.select_finding("")
    assert all(p.highlighted is None for p in widget.plots.values())


def test_delta_w_runs_in_a_worker_and_follows_the_module_selection(make_napari_viewer_proxy, qtbot, loaded):
    _, widget = _widget(make_napari_viewer_proxy, qtbot, loaded)
    assert not widget.module_combo.isEnabled()
    widget.set_representation("delta_w")
    a = _wait_analysis(qtbot, widget, "delta_w")
    grams = emb.delta_w_module_grams(loaded)
    np.testing.assert_allclose(a.gram, grams.gram(), rtol=1e-12)
    assert widget.module_combo.isEnabled() and widget.layer_last.maximum() == 2
    widget.set_module_selection("attention", range(1, 2))
    a = widget.analysis  # the Grams are cached: no new worker
    assert a.selection["layers"] == [2] and a.selection["module_types"] == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    ]
    np.testing.assert_allclose(a.gram, grams.gram(layers=[1], kinds="attention"), rtol=1e-12)
    assert "attention" in widget.plots["pca"].ax.get_title()


def test_scan_features_need_a_ct_and_use_the_sessions_volume(make_napari_viewer_proxy, qtbot, loaded):
    _, widget = _widget(make_napari_viewer_proxy, qtbot, loaded)
    idx = widget.rep_combo.findData("scan_features")
    assert not widget.rep_combo.model().item(idx).isEnabled()
    widget.session.set_volume(small_ct())
    assert widget.rep_combo.model().item(idx).isEnabled()
    widget.set_representation("scan_features")
    a = _wait_analysis(qtbot, widget, "scan_features")
    assert a.vectors.shape == (25, loaded.model.hidden_size)
    import torch

    from hyperct.preprocess import preprocess

    with torch.no_grad():  # two of the tasks, straight from the model, on the session's CT
        ref = loaded.model.pooled_features(preprocess(widget.session.volume).pixel_values[None], [3, 20])
    np.testing.assert_allclose(a.vectors[[3, 20]], ref[0].double().numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(a.vectors[3], a.vectors[20])  # task-conditioned: they differ
    widget.session.set_volume(None)  # the scan is gone: back to the task embeddings
    assert widget.representation == "task_embeddings"


def test_export_view_and_csv(make_napari_viewer_proxy, qtbot, loaded, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    _, widget = _widget(make_napari_viewer_proxy, qtbot, loaded)
    _wait_analysis(qtbot, widget, "task_embeddings")
    widget.tabs.setCurrentIndex(2)
    target = tmp_path / "view"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), "SVG image (*.svg)"))
    widget.export_view_button.click()
    svg = tmp_path / "view.svg"
    assert svg.is_file() and "<svg" in svg.read_text()[:500] and "dendrogram" in svg.read_text()
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(tmp_path / "csv"))
    widget.export_csv_button.click()
    names = sorted(p.name for p in (tmp_path / "csv").iterdir())
    assert names == [f"task_embeddings_{n}.csv" for n in ("clusters", "cosine", "pca", "vectors")]
    assert "Wrote 4 CSV files" in widget.status_label.text()
    png = widget.export_view(tmp_path / "x.png", "pca")
    assert png.read_bytes()[:4] == b"\x89PNG"
