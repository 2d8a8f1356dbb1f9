"""napari reader: DICOM folders (recursive, DICOMDIR), DICOM files, NIfTI, NRRD, MHA -> a CT layer.

Narrow on purpose: a folder is claimed only when it holds DICOM files (a folder of JPEGs, an
empty folder or a folder of volume files is not ours: None, quickly); files only by extension.
An input the engine refuses gives one error notification that leads with the cause ("MR, not CT:
...", then the file) and no layer, instead of napari's generic "Tried opening with ..." dialog.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from hyperct_viewer.layers import ct_layer_data

# the engine's hyperct.io.SUPPORTED_SUFFIXES and napari.yaml's filename_patterns, kept as a literal here so
# that napari's reader probe does not import the engine's readers (tests/packaging/test_manifest.py)
EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
_SCAN_LIMIT = 400  # files looked at before deciding a folder holds no DICOM
_DIR_LIMIT = 200  # sub-folders walked
_TIME_LIMIT_S = 1.0  # never hold up napari's drop longer than this
# files never opened while looking for DICOM (images, documents, archives, volumes, code)
_NOT_DICOM = (
    ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".svg", ".heic",
    ".txt", ".md", ".csv", ".json", ".xml", ".html", ".pdf", ".doc", ".docx", ".xls", ".xlsx",
    ".zip", ".gz", ".tar", ".7z", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".raw", ".npy", ".npz",
    ".py", ".ipynb", ".mp4", ".avi", ".mov", ".mp3", ".wav",
)  # fmt: skip


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def folder_has_dicom(folder: Path) -> bool:
    """True when the folder (or one below it) holds a DICOM file; bounded in files, folders and time."""
    seen = walked = 0
    deadline = time.monotonic() + _TIME_LIMIT_S
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        walked += 1
        for name in sorted(files):
            low = name.lower()
            if name.upper() == "DICOMDIR" or low.endswith(".dcm"):
                return True
            if name.startswith(".") or low.endswith(_NOT_DICOM):
                continue
            if _is_dicom_file(Path(root) / name):
                return True
            seen += 1
            if seen >= _SCAN_LIMIT or time.monotonic() > deadline:
                return False
        if walked >= _DIR_LIMIT or time.monotonic() > deadline:
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
    """Read the CT (tilted series resampled) and return one image layer.

    Input the engine refuses (typed ``HyperCTError``: not CT, damaged, no images...) gives an error
    notification that leads with the cause and napari's "no layer" answer ``[(None,)]``."""
    from napari.utils.notifications import show_error, show_warning

    from hyperct.errors import HyperCTError
    from hyperct.io import read_ct
    from hyperct_viewer.messages import user_message

    source = path if isinstance(path, (str, os.PathLike)) else [str(p) for p in path]
    if isinstance(source, list) and len(source) == 1:
        source = source[0]
    # A gantry-tilted series is resampled onto an orthogonal grid (a QC warning says so) rather than
    # refused: a viewer user has no option to pass, and the resampled geometry is the correct one.
    try:
        volume = read_ct(source, resample_tilt=True)
    except HyperCTError as exc:
        show_error(user_message(exc))
        return [(None,)]
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
