"""Fixtures for the viewer tests: a tiny random checkpoint and a Findings widget using it (no trained
weights needed; the synthetic CT is ``tests.support.volumes.small_ct``)."""

from __future__ import annotations

import pytest

from tests.support.models import save_tiny_checkpoint
from tests.support.volumes import small_ct


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "tiny", seed=11, model_name="Tiny test model", model_version="0.0.1"
    )


@pytest.fixture
def findings_widget(make_napari_viewer_proxy, tiny_checkpoint):
    """A viewer and its Findings widget, set to the CPU and the tiny checkpoint: (viewer, widget)."""
    from hyperct_viewer.widgets.findings import FindingsWidget

    viewer = make_napari_viewer_proxy()
    widget = FindingsWidget(viewer)
    widget.device_combo.setCurrentText("CPU")
    widget.set_model_dirs(str(tiny_checkpoint))
    return viewer, widget


@pytest.fixture
def analysed_widget(findings_widget, qtbot):
    """``findings_widget`` after Analyze on ``small_ct()``: the top finding's map shown, no job left."""
    from hyperct_viewer.layers import ct_layer_data

    viewer, widget = findings_widget
    data, kwargs, _ = ct_layer_data(small_ct())
    viewer.add_image(data, **kwargs)
    with qtbot.waitSignal(widget.saliency_shown, timeout=60000):
        widget.analyze()
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=60000)
    return viewer, widget
