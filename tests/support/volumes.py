"""Synthetic CT volumes in memory (``CTVolume``): a small CT for the viewer, and a crude chest with
patient identifiers (``PHI``) and DICOM-like metadata for the report tests."""

from __future__ import annotations

import numpy as np

from hyperct.volume import CTVolume

PHI = {
    "PatientName": "QUIXOTE^ALONSO^J",
    "PatientID": "PID-775533",
    "PatientBirthDate": "19470321",
    "AccessionNumber": "ACC-99120",
}
PHI_SEARCH = ("QUIXOTE", "ALONSO", "PID-775533", "19470321", "1947-03-21", "ACC-99120")
STUDY_UID = "1.2.826.0.1.3680043.8.498.1001"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1002"


def chest_hu(shape=(48, 64, 64)) -> np.ndarray:
    """A crude chest: soft-tissue body, two lungs, a heart, a spine; integer HU."""
    nk, nj, ni = shape
    k, j, i = np.indices(shape).astype(np.float32)
    cy, cx = (nj - 1) / 2, (ni - 1) / 2
    hu = np.full(shape, -1000.0, np.float32)
    body = ((j - cy) / (0.42 * nj)) ** 2 + ((i - cx) / (0.47 * ni)) ** 2 <= 1
    hu[body] = 40.0
    for side in (-1, 1):
        lung = ((j - cy + 0.03 * nj) / (0.3 * nj)) ** 2 + (
            (i - cx - side * 0.22 * ni) / (0.16 * ni)
        ) ** 2 <= 1
        hu[lung & body] = -860.0
    heart = ((j - cy + 0.1 * nj) / (0.16 * nj)) ** 2 + ((i - cx + 0.05 * ni) / (0.15 * ni)) ** 2 + (
        (k - 0.6 * nk) / (0.3 * nk)
    ) ** 2 <= 1
    hu[heart] = 45.0
    spine = ((j - cy - 0.32 * nj) / (0.07 * nj)) ** 2 + ((i - cx) / (0.07 * ni)) ** 2 <= 1
    hu[spine] = 600.0
    rng = np.random.default_rng(0)
    return (hu + rng.normal(0, 15, shape)).round().astype(np.float32)


def make_volume(*, dicom: bool = True, shape=(48, 64, 64), phi: bool = True) -> CTVolume:
    md = {
        "StudyInstanceUID": STUDY_UID,
        "SeriesInstanceUID": SERIES_UID,
        "FrameOfReferenceUID": "1.2.826.0.1.3680043.8.498.1003",
        "StudyDate": "20240105",
        "StudyTime": "101500",
        "SeriesDescription": "Chest 1.0 B30f",
        "PatientSex": "M",
        "PatientAge": "077Y",
        "Manufacturer": "ACME",
        "ManufacturerModelName": "Imaginary 64",
        "ConvolutionKernel": "B30f",
        "KVP": 120.0,
        "SliceThickness": 5.0,
    }
    if phi:
        md.update(PHI)
    if dicom:
        md["ReferencedInstances"] = [
            {
                "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
                "SOPInstanceUID": f"1.2.826.0.1.3680043.8.498.2.{n + 1}",
            }
            for n in range(shape[0])
        ]
    vol = CTVolume(
        hu=chest_hu(shape),
        spacing=(5.0, 5.0, 5.0),
        origin=(-157.5, -157.5, 100.0),
        metadata=md,
        source_paths=[f"/archive/QUIXOTE_ALONSO/ct/IM{n:04d}.dcm" for n in range(shape[0])]
        if dicom
        else ["/archive/QUIXOTE_ALONSO/ct.nii.gz"],
        source_format="dicom" if dicom else "nifti",
    )
    vol.warn("thick_slices", "slices are 5.0 mm thick; thin findings may be missed")
    return vol


def small_ct(n_slices: int = 40, seed: int = 0, description: str = "small synthetic") -> CTVolume:
    """A small noisy CT (``n_slices`` x 96 x 96): air, a soft-tissue body and two lungs, as if read
    from a NIfTI file (the viewer tests)."""
    rng = np.random.default_rng(seed)
    hu = np.full((n_slices, 96, 96), -1000.0, np.float32)
    zz, yy, xx = np.mgrid[:n_slices, :96, :96]
    body = ((yy - 48) / 40.0) ** 2 + ((xx - 48) / 44.0) ** 2 < 1
    hu[body] = 40.0
    lungs = (((yy - 46) / 28.0) ** 2 + ((np.abs(xx - 48) - 20) / 14.0) ** 2 < 1) & body
    hu[lungs] = -850.0
    hu += rng.normal(0, 15, hu.shape).astype(np.float32)
    return CTVolume(
        hu=hu,
        spacing=(2.5, 3.5, 3.5),
        origin=(-168.0, -168.0, 50.0),
        metadata={"SeriesDescription": description, "PatientName": "DOE^JANE", "PatientID": "PID-42"},
        source_format="nifti",
        source_paths=[f"/tmp/{description.replace(' ', '_')}.nii.gz"],
    )
