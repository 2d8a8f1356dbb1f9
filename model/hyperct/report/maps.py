"""Saliency maps as NIfTI files in the INPUT's own geometry, so they overlay the original scan.

The map of a finding is computed on the CT's canonical grid (``SaliencyMaps.volume_map``), taken
back to the input's voxel grid with ``CTVolume.to_source_grid`` (the inverse axis permutation and
flips of the reader), and written with the input's own affine: ``CTVolume.source_affine`` maps
source index (i, j, k) to LPS millimetres; NIfTI is RAS, so x and y change sign. The NIfTI data
array is indexed (i, j, k), i.e. the source-grid array (k, j, i) transposed. For a NIfTI input this
reproduces its array shape and affine exactly; for DICOM, the grid is the series' own (columns,
rows, slices sorted along the slice normal). Values are in [0, 1] (1 = the map's maximum), stored
compactly: uint8 with the NIfTI scaling ``scl_slope`` = 1/255, ``scl_inter`` = 0 in the header (every
NIfTI reader applies it: nibabel's ``get_fdata()`` gives the [0, 1] values back, to 1/510), and the
file is gzip-compressed. A 512 x 512 x 300 map takes a few MB instead of 300 MB as float32.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np

from hyperct.volume import CTVolume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SUFFIX = ".nii.gz"
LEVELS = 255  # stored value = round(map * 255); value = stored * scl_slope (1/255)
SCALE_NOTE = "uint8 x 1/255"


def source_affine_ras(volume: CTVolume) -> np.ndarray:
    """The input's voxel (i, j, k) -> RAS mm affine (what a NIfTI of the input carries)."""
    return LPS_TO_RAS @ np.asarray(volume.source_affine, dtype=np.float64)


def to_source_array(volume: CTVolume, canonical_map: np.ndarray) -> np.ndarray:
    """A canonical-grid map as a NIfTI data array (i, j, k) on the input's own voxel grid."""
    src = volume.to_source_grid(np.asarray(canonical_map, dtype=np.float32))
    if tuple(src.shape) != tuple(volume.source_shape):
        raise ValueError(f"map on the source grid has shape {src.shape}, input has {volume.source_shape}")
    return np.ascontiguousarray(src.transpose(2, 1, 0))


def saliency_nifti_bytes(volume: CTVolume, canonical_map: np.ndarray, description: str = "") -> bytes:
    """A gzipped NIfTI-1 file (bytes) of one map in the input's geometry (sform and qform = scanner)."""
    import gzip

    import nibabel as nib

    data = to_source_array(volume, canonical_map)
    data = np.nan_to_num(data, nan=0.0, posinf=1.0, neginf=0.0)
    stored = np.rint(np.clip(data, 0.0, 1.0) * LEVELS).astype(np.uint8)
    affine = source_affine_ras(volume)
    img = nib.Nifti1Image(stored, affine)
    img.header.set_slope_inter(1.0 / LEVELS, 0.0)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    text = f"{description} [{SCALE_NOTE}]" if description else SCALE_NOTE
    img.header["descrip"] = text.encode("ascii", "replace")[:79]
    img.header["cal_min"], img.header["cal_max"] = 0.0, 1.0
    raw = BytesIO()
    file_map = nib.Nifti1Image.make_file_map({"image": raw, "header": raw})
    img.to_file_map(file_map)
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def map_file_name(stem: str, finding_id: str) -> str:
    return f"{stem}.saliency.{finding_id}{SUFFIX}"
