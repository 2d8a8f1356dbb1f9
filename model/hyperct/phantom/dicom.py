"""Write a CT volume as a realistic DICOM CT series (for sample data and reader tests).

``write_dicom_series`` writes one file per slice (CT Image Storage, ImageType ORIGINAL\\PRIMARY\\AXIAL,
12-bit unsigned pixels with RescaleIntercept -1024), with configurable acquisition plane (axial,
coronal, sagittal), flipped row/column directions, slice order on disk and in InstanceNumber
(ascending, descending, shuffled), transfer syntax (explicit VR little endian, RLE lossless,
JPEG 2000 lossless, JPEG-LS lossless), an optional localizer (scout) image and an optional second,
thick-slice series in the same folder. Identifiers are synthetic: the patient is "PHANTOM^HYPERCT".
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from hyperct.errors import MissingCodecError
from hyperct.volume import CTVolume

TRANSFER_SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg2000": JPEG2000Lossless,
    "jpegls": JPEGLSLossless,
}
ORIENTATIONS = ("axial", "coronal", "sagittal")
SLICE_ORDERS = ("ascending", "descending", "shuffled")
# canonical array axes (k, j, i) = (0, 1, 2): slice axis, row axis, column axis of each plane
_PLANES = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}
INTERCEPT = -1024.0
MAX_STORED = 4095


def _hu_to_stored(hu: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(hu) - INTERCEPT, 0, MAX_STORED).astype(np.uint16)


def _patient(meta: dict, patient: dict | None) -> dict:
    out = {
        "PatientName": meta.get("PatientName", "PHANTOM^HYPERCT"),
        "PatientID": meta.get("PatientID", "PHANTOM"),
        "PatientBirthDate": meta.get("PatientBirthDate", ""),
        "PatientSex": meta.get("PatientSex", "O"),
        "PatientAge": meta.get("PatientAge", ""),
    }
    out.update(patient or {})
    return out


def _base_dataset(
    meta: dict, pat: dict, ts, sop_uid: str, series_uid: str, series_number: int, desc: str, image_type
) -> FileDataset:
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = CTImageStorage
    fm.MediaStorageSOPInstanceUID = sop_uid
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fm.ImplementationVersionName = "HYPERCT_PHANTOM"
    ds = FileDataset(None, {}, file_meta=fm, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(image_type)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    study_date = meta.get("StudyDate", _dt.date.today().strftime("%Y%m%d"))
    study_time = meta.get("StudyTime", "120000")
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = study_time
    ds.AccessionNumber = meta.get("AccessionNumber", "")
    ds.Modality = "CT"
    ds.Manufacturer = meta.get("Manufacturer", "HyperCT synthetic phantom")
    ds.InstitutionName = "HyperCT synthetic data (not a patient)"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = meta.get("StudyDescription", "CT CHEST WITHOUT CONTRAST (synthetic phantom)")
    ds.SeriesDescription = desc
    ds.ManufacturerModelName = meta.get("ManufacturerModelName", "hyperct.phantom")
    ds.SoftwareVersions = str(meta.get("SoftwareVersions", "1.0"))
    for k, v in pat.items():
        setattr(ds, k, v)
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = meta.get("PatientPosition", "HFS")
    ds.StudyInstanceUID = meta.get("StudyInstanceUID") or generate_uid()
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = meta.get("FrameOfReferenceUID") or generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.KVP = meta.get("KVP", 120)
    if meta.get("XRayTubeCurrent") is not None:
        ds.XRayTubeCurrent = int(meta["XRayTubeCurrent"])
    ds.ConvolutionKernel = meta.get("ConvolutionKernel", "STANDARD")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


def _encode(ds: FileDataset, pixels: np.ndarray, ts, path: Path) -> None:
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    if ts == ExplicitVRLittleEndian:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    else:
        try:
            ds.compress(ts, np.ascontiguousarray(pixels), generate_instance_uid=False)
        except Exception as exc:  # encoder plugin missing or failing
            raise MissingCodecError(
                f"cannot encode pixel data as {ts.name}: {exc}",
                path=path,
                hint="install the encoder (pylibjpeg-rle / pylibjpeg-openjpeg / pyjpegls) or use transfer_syntax='explicit'",
            ) from exc
    ds.save_as(path, enforce_file_format=True)


def write_dicom_series(
    volume: CTVolume,
    out_dir: str | Path,
    *,
    orientation: str = "axial",
    slice_order: str = "ascending",
    transfer_syntax: str = "explicit",
    localizer: bool = False,
    second_series: bool = False,
    patient: dict | None = None,
    seed: int = 0,
    flip_rows: bool = False,
    flip_columns: bool = False,
    series_uid: str | None = None,
    series_number: int = 2,
    series_description: str | None = None,
    prefix: str = "IM",
) -> list[Path]:
    """Write ``volume`` (canonical grid, HU) as a DICOM CT series into ``out_dir``; return the files.

    ``orientation``: acquisition plane (slices along S-I, A-P or R-L); ``flip_rows`` /
    ``flip_columns`` reverse the in-plane row / column directions (ImageOrientationPatient follows);
    ``slice_order``: order of InstanceNumber and of file names along the stack (``shuffled`` uses a
    random permutation from ``seed`` and names files by a random token); ``transfer_syntax``:
    ``explicit`` | ``rle`` | ``jpeg2000`` | ``jpegls`` (all lossless); ``localizer`` adds a coronal
    scout image (its own series), ``second_series`` a 5 mm thick-slice axial reconstruction (its
    own series); ``patient`` overrides patient attributes (PatientName, PatientID, ...).
    HU are stored rounded to integers (RescaleSlope 1, RescaleIntercept -1024, range -1024..3071).
    """
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    if slice_order not in SLICE_ORDERS:
        raise ValueError(f"slice_order must be one of {SLICE_ORDERS}, got {slice_order!r}")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(
            f"transfer_syntax must be one of {tuple(TRANSFER_SYNTAXES)}, got {transfer_syntax!r}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(volume.metadata)
    pat = _patient(meta, patient)
    ts = TRANSFER_SYNTAXES[transfer_syntax]
    rng = np.random.default_rng(seed)
    suid = series_uid or meta.get("SeriesInstanceUID") or generate_uid()
    desc = series_description or meta.get("SeriesDescription", "Chest")
    files = _write_stack(
        volume,
        out,
        meta,
        pat,
        ts,
        rng,
        suid,
        series_number,
        desc,
        orientation,
        slice_order,
        flip_rows,
        flip_columns,
        prefix,
        ("ORIGINAL", "PRIMARY", "AXIAL"),
    )
    if localizer:
        files.append(_write_localizer(volume, out, meta, pat, ts))
    if second_series:
        thick = _thick_volume(volume, 5.0)
        files += _write_stack(
            thick,
            out,
            meta,
            pat,
            ts,
            rng,
            generate_uid(),
            series_number + 1,
            f"Chest {thick.spacing[0]:.1f}mm thick",
            "axial",
            "ascending",
            False,
            False,
            "TH",
            ("DERIVED", "SECONDARY", "AXIAL"),
            thickness=thick.spacing[0],
        )
    return files


def _write_stack(
    volume,
    out,
    meta,
    pat,
    ts,
    rng,
    suid,
    series_number,
    desc,
    orientation,
    slice_order,
    flip_rows,
    flip_columns,
    prefix,
    image_type,
    thickness: float | None = None,
) -> list[Path]:
    hu = volume.hu
    aff = volume.affine  # voxel (i, j, k) -> LPS
    s_ax, r_ax, c_ax = _PLANES[orientation]
    # canonical axis a (0=k, 1=j, 2=i) <-> affine column (2 - a)
    col = lambda a: aff[:3, 2 - a]  # noqa: E731 - LPS step of one voxel along canonical axis a
    sp = volume.spacing  # (sk, sj, si)
    n_s, n_r, n_c = hu.shape[s_ax], hu.shape[r_ax], hu.shape[c_ax]
    row_vec = col(c_ax) / sp[c_ax] * (-1 if flip_columns else 1)  # direction of increasing column
    col_vec = col(r_ax) / sp[r_ax] * (-1 if flip_rows else 1)  # direction of increasing row
    stored = _hu_to_stored(hu)
    if slice_order == "ascending":
        numbers = np.arange(1, n_s + 1)
    elif slice_order == "descending":
        numbers = np.arange(n_s, 0, -1)
    else:
        numbers = rng.permutation(n_s) + 1
    if thickness is None:
        thickness = float(meta.get("SliceThickness", sp[s_ax])) if orientation == "axial" else float(sp[s_ax])
    files = []
    for s in range(n_s):
        idx = [slice(None)] * 3
        idx[s_ax] = s
        img = stored[tuple(idx)]  # 2-D, axes in canonical order of (r_ax, c_ax) minus s_ax
        if r_ax > c_ax:
            img = img.T
        if flip_rows:
            img = img[::-1]
        if flip_columns:
            img = img[:, ::-1]
        first = [0, 0, 0]
        first[s_ax] = s
        first[r_ax] = n_r - 1 if flip_rows else 0
        first[c_ax] = n_c - 1 if flip_columns else 0
        k, j, i = first
        pos = aff @ np.array([i, j, k, 1.0])
        sop = generate_uid()
        ds = _base_dataset(meta, pat, ts, sop, suid, series_number, desc, image_type)
        ds.InstanceNumber = int(numbers[s])
        ds.ImagePositionPatient = [round(float(v), 4) for v in pos[:3]]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row_vec, *col_vec)]
        ds.PixelSpacing = [round(float(sp[r_ax]), 6), round(float(sp[c_ax]), 6)]
        ds.SliceThickness = round(float(thickness), 4)
        ds.SpacingBetweenSlices = round(float(sp[s_ax]), 4)
        normal = np.cross(row_vec, col_vec)
        ds.SliceLocation = round(float(pos[:3] @ normal), 4)
        ds.RescaleIntercept = INTERCEPT
        ds.RescaleSlope = 1.0
        ds.RescaleType = "HU"
        ds.WindowCenter = [40, -600]
        ds.WindowWidth = [400, 1500]
        ds.WindowCenterWidthExplanation = ["MEDIASTINUM", "LUNG"]
        if slice_order == "shuffled":
            name = f"{prefix}_{rng.integers(0, 16**10):010x}.dcm"
        else:
            name = f"{prefix}{int(numbers[s]):04d}.dcm"
        path = out / name
        _encode(ds, img, ts, path)
        files.append(path)
    return files


def _thick_volume(volume: CTVolume, mm: float) -> CTVolume:
    sk = volume.spacing[0]
    m = max(2, int(round(mm / sk)))
    n = volume.hu.shape[0] // m
    hu = volume.hu[: n * m].reshape(n, m, *volume.hu.shape[1:]).mean(axis=1)
    origin = volume.index_to_lps([(m - 1) / 2.0, 0, 0])
    return CTVolume(
        hu=hu.astype(np.float32),
        spacing=(sk * m, volume.spacing[1], volume.spacing[2]),
        origin=tuple(origin),
        direction=volume.direction,
        metadata=dict(volume.metadata),
    )


def _write_localizer(volume: CTVolume, out: Path, meta: dict, pat: dict, ts) -> Path:
    """A coronal (AP) scout image: mean attenuation along A-P (not in HU)."""
    hu = volume.hu
    proj = np.clip(hu + 1000.0, 0, None).mean(axis=1)  # (k, i)
    img = np.clip(proj / max(float(proj.max()), 1.0) * 4000.0, 0, MAX_STORED).astype(np.uint16)
    aff = volume.affine
    j_mid = hu.shape[1] // 2
    pos = aff @ np.array([0, j_mid, 0, 1.0])
    row_vec = aff[:3, 0] / volume.spacing[2]
    col_vec = aff[:3, 2] / volume.spacing[0]
    ds = _base_dataset(
        meta, pat, ts, generate_uid(), generate_uid(), 1, "Topogram AP", ("ORIGINAL", "PRIMARY", "LOCALIZER")
    )
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [round(float(v), 4) for v in pos[:3]]
    ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row_vec, *col_vec)]
    ds.PixelSpacing = [round(float(volume.spacing[0]), 6), round(float(volume.spacing[2]), 6)]
    ds.SliceThickness = 1.0
    ds.RescaleIntercept = 0.0
    ds.RescaleSlope = 1.0
    path = out / "SCOUT0001.dcm"
    _encode(ds, img, ts, path)
    return path
