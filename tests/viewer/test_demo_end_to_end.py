"""The product path with the shipped demo model: DICOM folder -> reader -> Analyze -> select a
finding -> saliency overlay on the CT's world grid whose peak is at the phantom's finding."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

FINDING = "pleural_effusion"
TOLERANCE_MM = 20.0  # half a Grad-CAM token in-plane (the map's resolution)


@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory):
    from hyperct.phantom import generate, write_dicom_series

    ph = generate(4242, findings={FINDING: 0.9, "lung_nodule": 0.7}, matrix=192)
    folder = tmp_path_factory.mktemp("demo") / "chest_ct"
    write_dicom_series(ph.volume, folder, slice_order="shuffled", transfer_syntax="rle", seed=3)
    return ph, folder


def _distance_to_mask_mm(point, mask, spacing) -> float:
    idx = np.argwhere(mask)
    d = (idx - np.asarray(point)) * np.asarray(spacing)
    return float(np.sqrt((d * d).sum(axis=1)).min())


def test_demo_model_scores_and_localises_a_finding_in_the_viewer(make_napari_viewer_proxy, phantom_case, qtbot):
    from hyperct_viewer.layers import volume_of
    from hyperct_viewer.widgets.findings import FindingsWidget

    ph, folder = phantom_case
    viewer = make_napari_viewer_proxy()
    widget = FindingsWidget(viewer)
    widget.device_combo.setCurrentText("CPU")
    [ct] = viewer.open(folder, plugin="hyperct-viewer")
    vol = volume_of(ct)
    np.testing.assert_allclose(vol.hu, ph.volume.hu, atol=1.0)  # RLE DICOM round trip, canonical grid

    with qtbot.waitSignal(widget.analysis_finished, timeout=180000) as done:
        widget.analyze()
    result = done.args[0]
    assert widget.session.model.is_demo and "demo" in widget.banner.text().lower()
    assert result[FINDING].call == "present"

    with qtbot.waitSignal(widget.saliency_shown, timeout=120000):
        widget.select_finding(FINDING)
    [sal] = [ly for ly in viewer.layers if ly.name == "Saliency: Pleural effusion"]
    np.testing.assert_allclose(sal.extent.world, ct.extent.world)
    peak = np.unravel_index(int(np.argmax(sal.data)), sal.data.shape)
    mask = ph.masks[FINDING]
    assert _distance_to_mask_mm(peak, mask, vol.spacing) <= TOLERANCE_MM
    # the viewer jumped to the peak slice
    assert abs(viewer.dims.point[0] - (ct.translate[0] + peak[0] * ct.scale[0])) <= ct.scale[0] * 1.01
