"""napari reader: DICOM folders (recursive, DICOMDIR), DICOM files, NIfTI, NRRD, MHA -> a CT layer.

Narrow on purpose: a folder is claimed only when it holds DICOM files; files only by extension.
"""

from __future__ import annotations

import os
from pathlib import Path

from hyperct_viewer.layers import ct_layer_data

EXTENSIONS = (".dcm", ".nii", ".nii.gz", ".nrrd", ".mha")
_SCAN_LIMIT = 400  # files looked at before deciding a folder holds no DICOM


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def folder_has_dicom(folder: Path) -> bool:
    seen = 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.upper() == "DICOMDIR" or name.lower().endswith(".dcm"):
                return True
            if _is_dicom_file(Path(root) / name):
                return True
            seen += 1
            if seen >= _SCAN_LIMIT:
                return False
    return False


def _accepts(path: str | Path) -> bool:
    p = Path(path)
    if p.is_dir():
        return folder_has_dicom(p)
    name = p.name.lower()
    return name.endswith(EXTENSIONS) or name == "dicomdir"


def napari_get_reader(path):
    """npe2 reader entry point: a reader function, or None when the input is not ours."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(_accepts(p) for p in paths):
        return None
    return read_ct_layers


def read_ct_layers(path) -> list:
    """Read the CT (typed, explained errors on bad input; tilted series resampled) and return one image layer."""
    from napari.utils.notifications import show_warning

    from hyperct.io import read_ct

    source = path if isinstance(path, (str, os.PathLike)) else [str(p) for p in path]
    if isinstance(source, list) and len(source) == 1:
        source = source[0]
    # A gantry-tilted series is resampled onto an orthogonal grid (a QC warning says so) rather than
    # refused: a viewer user has no option to pass, and the resampled geometry is the correct one.
    volume = read_ct(source, resample_tilt=True)
    others = volume.metadata.get("OtherSeries") or []
    if others:
        show_warning(
            f"{len(others) + 1} series found; opened {volume.metadata.get('SeriesDescription') or volume.series_uid} "
            f"({volume.metadata.get('SelectionRule', 'default rule')}). Others: "
            + "; ".join(str(o) for o in others[:3])
        )
    for w in volume.warnings:
        show_warning(f"QC: {w.message}")
    return [ct_layer_data(volume)]
