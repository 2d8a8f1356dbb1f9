"""Make docs/phantom_montage.png: a normal phantom and one with several findings.

Rows: a normal phantom; the same patient with findings; the same slices with each finding's mask
outlined. Columns: axial lung window at the carina and at the lung bases, axial mediastinal window
through the heart, coronal lung and mediastinal windows through the hila.

    python docs/make_phantom_montage.py [--seed 4] [--matrix 512] [--out docs/phantom_montage.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hyperct.phantom import generate  # noqa: E402

LUNG = (-600.0, 1500.0)  # window level / width
MEDIASTINUM = (40.0, 400.0)
FINDINGS = {
    "consolidation": 0.7,
    "pleural_effusion": 0.6,
    "lung_nodule": 0.7,
    "emphysema": 0.6,
    "interlobular_septal_thickening": 0.5,
    "cardiomegaly": 0.6,
    "coronary_artery_wall_calcification": 0.8,
    "arterial_wall_calcification": 0.6,
    "lymphadenopathy": 0.7,
    "medical_material": 0.9,
}
COLORS = plt.get_cmap("tab10").colors


def _win(img, wl):
    lvl, w = wl
    return np.clip((img - (lvl - w / 2)) / w, 0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("phantom_montage.png"))
    args = ap.parse_args()
    normal = generate(args.seed, {}, matrix=args.matrix)
    sick = generate(args.seed, FINDINGS, matrix=args.matrix)
    vol = normal.volume
    sz, sy, sx = vol.spacing
    nz, ny, nx = vol.shape
    lung = normal.tissue_mask("lung")
    blood = normal.tissue_mask("blood", "myocardium")
    area = lung.sum(axis=(1, 2))
    k_lung = np.nonzero(area > 0.25 * area.max())[0]
    k_upper = int(k_lung[0] + 0.3 * (k_lung[-1] - k_lung[0]))
    k_lower = int(k_lung[0] + 0.8 * (k_lung[-1] - k_lung[0]))
    k_heart = int(np.argmax(blood.sum(axis=(1, 2))))
    j_hilum = int(np.median(np.nonzero(lung[k_upper])[0])) - int(10 / sy)
    aspect = sz / sx
    cols = [
        ("axial, lung window", lambda h: h[k_upper], LUNG, 1.0),
        ("axial, lung window (bases)", lambda h: h[k_lower], LUNG, 1.0),
        ("axial, mediastinal window", lambda h: h[k_heart], MEDIASTINUM, 1.0),
        ("coronal, lung window", lambda h: h[:, j_hilum], LUNG, aspect),
        ("coronal, mediastinal window", lambda h: h[:, j_hilum], MEDIASTINUM, aspect),
    ]
    fig, axs = plt.subplots(3, len(cols), figsize=(4.2 * len(cols), 4.2 * 3 + 0.8), facecolor="black")
    rows = [("normal phantom", normal, False), ("with findings", sick, False), ("finding masks", sick, True)]
    for r, (title, ph, outline) in enumerate(rows):
        for c, (ctitle, take, wl, asp) in enumerate(cols):
            ax = axs[r, c]
            ax.imshow(
                _win(take(ph.volume.hu), wl), cmap="gray", vmin=0, vmax=1, aspect=asp, interpolation="lanczos"
            )
            if outline:
                for i, (_fid, m) in enumerate(sorted(ph.masks.items())):
                    sl = take(m)
                    if sl.any():
                        ax.contour(sl.astype(float), levels=[0.5], colors=[COLORS[i % 10]], linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if r == 0:
                ax.set_title(ctitle, color="white", fontsize=11)
            if c == 0:
                ax.set_ylabel(title, color="white", fontsize=12)
    handles = [
        plt.Line2D([], [], color=COLORS[i % 10], lw=2, label=fid.replace("_", " "))
        for i, fid in enumerate(sorted(sick.masks))
    ]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=9, frameon=False, labelcolor="white")
    fig.suptitle(
        f"hyperct.phantom seed {args.seed}: synthetic non-contrast chest CT, {nx}x{ny}x{nz} voxels, "
        f"{sx:.2f}x{sy:.2f}x{sz:.2f} mm (not a patient)",
        color="white",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80, facecolor="black")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
