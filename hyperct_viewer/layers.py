"""napari layer data for a CT volume and its saliency maps (geometry from the canonical grid)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.colormaps import Colormap

from hyperct.metadata import ACQUISITION_KEYS
from hyperct.volume import NAPARI_AXIS_LABELS, CTVolume

# (window level, window width) in HU
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "bone": (400.0, 1800.0),
}
VOLUME_KEY = "hyperct_volume"
SALIENCY_KEY = "hyperct_saliency"
HEADER_KEYS = (  # the header panel's rows, where the volume has a value
    "SeriesDescription",
    "StudyDescription",
    "StudyDate",
    *ACQUISITION_KEYS,
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "SelectionRule",
)


WL_HU_PER_PIXEL = 4.0  # window/level drag: HU per screen pixel


def window_level_drag(layer, event):
    """napari mouse-drag callback: right-drag on the canvas sets the window (left-right: width) and
    level (up-down: centre) of a CT layer, as radiology viewers do; other buttons are left alone."""
    if getattr(event, "button", None) != 2:
        return
    x0, y0 = event.pos[0], event.pos[1]
    lo, hi = layer.contrast_limits
    level, width = (lo + hi) / 2.0, hi - lo
    yield
    while event.type == "mouse_move":
        event.handled = True  # the camera must not also zoom on this right drag (as napari's drag_to_zoom)
        dx, dy = event.pos[0] - x0, event.pos[1] - y0
        w = max(1.0, width + WL_HU_PER_PIXEL * dx)
        c = level - WL_HU_PER_PIXEL * dy  # drag up: higher level (darker image)
        layer.contrast_limits = (c - w / 2.0, c + w / 2.0)
        yield


def window_limits(preset: str) -> tuple[float, float]:
    level, width = WINDOW_PRESETS[preset]
    return (level - width / 2.0, level + width / 2.0)


def layer_name(volume: CTVolume) -> str:
    desc = volume.metadata.get("SeriesDescription")
    if desc:
        return f"CT: {desc}"
    if volume.source_paths:
        p = Path(volume.source_paths[0])
        return f"CT: {p.parent.name if volume.source_format == 'dicom' else p.name}"
    return "CT"


def header_summary(volume: CTVolume) -> dict[str, Any]:
    md = volume.metadata
    z, y, x = volume.shape
    out = {k: md[k] for k in HEADER_KEYS if md.get(k) not in (None, "")}
    out["Matrix"] = f"{x} x {y} x {z}"
    out["Spacing (mm)"] = " x ".join(f"{s:.3g}" for s in volume.spacing[::-1])
    out["Source"] = f"{volume.source_format}: {volume.source_paths[0] if volume.source_paths else '-'}"
    return out


def ct_layer_data(volume: CTVolume, name: str | None = None) -> tuple[np.ndarray, dict, str]:
    """LayerDataTuple for the CT: HU data, mm scale/translate, lung window, metadata + QC warnings."""
    kwargs = {
        "name": name or layer_name(volume),
        "scale": volume.napari_scale,
        "translate": volume.napari_translate,
        "units": ("mm", "mm", "mm"),
        "axis_labels": NAPARI_AXIS_LABELS,
        "colormap": "gray",
        "contrast_limits": window_limits("lung"),
        "metadata": {
            VOLUME_KEY: volume,
            "header": header_summary(volume),
            "qc_warnings": [w.to_dict() for w in volume.warnings],
        },
    }
    return (volume.hu, kwargs, "image")


# Low saliency is transparent (the anatomy stays visible), then dark red -> orange -> light yellow.
SALIENCY_COLORMAP = Colormap(
    colors=[
        [0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
        [0.55, 0.0, 0.1, 0.35],
        [0.95, 0.35, 0.05, 0.75],
        [1.0, 0.95, 0.55, 0.95],
    ],
    controls=[0.0, 0.25, 0.45, 0.75, 1.0],
    name="hyperct saliency",
)


def saliency_layer_kwargs(ct_layer, finding_name: str, method: str) -> dict:
    """Image-layer kwargs that put a map on exactly the CT layer's world grid."""
    return {
        "name": f"Saliency: {finding_name}",
        "scale": tuple(ct_layer.scale),
        "translate": tuple(ct_layer.translate),
        "units": ("mm", "mm", "mm"),
        "axis_labels": tuple(ct_layer.axis_labels),
        "colormap": SALIENCY_COLORMAP,
        "blending": "translucent",
        "opacity": 0.8,
        "contrast_limits": (0.0, 1.0),
        "metadata": {SALIENCY_KEY: finding_name, "method": method},
    }


def volume_of(layer) -> CTVolume | None:
    """The CTVolume behind a layer opened by the HyperCT reader/sample (None otherwise)."""
    md = getattr(layer, "metadata", None) or {}
    vol = md.get(VOLUME_KEY)
    return vol if isinstance(vol, CTVolume) else None
