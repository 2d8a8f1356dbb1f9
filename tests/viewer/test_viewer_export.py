"""Open a phantom DICOM folder with the plugin reader, analyse, export: same files as the CLI."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui

RID = "00000000-0000-4000-8000-000000000001"
CREATED = "2026-01-02T03:04:05+00:00"


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory):
    from hyperct.phantom import generate, write_dicom_series

    ph = generate(5, findings={"pleural_effusion": 0.9}, matrix=96, n_slices=40)
    out = tmp_path_factory.mktemp("dcm") / "phantom_series"
    write_dicom_series(ph.volume, out, slice_order="shuffled", seed=1)
    return out


def test_plugin_reader_opens_a_dicom_folder_as_a_ct_layer(make_napari_viewer_proxy, dicom_folder):
    from hyperct_viewer.layers import volume_of

    viewer = make_napari_viewer_proxy()
    layers = viewer.open(dicom_folder, plugin="hyperct-viewer")
    assert len(layers) == 1
    vol = volume_of(layers[0])
    assert vol is not None and vol.source_format == "dicom" and vol.shape[0] == 40
    assert tuple(layers[0].scale) == vol.spacing
    assert layers[0].metadata["header"]["Modality"] == "CT"


def test_plugin_reader_resamples_a_tilted_series_and_says_so(make_napari_viewer_proxy, tmp_path):
    # the CLI refuses a tilted series unless asked (--resample-tilt); a viewer user has nothing to
    # pass, so the reader resamples it and the QC warning is in the layer's metadata
    from hyperct_viewer.layers import volume_of
    from tests.support.dicom import asymmetric_phantom, write_series

    ph = asymmetric_phantom(shape=(16, 24, 20), spacing=(2.0, 0.8, 0.7), seed=11)
    write_series(ph, tmp_path / "tilted", shear_px=(1, 0), tags={"GantryDetectorTilt": 21.8})
    viewer = make_napari_viewer_proxy()
    layers = viewer.open(tmp_path / "tilted", plugin="hyperct-viewer")
    vol = volume_of(layers[0])
    assert vol.shape == ph.hu.shape
    assert vol.metadata["GantryTiltResampledDegrees"] == pytest.approx(21.8, abs=0.05)
    codes = [w["code"] for w in layers[0].metadata["qc_warnings"]]
    assert "gantry_tilt_resampled" in codes


def test_export_buttons_write_the_same_files_as_the_cli(
    findings_widget, dicom_folder, tiny_checkpoint, tmp_path, qtbot, monkeypatch
):
    from hyperct.cli import main as cli_main
    from hyperct.cli import predict

    monkeypatch.setenv("HYPERCT_LINK_KEY", "test-site-key")
    viewer, widget = findings_widget
    viewer.open(dicom_folder, plugin="hyperct-viewer")
    # the status names the series' folder, not one of its files
    assert f"from {dicom_folder}\n" in widget.status.text() and ".dcm" not in widget.status.text()
    with qtbot.waitSignal(widget.saliency_shown, timeout=120000):
        widget.analyze()
    gui = widget.export_files(("json", "pdf", "sr"), tmp_path / "gui", report_id=RID, created=CREATED)

    monkeypatch.setattr(predict, "report_identity", lambda result: (RID, CREATED))
    rc = cli_main.main(
        [
            "predict",
            str(dicom_folder),
            "--model",
            str(tiny_checkpoint),
            "--device",
            "cpu",
            "--json",
            "--pdf",
            "--sr",
            "--out",
            str(tmp_path / "cli"),
        ]
    )
    assert rc == 0
    assert set(gui) == {"json", "pdf", "sr"}
    for fmt, path in gui.items():
        twin = tmp_path / "cli" / path.name
        assert twin.exists(), f"the CLI did not write {path.name}"
        assert path.read_bytes() == twin.read_bytes(), f"{fmt} differs between viewer and CLI"
