"""NIfTI (nibabel) and NRRD/MHA/MHD (SimpleITK) volumes -> canonical ``CTVolume``.

NIfTI affines are RAS and are converted to LPS. The sform is used when its code is set, else the
qform; both set but disagreeing, neither set, singular or sheared -> ``SeriesGeometryError``.
Values: the file's own scaling (NIfTI scl_slope/scl_inter) unless ``rescale=(slope, intercept)`` is
given, which then applies to the raw stored values. NaN/inf become -1000 HU with a QC warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hyperct.errors import CorruptFileError, SeriesGeometryError, TooFewSlicesError, UnsupportedInputError
from hyperct.io import geometry, quality
from hyperct.volume import CTVolume, QCWarning

AIR_HU = -1000.0
AFFINE_ATOL = 1e-3  # max abs difference of sform vs qform matrix entries (mm per voxel)
AFFINE_ORIGIN_ATOL_MM = 0.05


def image_format(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    if name.endswith((".mha", ".mhd")):
        return "mha"
    return None


def _squeeze(raw: Any, path: Path) -> Any:
    shape = tuple(int(n) for n in raw.shape)
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise UnsupportedInputError(
            f"{path}: image has shape {shape}; a single 3-D CT volume is expected",
            path=path,
            hint="split 4-D/multi-volume files and open one 3-D volume",
        )
    return raw.reshape(shape[:3]) if len(shape) > 3 else raw


def _check_orthogonal(affine_lps: np.ndarray, path: Path) -> None:
    m = affine_lps[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if np.any(norms <= 0) or not np.all(np.isfinite(m)):
        raise SeriesGeometryError(
            f"{path}: the voxel-to-world affine is singular (a zero voxel size or NaN)",
            path=path,
            hint="fix the file's header (sform/qform, pixdim) or re-convert it from DICOM",
        )
    u = m / norms
    gram = u.T @ u - np.eye(3)
    if float(np.max(np.abs(gram))) > 1e-3:
        raise SeriesGeometryError(
            f"{path}: the voxel-to-world affine is sheared (its axes are not perpendicular; e.g. a gantry-tilt "
            "conversion)",
            path=path,
            hint="re-convert the DICOM with tilt correction (e.g. dcm2niix) or read the DICOM series with "
            "tilt resampling (hyperct predict --resample-tilt, or open the DICOM folder in the viewer)",
        )


def _to_volume(
    raw_kji: Any,
    affine_lps: np.ndarray,
    slope: float,
    intercept: float,
    path: Path,
    fmt: str,
    *,
    min_slices: int,
    metadata: dict[str, Any],
) -> CTVolume:
    where = str(path)
    _check_orthogonal(affine_lps, path)
    source_shape = tuple(int(n) for n in raw_kji.shape)
    layout = geometry.canonical_layout(affine_lps, source_shape, where)
    n_slices = min(source_shape)
    if n_slices < min_slices:
        raise TooFewSlicesError(
            f"{path}: volume {source_shape[::-1]} has only {n_slices} slice(s) along its shortest axis; a chest "
            f"CT volume needs at least {min_slices}",
            path=path,
            hint="open the complete volume, or if this short volume is intended lower the minimum "
            "(hyperct predict --min-slices N; read_ct(..., min_slices=N))",
        )
    hu = np.empty(layout.shape, dtype=np.float32)
    view = layout.reorientation.apply(raw_kji)
    try:
        np.multiply(view, np.float32(slope) if slope != 1.0 else 1, out=hu, casting="unsafe")
    except (OSError, ValueError, EOFError) as exc:
        raise CorruptFileError(
            f"{path}: image data cannot be read ({type(exc).__name__}: {exc})",
            path=path,
            hint="the file is truncated or damaged",
        ) from exc
    if intercept != 0.0:
        hu += np.float32(intercept)
    warnings = []
    bad = ~np.isfinite(hu)
    if bad.any():
        count = int(bad.sum())
        hu[bad] = AIR_HU
        warnings.append(
            QCWarning(
                quality.NONFINITE_VALUES, f"{count} NaN/infinite voxel(s) in {path.name} set to -1000 HU"
            )
        )
    del bad
    vol = CTVolume(
        hu=hu,
        spacing=layout.spacing,
        origin=layout.origin,
        direction=layout.direction,
        metadata=metadata,
        source_paths=[str(path)],
        source_format=fmt,
        source_affine=affine_lps,
        source_shape=source_shape,
        reorientation=layout.reorientation,
        warnings=warnings,
    )
    return vol


def read_nifti(path: Path, *, rescale: tuple[float, float] | None, min_slices: int) -> CTVolume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        hdr = img.header
        sform, scode = hdr.get_sform(coded=True)
        qform, qcode = hdr.get_qform(coded=True)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for damaged files
        raise CorruptFileError(
            f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})",
            path=path,
            hint="the file is truncated or damaged, or not NIfTI",
        ) from exc
    if scode and qcode:
        diff = np.abs(np.asarray(sform) - np.asarray(qform))
        if diff[:3, :3].max() > AFFINE_ATOL or diff[:3, 3].max() > AFFINE_ORIGIN_ATOL_MM:
            raise SeriesGeometryError(
                f"{path}: the sform and qform affines disagree (by up to {diff[:3, :3].max():.3g} mm/voxel and "
                f"{diff[:3, 3].max():.3g} mm), so the orientation is ambiguous",
                path=path,
                hint="fix the header (e.g. set one of them from the other with nibabel or fslorient)",
            )
    if scode:
        affine, which = np.asarray(sform, dtype=np.float64), "sform"
    elif qcode:
        affine, which = np.asarray(qform, dtype=np.float64), "qform"
    else:
        raise SeriesGeometryError(
            f"{path}: neither sform nor qform is set (codes 0), so the patient orientation is unknown",
            path=path,
            hint="re-convert from DICOM (e.g. dcm2niix), or set the affine with nibabel",
        )
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise SeriesGeometryError(
            f"{path}: the {which} affine is singular (determinant 0) or not finite",
            path=path,
            hint="fix the header (voxel sizes, sform/qform) or re-convert from DICOM",
        )
    try:
        proxy = img.dataobj
        raw = _squeeze(proxy.get_unscaled() if hasattr(proxy, "get_unscaled") else np.asanyarray(proxy), path)
        if rescale is not None:
            slope, intercept = float(rescale[0]), float(rescale[1])
        else:
            slope = float(getattr(proxy, "slope", 1.0))
            intercept = float(getattr(proxy, "inter", 0.0))
    except UnsupportedInputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CorruptFileError(
            f"{path}: image data cannot be read ({type(exc).__name__}: {exc})",
            path=path,
            hint="the file is truncated or damaged",
        ) from exc
    raw_kji = np.asarray(raw).transpose(2, 1, 0)
    meta: dict[str, Any] = {"AffineSource": which}
    descrip = hdr.get("descrip")
    if descrip is not None:
        text = bytes(np.asarray(descrip).tobytes()).split(b"\0", 1)[0].decode("latin-1").strip()
        if text:
            meta["Description"] = text
    if rescale is not None:
        meta["RescaleOverride"] = [slope, intercept]
    return _to_volume(
        raw_kji,
        geometry.ras_to_lps(affine),
        slope,
        intercept,
        path,
        "nifti",
        min_slices=min_slices,
        metadata=meta,
    )


def read_itk(path: Path, fmt: str, *, rescale: tuple[float, float] | None, min_slices: int) -> CTVolume:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except Exception as exc:  # noqa: BLE001 - SimpleITK raises RuntimeError with ITK's text
        raise CorruptFileError(
            f"{path}: not a readable {fmt.upper()} file ({str(exc).strip().splitlines()[-1] if str(exc).strip() else exc})",
            path=path,
            hint="the file (or its detached data file) is missing, truncated or damaged",
        ) from exc
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise UnsupportedInputError(
            f"{path}: image has {img.GetNumberOfComponentsPerPixel()} components per voxel; a greyscale CT is expected",
            path=path,
        )
    dim = img.GetDimension()
    if dim not in (3, 4):
        raise UnsupportedInputError(f"{path}: image is {dim}-D; a 3-D CT volume is expected", path=path)
    if dim == 4:
        if img.GetSize()[3] != 1:
            raise UnsupportedInputError(f"{path}: image is 4-D with {img.GetSize()[3]} volumes", path=path)
        img = img[:, :, :, 0]
    spacing = np.array(img.GetSpacing(), dtype=np.float64)
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = img.GetOrigin()
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise SeriesGeometryError(
            f"{path}: the voxel-to-world matrix is singular or not finite", path=path, hint="fix the header"
        )
    raw_kji = sitk.GetArrayViewFromImage(img)
    slope, intercept = (float(rescale[0]), float(rescale[1])) if rescale is not None else (1.0, 0.0)
    meta: dict[str, Any] = {}
    if rescale is not None:
        meta["RescaleOverride"] = [slope, intercept]
    vol = _to_volume(raw_kji, affine, slope, intercept, path, fmt, min_slices=min_slices, metadata=meta)
    del raw_kji, img
    return vol
