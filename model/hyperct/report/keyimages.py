"""Key-slice images for the PDF: the axial slice through a finding's saliency peak, CT in a lung or
mediastinal window with the saliency map over it (inferno) and a colour bar, rendered with
matplotlib's Agg backend to PNG bytes in memory (no display, no files).

Display convention: radiological (patient right on the image's left, anterior at the top), which is
the canonical grid as stored; pixels are drawn at their true millimetre aspect.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

import numpy as np

from hyperct.volume import CTVolume

# (level, width) in HU, as the viewer's presets.
WINDOWS = {"lung": (-600.0, 1500.0), "mediastinal": (40.0, 400.0)}
LUNG_FINDINGS = frozenset(
    {
        "emphysema",
        "atelectasis",
        "lung_nodule",
        "lung_opacity",
        "pulmonary_fibrotic_sequela",
        "mosaic_attenuation_pattern",
        "peribronchial_thickening",
        "consolidation",
        "bronchiectasis",
        "interlobular_septal_thickening",
    }
)
OVERLAY_FLOOR = 0.2  # saliency below this (of the scan's maximum) is not drawn
OVERLAY_ALPHA = 0.6


def window_for(finding_id: str) -> str:
    return "lung" if finding_id in LUNG_FINDINGS else "mediastinal"


@dataclass
class KeyImage:
    finding_id: str
    png: bytes
    width_px: int
    height_px: int
    slice_index: int
    window: str


def render_key_image(
    volume: CTVolume,
    saliency_map: np.ndarray,
    finding_id: str,
    key_slice: int,
    *,
    peak_ji: tuple[int, int] | None = None,
    width_in: float = 3.4,
    dpi: int = 150,
) -> KeyImage:
    """PNG of canonical slice ``key_slice`` with ``saliency_map`` (canonical grid, [0, 1]) over it."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    window = window_for(finding_id)
    level, width = WINDOWS[window]
    k = int(np.clip(key_slice, 0, volume.shape[0] - 1))
    ct = np.asarray(volume.hu[k], dtype=np.float32)
    sal = np.asarray(saliency_map[k], dtype=np.float32)
    nj, ni = ct.shape
    _, sj, si = volume.spacing
    extent = (0.0, ni * si, nj * sj, 0.0)
    aspect_hw = (nj * sj) / (ni * si)

    img_w = width_in * 0.86
    fig = Figure(figsize=(width_in, img_w * aspect_hw + 0.12), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)  # Agg only: never touches the GUI backend of the host application
    ax = fig.add_axes((0.0, 0.0, 0.86, 1.0))
    cax = fig.add_axes((0.885, 0.06, 0.035, 0.78))
    ax.set_facecolor("black")
    ax.imshow(
        ct,
        cmap="gray",
        vmin=level - width / 2,
        vmax=level + width / 2,
        extent=extent,
        interpolation="bilinear",
    )
    cmap = colormaps["inferno"]
    rgba = cmap(np.clip(sal, 0, 1))
    rgba[..., 3] = np.clip((sal - OVERLAY_FLOOR) / (1 - OVERLAY_FLOOR), 0, 1) * OVERLAY_ALPHA
    ax.imshow(rgba, extent=extent, interpolation="bilinear")
    if peak_ji is not None:
        pj, pi = peak_ji
        ax.plot(
            [(pi + 0.5) * si],
            [(pj + 0.5) * sj],
            marker="+",
            markersize=9,
            markeredgewidth=1.4,
            color="#3fd0ff",
        )
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_axis_off()
    style = dict(color="white", fontsize=7, fontweight="bold", ha="center", va="center")
    for x, y, text in ((0.03, 0.5, "R"), (0.97, 0.5, "L"), (0.5, 0.965, "A"), (0.5, 0.035, "P")):
        ax.text(x, y, text, transform=ax.transAxes, **style)
    ax.text(
        0.02,
        0.02,
        f"slice {k + 1}/{volume.shape[0]}  W {width:.0f} L {level:.0f}",
        transform=ax.transAxes,
        color="#dddddd",
        fontsize=5.5,
        ha="left",
        va="bottom",
    )
    bar = fig.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap=cmap), cax=cax)
    bar.set_ticks([0, 0.5, 1])
    bar.ax.tick_params(labelsize=5.5, colors="white", length=2)
    bar.outline.set_edgecolor("white")
    bar.outline.set_linewidth(0.5)
    cax.set_title("saliency", color="white", fontsize=5.5, pad=7)
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="black", metadata={"Software": None})
    w, h = fig.canvas.get_width_height()
    return KeyImage(finding_id, buf.getvalue(), int(w), int(h), k, window)


def key_images(volume: CTVolume, saliency, doc: dict, finding_ids: list[str]) -> list[tuple[dict, KeyImage]]:
    """Render the key image of each finding in ``finding_ids`` that has a saliency map."""
    by_id = {f["id"]: f for f in doc["findings"]}
    out = []
    for fid in finding_ids:
        f = by_id.get(fid)
        if f is None or saliency is None or fid not in saliency:
            continue
        s = f.get("saliency") or saliency.summary(fid, volume).to_dict()
        k, j, i = s["peak_index"]
        from hyperct.saliency.maps import body_mask

        grid = saliency.volume_map(fid, within=body_mask(volume, slices=[int(k)]))  # not in the air
        out.append((f, render_key_image(volume, grid, fid, int(k), peak_ji=(int(j), int(i)))))
    return out
