"""The magicgui parts of the viewer: the Findings dock's export form and the "Score a CT layer"
``magic_factory`` widget (its choices are checked without a display; the rest runs under Xvfb)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from hyperct.saliency import DEFAULT_METHOD, METHODS


def _options(name: str) -> dict:
    from hyperct_viewer.widgets.score import score_layer

    return score_layer.keywords["param_options"][name]


def _default(name: str):
    from hyperct_viewer.widgets.score import score_layer

    return inspect.signature(score_layer.keywords["function"]).parameters[name].default


def test_score_widget_offers_exactly_the_engines_saliency_methods_findings_and_devices():
    # headless: the factory's parameter choices, read without building the widget
    from hyperct.findings import catalogue

    methods = _options("saliency_method")["choices"]
    assert [value for _, value in methods] == list(METHODS)
    assert [label for label, _ in methods] == [m.name for m in METHODS.values()]
    assert _default("saliency_method") == DEFAULT_METHOD
    findings = [value for _, value in _options("finding")["choices"]]
    assert findings[0] == _default("finding") == "" and findings[1:] == list(catalogue().ids)
    assert [value for _, value in _options("device")["choices"]] == ["auto", "cuda", "cpu"]
    assert _default("model_folder") is None and _options("model_folder")["mode"] == "d"


@pytest.mark.gui
@pytest.mark.slow
def test_export_form_values_drive_an_export_that_writes_the_chosen_formats(
    analysed_widget, qtbot, tmp_path, monkeypatch
):
    from qtpy.QtWidgets import QMessageBox

    from hyperct.report.export import derived_stem

    viewer, widget = analysed_widget
    form = widget.export_form
    result = widget.result
    # this scan is a NIfTI: DICOM SR cannot be written, and its box says so
    assert not form.sr.enabled and "DICOM input" in form.sr.tooltip
    form.sr.value = True  # ticked anyway: still not written
    form.json.value = False
    form.pdf.value = True
    form.fhir.value = True
    form.maps.value = True
    form.mode.value = "clinical"
    out = tmp_path / "reports"
    form.folder.value = out
    settings = form.settings()
    assert settings.formats == ("pdf", "fhir") and settings.maps and settings.mode == "clinical"

    failed = []
    widget.job_failed.connect(failed.append)
    widget.export_button.click()  # the form's Export button
    qtbot.waitUntil(lambda: widget.status.text().startswith("Exported"), timeout=60000)
    assert not failed
    stem = derived_stem(None, widget.results_of().volume, "clinical")
    assert stem == "small_synthetic"  # clinical mode keeps the input's name (shareable would not)
    positives = sorted(f.id for f in result.positives)
    expected = {f"{stem}.hyperct.pdf", f"{stem}.hyperct.fhir.json"}
    expected |= {f"{stem}.saliency.{fid}.nii.gz" for fid in positives}
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == expected  # not: the set record
    assert (out / f"{stem}.hyperct.pdf").read_bytes().startswith(b"%PDF")

    # ticked "Replace existing files without asking": the second export replaces them, no question
    def no_question(*args):
        raise AssertionError("asked although the form says replace without asking")

    monkeypatch.setattr(QMessageBox, "question", no_question)
    (out / f"{stem}.hyperct.pdf").write_bytes(b"old")
    form.overwrite.value = True
    widget.status.setText("")
    widget.export_button.click()
    qtbot.waitUntil(lambda: widget.status.text().startswith("Exported"), timeout=60000)
    assert not failed
    assert (out / f"{stem}.hyperct.pdf").read_bytes().startswith(b"%PDF")


@pytest.mark.gui
def test_export_form_with_nothing_ticked_writes_nothing_and_says_why(
    analysed_widget, qtbot, tmp_path, monkeypatch
):
    import hyperct_viewer.widgets.findings as findings_module

    viewer, widget = analysed_widget
    said = []
    monkeypatch.setattr(findings_module, "show_warning", said.append)
    for box in widget.export_form.checks.values():
        box.value = False
    widget.export_form.folder.value = tmp_path / "none"
    assert widget.export_from_form() is None
    assert not (tmp_path / "none").exists()
    assert said and said[0].startswith("Nothing to export")


@pytest.mark.gui
@pytest.mark.slow
def test_score_widget_scores_a_phantom_layer_with_the_demo_model_and_adds_its_overlay(
    make_napari_viewer_proxy, qtbot
):
    from hyperct.phantom import generate
    from hyperct_viewer.layers import ct_layer_data
    from hyperct_viewer.widgets.score import RESULT_KEY, SOURCE_KEY, score_layer, scorer_for

    viewer = make_napari_viewer_proxy()
    ph = generate(5, findings={"pleural_effusion": 0.9}, matrix=96, n_slices=40)
    data, kwargs, _ = ct_layer_data(ph.volume, name="Phantom CT")
    ct = viewer.add_image(data, **kwargs)
    other = viewer.add_image(np.zeros((4, 8, 8), np.float32), name="not a CT", units="mm")
    widget = score_layer()
    viewer.window.add_dock_widget(widget)
    widget.device.value = "cpu"
    assert {"Phantom CT", "not a CT"} <= {layer.name for layer in widget.image.choices}

    with pytest.raises(ValueError, match="^Not a HyperCT CT layer"):
        widget(image=other)

    done = []
    worker = widget(image=ct)  # the demo model (no folder), the default method, the top finding
    assert worker is not None
    worker.returned.connect(done.append)
    qtbot.waitUntil(lambda: bool(done) and not scorer_for(viewer).jobs.busy, timeout=120000)
    scored = done[0]
    result = scored.result
    assert scored.model.is_demo and len(result.findings) == 25
    assert result["pleural_effusion"].call == "present"
    assert scored.finding == max(result.positives, key=lambda f: f.probability).id
    overlay = scored.layers[0]
    assert overlay.name == f"Saliency: {result[scored.finding].name} ({METHODS[DEFAULT_METHOD].name})"
    assert overlay in viewer.layers and viewer.layers.index(overlay) == viewer.layers.index(ct) + 1
    assert overlay.data.shape == ct.data.shape and 0 < overlay.data.max() <= 1
    np.testing.assert_allclose(overlay.extent.world, ct.extent.world)
    assert overlay.metadata[RESULT_KEY] is result and overlay.metadata[SOURCE_KEY] is _real(ct)

    # again with another method: a second overlay; the same settings again: that one is updated
    done.clear()
    other = "gradcam" if DEFAULT_METHOD != "gradcam" else "attention"
    widget(image=ct, saliency_method=other, finding="pleural_effusion").returned.connect(done.append)
    qtbot.waitUntil(lambda: bool(done) and not scorer_for(viewer).jobs.busy, timeout=120000)
    # same folder, device and scan: neither the model is loaded nor the scan scored again
    assert done[0].model is scored.model and done[0].result is result
    names = [ly.name for ly in viewer.layers]
    assert f"Saliency: Pleural effusion ({METHODS[other].name})" in names
    n = len(viewer.layers)
    done.clear()
    widget(image=ct, saliency_method=other, finding="pleural_effusion").returned.connect(done.append)
    qtbot.waitUntil(lambda: bool(done) and not scorer_for(viewer).jobs.busy, timeout=120000)
    assert len(viewer.layers) == n


def _real(layer):
    return getattr(layer, "__wrapped__", layer)
