"""What the reader fuzz tests mutate in a DICOM file: the header keywords the reader relies on, and
``set_tag``, which writes any value (or deletes the element) even where pydicom would refuse it."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

# The reader's geometry, pixel-format, rescale and series-membership keywords (the data set's).
HEADER_KEYWORDS = [
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "RescaleSlope",
    "RescaleIntercept",
    "SeriesInstanceUID",
    "Modality",
    "ImageType",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "SamplesPerPixel",
    "NumberOfFrames",
    "PixelPaddingValue",
    "SOPClassUID",
    "SliceThickness",
    "PhotometricInterpretation",
]
# ... and the file meta's transfer syntax (``set_tag`` writes it into ``file_meta``).
ALL_KEYWORDS = [*HEADER_KEYWORDS, "TransferSyntaxUID"]


def save_unvalidated(ds: pydicom.Dataset, path: Path) -> None:
    """Write ``ds`` as it is: pydicom's checks of the values on writing are turned off."""
    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        ds.save_as(path, enforce_file_format=False)
    finally:
        config.settings.writing_validation_mode = old


def set_tag(path: Path, keyword: str, value) -> bool:
    """Set ``keyword`` to ``value`` in the file (``None`` deletes it); False if the file no longer reads.

    A value pydicom refuses is stored as raw text bytes; a data set that cannot be encoded at all
    gets a flipped byte instead (the file is damaged either way)."""
    try:
        ds = pydicom.dcmread(path)
    except Exception:  # noqa: BLE001 - already broken by an earlier mutation
        return False
    target = ds.file_meta if keyword == "TransferSyntaxUID" else ds
    if value is None:
        if keyword in target:
            delattr(target, keyword)
    else:
        try:
            setattr(target, keyword, value)
        except Exception:  # noqa: BLE001 - pydicom refuses the value: store it as raw text bytes
            raw = str(value).encode("latin-1", "replace")
            raw += b" " * (len(raw) % 2)
            tag = Tag(tag_for_keyword(keyword))
            target[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)
    try:
        save_unvalidated(ds, path)
    except Exception:  # noqa: BLE001 - not encodable: flip a byte instead
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0xFF
        path.write_bytes(bytes(data))
    return True
