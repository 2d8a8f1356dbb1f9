"""Write a CT volume or a mask as NIfTI (.nii / .nii.gz) with the correct RAS affine (SimpleITK).

SimpleITK works in LPS like ``CTVolume``; its NIfTI writer stores the LPS geometry as the RAS
sform/qform the NIfTI standard wants (x and y negated), so nibabel reads
``affine = diag(-1, -1, 1, 1) @ volume.affine``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hyperct.volume import CTVolume


def write_nifti(
    volume_or_array: CTVolume | np.ndarray, path: str | Path, like: CTVolume | None = None
) -> Path:
    """Write a ``CTVolume`` (HU rounded to int16) or an array on ``like``'s grid (bool -> uint8).

    Arrays are on the canonical grid (k, j, i) of ``like``; without ``like`` an array gets unit
    spacing and the canonical orientation at the origin.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise ValueError(f"NIfTI path must end with .nii or .nii.gz, got {path.name!r}")
    if isinstance(volume_or_array, CTVolume):
        geom = volume_or_array
        arr = np.clip(np.rint(volume_or_array.hu), -32768, 32767).astype(np.int16)
    else:
        geom = like
        arr = np.asarray(volume_or_array)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        elif arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        if geom is not None and arr.shape != geom.shape:
            raise ValueError(f"array shape {arr.shape} does not match the volume's {geom.shape}")
    if arr.ndim != 3:
        raise ValueError(f"expected a 3-D array (k, j, i), got shape {arr.shape}")
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))  # array (k, j, i) -> image index (i, j, k)
    if geom is not None:
        sk, sj, si = geom.spacing
        img.SetSpacing((float(si), float(sj), float(sk)))
        img.SetOrigin(tuple(float(v) for v in geom.origin))
        img.SetDirection(tuple(float(v) for v in np.asarray(geom.direction).ravel()))
    else:
        img.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), useCompression=path.name.endswith(".gz"))
    return path
