"""The DICOM header keywords a ``CTVolume`` carries in ``metadata``, grouped by what they describe.

No imports: the viewer's header panel names its rows from here without loading the reader.
"""

from __future__ import annotations

PATIENT_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge")
STUDY_KEYS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
    "SeriesDescription",
    "SeriesNumber",
)
# What scanned the series and how (no identifiers).
ACQUISITION_KEYS = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "ConvolutionKernel",
    "KVP",
    "SliceThickness",
    "ContrastBolusAgent",
    "BodyPartExamined",
)
# Header keys the DICOM reader copies into CTVolume.metadata; empty values are left out.
METADATA_KEYS = PATIENT_KEYS + STUDY_KEYS + ACQUISITION_KEYS + ("ReferringPhysicianName",)
