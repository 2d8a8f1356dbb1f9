"""Finding DICOM files and reading their headers (``stop_before_pixels``: no pixel data is read).

Every file under the given folders/paths is looked at (any name, DICOMDIR-referenced files included);
each readable image file (or each frame of an enhanced multi-frame CT) becomes a ``SliceHeader``,
non-image objects a ``NonImageFile``, and DICOM files that cannot be parsed are listed as unreadable.
Grouping into series and choosing one is ``dicom_series``.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from hyperct.errors import CorruptFileError
from hyperct.metadata import METADATA_KEYS

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
CT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}
NON_IMAGE_MODALITIES = {
    "SR": "structured report",
    "PR": "presentation state",
    "KO": "key object selection",
    "RTSTRUCT": "RT structure set",
    "RTPLAN": "RT plan",
    "RTRECORD": "RT treatment record",
    "REG": "registration",
    "DOC": "encapsulated document",
    "SEG": "segmentation",
    "ECG": "waveform",
    "AU": "audio",
}
LOCALIZER_WORDS = {"LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW", "SCANOGRAM"}

# --- per-file headers -------------------------------------------------------------------------


@dataclass
class SliceHeader:
    """One 2-D image (a single-frame file, or one frame of a multi-frame file)."""

    path: str
    frame: int | None = None
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    series_uid: str = ""
    modality: str = ""
    image_type: tuple[str, ...] = ()
    rows: int = 0
    cols: int = 0
    ipp: np.ndarray | None = None
    iop: np.ndarray | None = None
    pixel_spacing: tuple[float, float] | None = None
    slice_thickness: float | None = None
    slope: float = 1.0
    intercept: float = 0.0
    has_rescale: bool = False
    padding: tuple[float, float] | None = None  # inclusive range of stored values that are padding
    samples_per_pixel: int = 1
    pixel_representation: int = 0
    bits_allocated: int = 16
    transfer_syntax: str = ""
    series_number: int | None = None
    series_description: str = ""
    bits_stored: int = 16
    pixel_offset: int | None = None  # file offset of native (uncompressed little-endian) pixel data
    pixel_nbytes: int | None = None
    error: str | None = None  # a header value that could not be read
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path if self.frame is None else f"{self.path} [frame {self.frame + 1}]"

    @property
    def is_localizer(self) -> bool:
        return any(w in LOCALIZER_WORDS for w in self.image_type)


@dataclass
class NonImageFile:
    path: str
    series_uid: str
    modality: str
    reason: str
    series_description: str = ""
    series_number: int | None = None


@dataclass
class ScanResult:
    source: str
    images: list[SliceHeader] = field(default_factory=list)
    non_images: list[NonImageFile] = field(default_factory=list)
    unreadable: list[tuple[str, CorruptFileError]] = field(default_factory=list)  # (path, why)
    not_dicom: list[str] = field(default_factory=list)
    special: list[str] = field(default_factory=list)  # named pipes, devices, sockets: never opened
    n_files: int = 0


# --- opening files safely ----------------------------------------------------------------------


def is_regular_file(path: str | os.PathLike[str]) -> bool:
    """True for a regular file (symlinks followed); False for FIFOs, devices, sockets, folders, missing."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def open_regular(path: str | os.PathLike[str]) -> Any:
    """Open ``path`` for binary reading, refusing anything but a regular file.

    The file is opened non-blocking (so a named pipe cannot block the open) and checked with
    ``fstat`` on the open descriptor (so it cannot be swapped for a pipe between check and open).
    Raises ``OSError`` for a non-regular file.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(f"not a regular file ({_file_kind(mode)}); only regular files are read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def file_kind(path: str | os.PathLike[str]) -> str:
    """'a named pipe', 'a device', ... for a path that is not a regular file."""
    try:
        return _file_kind(os.stat(path).st_mode)
    except OSError as exc:
        return f"not readable ({exc.strerror or exc})"


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return bool(np.isfinite(value))
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def _plain(value: Any) -> Any:
    """pydicom value -> plain Python (str/int/float/list)."""
    if value is None:
        return None
    if isinstance(value, pydicom.valuerep.PersonName):
        return str(value)
    if isinstance(value, pydicom.multival.MultiValue):
        return [_plain(v) for v in value]
    if isinstance(value, pydicom.valuerep.DSfloat | pydicom.valuerep.DSdecimal):
        return float(value)
    if isinstance(value, pydicom.valuerep.IS):
        return int(value)
    if isinstance(value, bytes):
        return None
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def _get(ds: Any, keyword: str, default: Any = None) -> Any:
    value = ds.get(keyword, default)
    return default if value is None or value == "" else value


def _floats(value: Any, n: int, keyword: str) -> np.ndarray:
    try:
        arr = np.array(
            [
                float(v)
                for v in (value if isinstance(value, list | tuple | pydicom.multival.MultiValue) else [value])
            ]
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{keyword} value {value!r} is not numeric") from exc
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{keyword} must hold {n} finite numbers, got {value!r}")
    return arr


def _padding_range(ds: Any, pixel_representation: int, bits_allocated: int) -> tuple[float, float] | None:
    if "PixelPaddingValue" not in ds:
        return None
    vals = []
    for kw in ("PixelPaddingValue", "PixelPaddingRangeLimit"):
        v = ds.get(kw)
        if v is None or v == "" or isinstance(v, bytes):
            continue
        v = int(v[0] if isinstance(v, pydicom.multival.MultiValue) else v)
        if pixel_representation == 1 and v >= 2 ** (bits_allocated - 1):
            v -= 2**bits_allocated  # written unsigned in a signed image
        vals.append(float(v))
    if not vals:
        return None
    return (min(vals), max(vals))


def _metadata(ds: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for kw in METADATA_KEYS:
        try:
            value = _plain(ds.get(kw))
        except Exception:  # noqa: BLE001 - an unreadable optional tag is simply left out
            continue
        if value is None or value == "" or value == [] or not _finite(value):
            continue  # NaN/inf header values are left out (they are not data, and not valid JSON)
        if isinstance(value, list):
            value = "\\".join(str(v) for v in value)
        meta[kw] = value
    return meta


def _first_item(seq_owner: Any, keyword: str) -> Any:
    seq = seq_owner.get(keyword) if seq_owner is not None else None
    if seq is None or len(seq) == 0:
        return None
    return seq[0]


def _enhanced_frames(ds: Any, base: SliceHeader) -> list[SliceHeader]:
    """Per-frame headers of an enhanced (multi-frame) CT from its functional groups."""
    n_frames = int(ds.NumberOfFrames)
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != n_frames:
        raise ValueError(
            f"NumberOfFrames is {n_frames} but PerFrameFunctionalGroupsSequence has {len(per_frame)} items"
        )

    def lookup(index: int, seq_kw: str, kw: str) -> Any:
        for groups in ((per_frame[index] if per_frame else None), shared):
            item = _first_item(groups, seq_kw)
            if item is not None and kw in item:
                return item.get(kw)
        return None

    out = []
    for f in range(n_frames):
        h = SliceHeader(**{**base.__dict__, "frame": f, "meta": base.meta})
        ipp = lookup(f, "PlanePositionSequence", "ImagePositionPatient")
        iop = lookup(f, "PlaneOrientationSequence", "ImageOrientationPatient")
        ps = lookup(f, "PixelMeasuresSequence", "PixelSpacing")
        th = lookup(f, "PixelMeasuresSequence", "SliceThickness")
        slope = lookup(f, "PixelValueTransformationSequence", "RescaleSlope")
        inter = lookup(f, "PixelValueTransformationSequence", "RescaleIntercept")
        ftype = lookup(f, "CTImageFrameTypeSequence", "FrameType")
        h.ipp = _floats(ipp, 3, "ImagePositionPatient") if ipp is not None else None
        h.iop = _floats(iop, 6, "ImageOrientationPatient") if iop is not None else None
        h.pixel_spacing = tuple(_floats(ps, 2, "PixelSpacing")) if ps is not None else None
        h.slice_thickness = _thickness(th) if th not in (None, "") else base.slice_thickness
        if slope is not None or inter is not None:
            h.slope, h.intercept = _rescale(slope, inter, h)
            h.has_rescale = True
        if ftype:
            h.image_type = tuple(str(v).upper() for v in ftype)
        out.append(h)
    return out


def _check_complete(ds: Any, pos: int, size: int) -> None:
    """pydicom stops quietly at a premature end of file: detect a header cut short."""
    if len(ds) == 0:
        raise EOFError("no data elements after the file meta information (the file is cut short)")
    last = ds._dict[next(reversed(ds._dict))] if hasattr(ds, "_dict") else None
    length = getattr(last, "length", None)
    value = getattr(last, "value", None)
    if length is not None and length != 0xFFFFFFFF and isinstance(value, bytes) and len(value) < length:
        raise EOFError(
            f"element {last.tag} ends after {len(value)} of {length} bytes (the file is cut short)"
        )
    tell = getattr(last, "value_tell", None)
    if pos >= size and tell is not None and length not in (None, 0xFFFFFFFF) and tell + length < size:
        raise EOFError(
            f"{size - tell - length} stray byte(s) after the last complete element (the file is cut short)"
        )


def _thickness(value: Any) -> float:
    t = float(value)
    if not np.isfinite(t):
        raise ValueError(f"SliceThickness {value!r} is not a finite number")
    return t


def _rescale(slope: Any, inter: Any, h: SliceHeader) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) as floats; refuse values that are unusable or overflow float32 HU."""
    s = float(slope) if slope not in (None, "") else 1.0
    b = float(inter) if inter not in (None, "") else 0.0
    if not (np.isfinite(s) and np.isfinite(b)) or s == 0:
        raise ValueError(f"RescaleSlope/RescaleIntercept {slope!r}/{inter!r} are not usable")
    bits = min(max(int(h.bits_stored), 1), 64)
    if abs(s) * float(2**bits) + abs(b) > FLOAT32_MAX:
        raise ValueError(
            f"RescaleSlope/RescaleIntercept {slope!r}/{inter!r} overflow: stored values would become infinite HU"
        )
    return s, b


FLOAT32_MAX = float(np.finfo(np.float32).max)


def expected_pixel_bytes(h: SliceHeader, n_frames: int = 1) -> int:
    """Bytes of uncompressed pixel data that Rows x Columns x frames x samples x BitsAllocated need."""
    bits = h.rows * h.cols * max(n_frames, 1) * max(h.samples_per_pixel, 1) * h.bits_allocated
    return (bits + 7) // 8


def _check_pixel_length(h: SliceHeader, n_frames: int, size: int) -> None:
    """Native pixel data: the element must hold exactly what the header declares, and be in the file."""
    if h.pixel_offset is None or h.pixel_nbytes is None:
        return
    need = expected_pixel_bytes(h, n_frames)
    have = h.pixel_nbytes
    dims = f"Rows x Columns{' x frames' if n_frames > 1 else ''} x samples x bytes"
    if have < need:
        raise ValueError(f"pixel data is too short: it holds {have} bytes, but {dims} = {need}")
    if have > need + (need % 2):  # one byte of padding to an even length is allowed
        raise ValueError(
            f"pixel data holds {have} bytes, more than {dims} = {need} (the header does not describe the image)"
        )
    if h.pixel_offset + need > size:
        raise ValueError(f"pixel data is cut short ({max(size - h.pixel_offset, 0)} of {need} bytes present)")


NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


def _native_pixel_element(fp: Any, pos: int, size: int, transfer_syntax: str) -> tuple[int, int] | None:
    """(value offset, length) of an uncompressed Pixel Data element starting at ``pos``, if any."""
    if transfer_syntax not in NATIVE_LITTLE_ENDIAN or pos + 12 > size:
        return None
    fp.seek(pos)
    head = fp.read(12)
    if head[:4] != _PIXEL_DATA_TAG:
        return None
    if transfer_syntax == "1.2.840.10008.1.2.1":  # explicit VR: OB/OW with a 4-byte length
        if head[4:6] not in (b"OB", b"OW") or head[6:8] != b"\0\0":
            return None
        offset, length = pos + 12, int.from_bytes(head[8:12], "little")
    else:
        offset, length = pos + 8, int.from_bytes(head[4:8], "little")
    return None if length == 0xFFFFFFFF else (offset, length)


def read_header(
    path: str, *, force: bool = False, meta_cache: dict[str, dict[str, Any]] | None = None
) -> list[SliceHeader] | NonImageFile:
    """Headers of one DICOM file; raises ``CorruptFileError`` if it cannot be parsed at all.

    ``meta_cache`` (series UID -> metadata dict) avoids re-reading series-level tags for every slice.
    """
    native = None
    try:
        with open_regular(path) as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=force)
            pos, size = fp.tell(), os.fstat(fp.fileno()).st_size
            _check_complete(ds, pos, size)
            ts = str(_get(ds.get("file_meta", {}), "TransferSyntaxUID", ""))
            native = _native_pixel_element(fp, pos, size, ts)
        sop_class = str(
            _get(ds, "SOPClassUID", "") or _get(ds.get("file_meta", {}), "MediaStorageSOPClassUID", "")
        )
        series_uid = str(_get(ds, "SeriesInstanceUID", ""))
        modality = str(_get(ds, "Modality", "")).upper()
        description = str(_get(ds, "SeriesDescription", ""))
    except Exception as exc:  # noqa: BLE001 - any parse failure of a file is reported as corrupt
        raise CorruptFileError(
            f"not readable as DICOM ({type(exc).__name__}: {exc})",
            path=path,
            hint="the file is truncated or damaged; copy it again from the source media or PACS",
        ) from exc
    try:
        series_number = int(ds.SeriesNumber) if _get(ds, "SeriesNumber") is not None else None
    except Exception:  # noqa: BLE001
        series_number = None

    if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return NonImageFile(path, series_uid, modality, "non-image (DICOMDIR index)")
    if modality in NON_IMAGE_MODALITIES and sop_class not in CT_SOP_CLASSES:
        return NonImageFile(
            path,
            series_uid,
            modality,
            f"non-image ({NON_IMAGE_MODALITIES[modality]})",
            description,
            series_number,
        )
    if sop_class in CT_SOP_CLASSES and ("Rows" not in ds or "Columns" not in ds or pos >= size):
        # a CT image object without its matrix size or pixel data: a slice cut short, not a non-image
        what = "Rows/Columns" if ("Rows" not in ds or "Columns" not in ds) else "pixel data"
        raise CorruptFileError(
            f"not readable as DICOM (a {CT_SOP_CLASSES[sop_class]} file without {what}; the file is cut "
            "short or damaged)",
            path=path,
            hint="the file is truncated or damaged; copy it again from the source media or PACS",
        )
    if "Rows" not in ds or "Columns" not in ds:
        return NonImageFile(
            path,
            series_uid,
            modality,
            f"non-image ({modality or 'unknown'} object without pixel data)",
            description,
            series_number,
        )

    h = SliceHeader(path=path, sop_class_uid=sop_class, series_uid=series_uid, modality=modality)
    h.series_description = description
    h.series_number = series_number
    if meta_cache is None:
        h.meta = _metadata(ds)
    else:
        h.meta = meta_cache.get(series_uid) or meta_cache.setdefault(series_uid, _metadata(ds))
    if native is not None:
        h.pixel_offset, h.pixel_nbytes = native
    try:
        h.sop_instance_uid = str(_get(ds, "SOPInstanceUID", ""))
        h.transfer_syntax = str(_get(ds.get("file_meta", {}), "TransferSyntaxUID", ""))
        h.image_type = tuple(str(v).upper() for v in (ds.get("ImageType") or []))
        h.rows, h.cols = int(ds.Rows), int(ds.Columns)
        if not (0 < h.rows <= 8192 and 0 < h.cols <= 8192):
            raise ValueError(f"matrix size {h.rows}x{h.cols} is not plausible")
        h.samples_per_pixel = int(_get(ds, "SamplesPerPixel", 1))
        h.pixel_representation = int(_get(ds, "PixelRepresentation", 0))
        h.bits_allocated = int(_get(ds, "BitsAllocated", 16))
        h.bits_stored = int(_get(ds, "BitsStored", h.bits_allocated))
        if not (1 <= h.samples_per_pixel <= 4 and h.bits_allocated in (1, 8, 16, 32, 64)):
            raise ValueError(
                f"SamplesPerPixel {h.samples_per_pixel} / BitsAllocated {h.bits_allocated} are not plausible"
            )
        thickness = _get(ds, "SliceThickness")
        h.slice_thickness = _thickness(thickness) if thickness is not None else None
        slope, inter = _get(ds, "RescaleSlope"), _get(ds, "RescaleIntercept")
        h.has_rescale = slope is not None or inter is not None
        h.slope, h.intercept = _rescale(slope, inter, h)
        h.padding = _padding_range(ds, h.pixel_representation, h.bits_allocated)
        n_frames = int(_get(ds, "NumberOfFrames", 1) or 1)
        _check_pixel_length(h, n_frames, size)
        if n_frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
            return _enhanced_frames(ds, h)
        ipp, iop, ps = (
            ds.get("ImagePositionPatient"),
            ds.get("ImageOrientationPatient"),
            ds.get("PixelSpacing"),
        )
        h.ipp = _floats(ipp, 3, "ImagePositionPatient") if ipp not in (None, "") else None
        h.iop = _floats(iop, 6, "ImageOrientationPatient") if iop not in (None, "") else None
        h.pixel_spacing = (
            tuple(float(v) for v in _floats(ps, 2, "PixelSpacing")) if ps not in (None, "") else None
        )
    except Exception as exc:  # noqa: BLE001 - an unreadable header value makes this slice unusable
        h.error = f"{type(exc).__name__}: {exc}"
    return [h]


# --- finding files ----------------------------------------------------------------------------


def looks_like_dicom(path: str) -> tuple[bool, bool]:
    """(is DICOM, needs force): 'DICM' at offset 128, or a bare dataset starting with group 0x0008."""
    try:
        with open_regular(path) as f:
            head = f.read(132)
    except OSError:
        return False, False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True, False
    if len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00") and head[3] == 0:
        return True, True
    return False, False


def _walk(folder: str, special: list[str] | None = None) -> list[str]:
    """Regular files under ``folder`` (hidden ones skipped); named pipes, devices and sockets are never
    opened (reading a pipe would block forever): they are listed in ``special``."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            if is_regular_file(path):
                out.append(path)
            elif special is not None:
                special.append(path)
    return out


def _dicomdir_files(path: str) -> list[str]:
    """Files referenced by a DICOMDIR (or, if it cannot be used, everything under its folder)."""
    try:
        from pydicom.fileset import FileSet

        with open_regular(path) as fp:
            fs = FileSet(pydicom.dcmread(fp))
        root = os.path.realpath(os.path.dirname(path))
        files = [str(inst.path) for inst in fs]
        inside = all(os.path.commonpath([root, os.path.realpath(f)]) == root for f in files)
        if files and inside and all(is_regular_file(f) for f in files):
            return files
    except Exception:  # noqa: BLE001 - a broken index falls back to a folder scan
        pass
    return _walk(str(Path(path).parent))


def collect_files(sources: list[Path], special: list[str] | None = None) -> list[str]:
    files: list[str] = []
    for src in sources:
        if src.is_dir():
            files.extend(_walk(str(src), special))
        elif not is_regular_file(src):
            if special is not None:
                special.append(str(src))
        elif src.name.upper() == "DICOMDIR":
            files.append(str(src))
            files.extend(_dicomdir_files(str(src)))
        else:
            files.append(str(src))
    seen: set[str] = set()
    unique = []
    for f in files:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def scan(sources: list[Path], label: str) -> ScanResult:
    """Read the headers of every DICOM file under ``sources``."""
    result = ScanResult(source=label)
    meta_cache: dict[str, dict[str, Any]] = {}
    for path in collect_files(sources, result.special):
        result.n_files += 1
        is_dicom, force = looks_like_dicom(path)
        if not is_dicom:
            result.not_dicom.append(path)
            continue
        try:
            headers = read_header(path, force=force, meta_cache=meta_cache)
        except CorruptFileError as exc:
            if force:  # a bare (no preamble) guess that did not parse: just not DICOM
                result.not_dicom.append(path)
            else:
                result.unreadable.append((path, exc))
            continue
        if isinstance(headers, NonImageFile):
            result.non_images.append(headers)
        else:
            result.images.extend(headers)
    _flag_lookalikes(result)
    return result


def name_pattern(name: str) -> str:
    """A file name with its runs of digits and dots collapsed: 'IM0020' and 'IM0001' give 'IM#',
    '1.2.840.1.55' and '1.3.6.7' give '#', 'IM0001.dcm' gives 'IM#dcm'."""
    return re.sub(r"[0-9.]+", "#", name.lower())


def _flag_lookalikes(result: ScanResult) -> None:
    """Non-DICOM files named like the DICOM image files in their folder are damaged slices, not strangers.

    An empty or truncated slice has no 'DICM' marker, so it would otherwise be passed over as a
    non-DICOM file and the series would silently lose it (at either end of the stack nothing else
    would notice). Such files are listed as unreadable, with the reason."""
    patterns: dict[str, set[str]] = {}
    for h in result.images:
        patterns.setdefault(os.path.dirname(h.path), set()).add(name_pattern(os.path.basename(h.path)))
    if not patterns:
        return
    kept = []
    for path in result.not_dicom:
        pats = patterns.get(os.path.dirname(path))
        if not pats or name_pattern(os.path.basename(path)) not in pats:
            kept.append(path)
            continue
        try:
            size = os.stat(path).st_size
        except OSError:
            size = -1
        what = "an empty file (0 bytes)" if size == 0 else f"no DICOM header ({size} bytes, no 'DICM' marker)"
        exc = CorruptFileError(
            f"not readable as DICOM ({what}), although it is named like the DICOM images beside it",
            path=path,
            hint="the file is truncated or damaged; copy it again from the source media or PACS",
        )
        result.unreadable.append((path, exc))
    result.not_dicom = kept
