"""Test-only factory: tiny CT series written with pydicom (and NIfTI with nibabel) from a known phantom.

Independent of ``hyperct.io``: every slice is sampled from the phantom by plain index arithmetic on
LPS coordinates, so the reader's sorting/reorientation is checked against geometry computed here.

The phantom is held on the canonical grid of ``CTVolume`` (axes k: S->I, j: A->P, i: R->L):
voxel (k, j, i) sits at LPS (ox + i*si, oy + j*sj, oz - k*sk).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from hyperct.volume import CANONICAL_DIRECTION, CTVolume

AXIAL = ((1, 0, 0), (0, 1, 0))  # row dir = +x (R->L), column dir = +y (A->P): normal +z
CORONAL = ((1, 0, 0), (0, 0, -1))  # normal = -y
SAGITTAL = ((0, 1, 0), (0, 0, -1))  # normal = +x


@dataclass
class Phantom:
    hu: np.ndarray  # (k, j, i), integer-valued HU
    spacing: tuple[float, float, float]  # (sk, sj, si)
    origin: tuple[float, float, float]  # LPS of voxel [0, 0, 0]

    def coords(self) -> list[np.ndarray]:
        """LPS coordinate of each index along x (i), y (j), z (k)."""
        nk, nj, ni = self.hu.shape
        sk, sj, si = self.spacing
        ox, oy, oz = self.origin
        return [ox + si * np.arange(ni), oy + sj * np.arange(nj), oz - sk * np.arange(nk)]

    def steps(self) -> list[float]:
        sk, sj, si = self.spacing
        return [si, sj, sk]


def asymmetric_phantom(
    shape: tuple[int, int, int] = (20, 24, 28),
    spacing: tuple[float, float, float] = (2.0, 0.8, 0.7),
    origin: tuple[float, float, float] = (-10.0, -9.0, 30.0),
    seed: int = 0,
) -> Phantom:
    """Random integer HU in [-1000, 1500): no symmetry, so any axis mix-up or flip is visible."""
    rng = np.random.default_rng(seed)
    return Phantom(rng.integers(-1000, 1500, size=shape).astype(np.float64), spacing, origin)


def chest_like_phantom(
    shape=(36, 80, 80), spacing=(4.0, 4.0, 4.0), blood_pool_hu: float | None = None, lungs: bool = True
) -> Phantom:
    """A crude chest, 32 cm wide: air around a soft-tissue body with two air-filled lungs, and
    optionally a bright (contrast-filled) blood pool of about 330 mL between them."""
    nk, nj, ni = shape
    k, j, i = np.indices(shape).astype(float)
    cy, cx = (nj - 1) / 2, (ni - 1) / 2
    hu = np.full(shape, -1000.0)
    body = ((j - cy) / (0.45 * nj)) ** 2 + ((i - cx) / (0.45 * ni)) ** 2 <= 1
    hu[body] = 30.0
    if lungs:
        for side in (-1, 1):
            lung = ((j - cy) / (0.28 * nj)) ** 2 + ((i - cx - side * 0.2 * ni) / (0.14 * ni)) ** 2 <= 1
            hu[lung & body] = -850.0
    if blood_pool_hu is not None:
        pool = ((j - cy) / (0.15 * nj)) ** 2 + ((i - cx) / (0.12 * ni)) ** 2 + (
            (k - (nk - 1) / 2) / (0.3 * nk)
        ) ** 2 <= 1
        hu[pool] = blood_pool_hu
    return Phantom(hu, spacing, (-160.0, -160.0, 0.0))


def _axis(v) -> tuple[int, int]:
    v = np.asarray(v, dtype=float)
    a = int(np.argmax(np.abs(v)))
    assert np.count_nonzero(v) == 1, "factory axes must be axis-aligned unit vectors"
    return a, int(np.sign(v[a]))


def sample_grid(ph: Phantom, dirs: list) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Resample (exactly) the phantom on an array whose axes 0, 1, 2 run along the LPS unit vectors
    ``dirs[0..2]``. Returns (array, LPS position of element [0,0,0], spacing per array axis)."""
    coords, steps = ph.coords(), ph.steps()
    idx: list = [None, None, None]  # phantom index arrays per LPS axis (x->i, y->j, z->k)
    origin = np.zeros(3)
    spacing = []
    for ax, d in enumerate(dirs):
        a, s = _axis(d)
        order = np.argsort(coords[a] * s)  # phantom indices in increasing coordinate along d
        shape = [1, 1, 1]
        shape[ax] = len(order)
        idx[a] = order.reshape(shape)
        origin[a] = coords[a][order[0]]
        spacing.append(steps[a])
    assert all(x is not None for x in idx), "dirs must span x, y and z"
    return ph.hu[idx[2], idx[1], idx[0]], origin, spacing


def write_series(
    ph: Phantom,
    folder: str | Path,
    *,
    orientation=AXIAL,
    order: str = "ascending",  # file/InstanceNumber order: ascending, descending or shuffled
    seed: int = 0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    modality: str = "CT",
    slope: float | Callable[[int], float] = 1.0,
    intercept: float | Callable[[int], float] = -1024.0,
    signed: bool = True,
    padding: tuple[int, int | None] | None = None,
    pad_mask: np.ndarray | None = None,
    shear_px: tuple[int, int] = (0, 0),
    rotate: np.ndarray | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    tags: dict | None = None,
    per_slice: Callable[[Dataset, int], None] | None = None,
    prefix: str = "IM",
    suffix: str = "",
) -> list[Path]:
    """Write the phantom as a single-frame CT series; returns the files in ascending slice order.

    ``orientation``: (row_dir, col_dir) axis-aligned LPS vectors; slices stack along their cross
    product. ``slope``/``intercept``: constants or functions of the slice position m (0 = lowest along
    the normal). ``padding``: (PixelPaddingValue, PixelPaddingRangeLimit or None), written where the
    canonical ``pad_mask`` is true. ``shear_px``: gantry tilt as an in-plane shift (rows, cols) per
    slice, with the pixel content shifted to match (outside the phantom: -1000 HU).
    ``rotate``: 3x3 rotation applied to IOP and IPP (an oblique acquisition of the same array).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    r = np.asarray(orientation[0], dtype=float)
    c = np.asarray(orientation[1], dtype=float)
    n = np.cross(r, c)
    vol, origin, (dz, dy, dx) = sample_grid(ph, [n, c, r])  # (slices ascending along n, rows, cols)
    mask = None
    if pad_mask is not None:
        mask, _, _ = sample_grid(Phantom(pad_mask.astype(float), ph.spacing, ph.origin), [n, c, r])
        mask = mask > 0.5
    n_slices, rows, cols = vol.shape
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    rng = np.random.default_rng(seed)
    numbers = np.arange(n_slices)
    if order == "descending":
        numbers = numbers[::-1]
    elif order == "shuffled":
        numbers = rng.permutation(n_slices)
    rot = np.eye(3) if rotate is None else np.asarray(rotate, dtype=float)
    paths = []
    for m in range(n_slices):
        img = vol[m]
        pm = None if mask is None else mask[m]
        ipp = origin + m * dz * n
        if shear_px != (0, 0):
            sr, sc = shear_px[0] * m, shear_px[1] * m
            ipp = ipp + sr * dy * c + sc * dx * r
            shifted = np.full_like(img, -1000.0)
            rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
            src_r, src_c = rr + sr, cc + sc
            ok = (src_r >= 0) & (src_r < rows) & (src_c >= 0) & (src_c < cols)
            shifted[ok] = img[src_r[ok], src_c[ok]]
            img = shifted
        s = slope(m) if callable(slope) else slope
        b = intercept(m) if callable(intercept) else intercept
        stored = np.rint((img - b) / s)
        if pm is not None:
            stored[pm] = padding[0]
        dtype = np.int16 if signed else np.uint16
        info = np.iinfo(dtype)
        assert stored.min() >= info.min and stored.max() <= info.max, "stored values out of range"
        ds = _base_dataset(study_uid, series_uid, frame_uid, modality)
        ds.InstanceNumber = int(numbers[m]) + 1
        ds.ImagePositionPatient = [float(f"{v:.6f}") for v in rot @ ipp]
        ds.ImageOrientationPatient = [float(f"{v:.8f}") for v in np.concatenate([rot @ r, rot @ c])]
        ds.PixelSpacing = [dy, dx]
        ds.SliceThickness = dz
        ds.Rows, ds.Columns = rows, cols
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleSlope = f"{s:g}"
        ds.RescaleIntercept = f"{b:g}"
        if padding is not None:
            ds.PixelPaddingValue = int(padding[0])
            if padding[1] is not None:
                ds.PixelPaddingRangeLimit = int(padding[1])
        for key, value in (tags or {}).items():
            setattr(ds, key, value)
        if per_slice is not None:
            per_slice(ds, m)
        ds.PixelData = stored.astype(dtype).tobytes()
        if transfer_syntax != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax, encoding_plugin="")
        path = folder / f"{prefix}{int(numbers[m]):04d}{suffix}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _base_dataset(study_uid: str, series_uid: str, frame_uid: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uid
    ds.Modality = modality
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.PatientName = "Test^Phantom"
    ds.PatientID = "PH-001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC1"
    ds.SeriesNumber = 3
    ds.SeriesDescription = "Chest 1.0 test"
    ds.Manufacturer = "HyperCT test factory"
    ds.KVP = 120
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def write_single_image(
    path: str | Path,
    *,
    series_uid: str,
    orientation=CORONAL,
    position=(0.0, 0.0, 0.0),
    shape=(16, 20),
    image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    modality: str = "CT",
) -> Path:
    """One extra image (e.g. a localizer) with the given series UID."""
    ds = _base_dataset(generate_uid(), series_uid, generate_uid(), modality)
    ds.ImageType = list(image_type)
    ds.InstanceNumber = 999
    ds.ImagePositionPatient = list(position)
    ds.ImageOrientationPatient = [float(v) for v in (*orientation[0], *orientation[1])]
    ds.PixelSpacing = [1.0, 1.0]
    ds.Rows, ds.Columns = shape
    ds.PixelRepresentation = 1
    ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
    ds.PixelData = np.zeros(shape, np.int16).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_enhanced(ph: Phantom, path: str | Path, *, orientation=AXIAL, intercept: float = -1024.0) -> Path:
    """The phantom as one Enhanced CT multi-frame file (frames in descending order along the normal)."""
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedCTImageStorage

    r = np.asarray(orientation[0], dtype=float)
    c = np.asarray(orientation[1], dtype=float)
    n = np.cross(r, c)
    vol, origin, (dz, dy, dx) = sample_grid(ph, [n, c, r])
    frames = list(range(vol.shape[0]))[::-1]
    ds = _base_dataset(generate_uid(), generate_uid(), generate_uid(), "CT")
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = vol.shape[1:]
    ds.PixelRepresentation = 1
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = [dy, dx]
    pm.SliceThickness = dz
    po = Dataset()
    po.ImageOrientationPatient = [float(v) for v in np.concatenate([r, c])]
    pvt = Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = "1", f"{intercept:g}", "HU"
    shared.PixelMeasuresSequence = Sequence([pm])
    shared.PlaneOrientationSequence = Sequence([po])
    shared.PixelValueTransformationSequence = Sequence([pvt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    for m in frames:
        item = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [float(v) for v in origin + m * dz * n]
        item.PlanePositionSequence = Sequence([pp])
        per.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    ds.PixelData = np.rint(vol[frames] - intercept).astype(np.int16).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti(
    ph: Phantom,
    path: str | Path,
    dirs: list,
    *,
    raw_offset: float = 0.0,
    header_scaled: bool = False,
    sform: np.ndarray | bool = True,
    qform: np.ndarray | bool = True,
) -> Path:
    """The phantom as NIfTI whose data axes (i, j, k) run along the LPS unit vectors ``dirs``.

    The RAS affine is built here from ``dirs`` (LPS -> RAS: negate x and y). Stored values are
    ``hu - raw_offset`` (int16, no header scaling), or with ``header_scaled`` float HU that nibabel
    packs into int16 with its own scl_slope/scl_inter. ``sform``/``qform``: True (the affine),
    False (code 0) or a 4x4 RAS matrix to store instead."""
    import nibabel as nib

    arr, origin, spacing = sample_grid(ph, dirs)
    lps = np.eye(4)
    for ax in range(3):
        lps[:3, ax] = np.asarray(dirs[ax], dtype=float) * spacing[ax]
    lps[:3, 3] = origin
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    if header_scaled:
        img = nib.Nifti1Image((arr * 1.0).astype(np.float32), ras)
        img.set_data_dtype(np.int16)
    else:
        img = nib.Nifti1Image(np.rint(arr - raw_offset).astype(np.int16), ras)
    for which, value in (("sform", sform), ("qform", qform)):
        setter = getattr(img, f"set_{which}")
        if value is False:
            setter(None, code=0)
        else:
            setter(ras if value is True else np.asarray(value), code=1)
    nib.save(img, str(path))
    return Path(path)


def assert_matches_phantom(vol: CTVolume, ph: Phantom, *, atol: float = 0.0) -> None:
    """Same voxels and the same LPS geometry as the phantom (canonical grid)."""
    assert vol.hu.dtype == np.float32
    assert vol.shape == ph.hu.shape
    np.testing.assert_allclose(vol.hu, ph.hu, atol=atol, rtol=0)
    np.testing.assert_allclose(vol.spacing, ph.spacing, atol=1e-5)
    np.testing.assert_allclose(vol.origin, ph.origin, atol=1e-4)
    np.testing.assert_allclose(vol.direction, CANONICAL_DIRECTION, atol=1e-6)
    xs, ys, zs = ph.coords()  # LPS of voxels from the phantom's own definition
    for k, j, i in [(0, 0, 0), (3, 5, 7), tuple(n - 1 for n in ph.hu.shape)]:
        np.testing.assert_allclose(vol.index_to_lps((k, j, i)), [xs[i], ys[j], zs[k]], atol=1e-4)
