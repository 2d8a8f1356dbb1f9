"""Test-only writers: a small axial CT series with patient identifiers (pydicom), and NIfTI files
(nibabel) with a chosen, non-canonical voxel order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.support.volumes import PHI, chest_hu


def write_dicom_series(
    out_dir: Path, *, shape=(24, 40, 40), spacing=(6.0, 8.0, 8.0), phi: bool = True, seed: int = 1
) -> dict:
    """Axial slices (stored inferior first, to exercise sorting); returns the UIDs written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    hu = chest_hu(shape)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    nk, nj, ni = shape
    sk, sj, si = spacing
    sops = []
    for k in reversed(range(nk)):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.SeriesNumber, ds.InstanceNumber = 3, k + 1
        ds.StudyDate, ds.StudyTime = "20240105", "101500"
        ds.SeriesDescription = "Thorax 6mm"
        ds.Manufacturer, ds.ManufacturerModelName = "ACME", "Imaginary 64"
        ds.ConvolutionKernel, ds.KVP, ds.SliceThickness = "B30f", 120, sk
        ds.PatientSex, ds.PatientAge = "F", "066Y"
        if phi:
            for key, value in PHI.items():
                setattr(ds, key, value)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-160.0, -160.0, 60.0 - k * sk]
        ds.PixelSpacing = [sj, si]
        ds.Rows, ds.Columns = nj, ni
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (hu[k] + 1024).astype(np.int16).tobytes()
        ds.save_as(out_dir / f"IM{nk - k:04d}.dcm", enforce_file_format=True)
        sops.append(sop)
    return {"study": study, "series": series, "sops": sops}


def write_nifti(path: Path, data_ijk: np.ndarray, affine_ras: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data_ijk, dtype=np.int16), affine_ras)
    img.set_sform(affine_ras, code=1)
    img.set_qform(affine_ras, code=1)
    nib.save(img, str(path))


def oblique_order_nifti(
    path: Path, *, shape_ijk=(20, 36, 32), marker=(3, 25, 9)
) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI far from canonical order: file axis i runs posterior->anterior, j superior->inferior,
    k right->left; a bright marker voxel at ``marker`` (file index i, j, k). Returns (data, affine)."""
    ni, nj, nk = shape_ijk
    affine = np.array(
        [
            [0.0, 0.0, -9.0, 140.0],  # x (R->L is -x in RAS) from k
            [10.0, 0.0, 0.0, -100.0],  # y (anterior +) from i
            [0.0, -7.0, 0.0, 120.0],  # z (superior +) from j
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    rng = np.random.default_rng(3)
    data = rng.integers(-900, -700, size=shape_ijk).astype(np.int16)
    data[2:-2, :, 4:-4] = 40
    data[marker] = 1500
    write_nifti(path, data, affine)
    return data, affine
