"""NIfTI (nibabel) and NRRD/MHA/MHD (SimpleITK) volumes -> canonical ``CTVolume``.

Before any voxel memory is allocated, the declared size is checked against ``geometry.MAX_VOXELS`` and
against the bytes actually present (a .nii.gz is inflated once, which also checks its gzip CRC and
length; a .nii must hold exactly the declared data). Detached NRRD/MHD data files must be regular
files inside the header's folder.

NIfTI affines are RAS and are converted to LPS. The sform is used when its code is set, else the
qform; both set but disagreeing, neither set, singular or sheared -> ``SeriesGeometryError``.
Values: the file's own scaling (NIfTI scl_slope/scl_inter) unless ``rescale=(slope, intercept)`` is
given, which then applies to the raw stored values. NaN/inf become -1000 HU with a QC warning.
"""

from __future__ import annotations

import bz2
import gzip
import os
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from hyperct.errors import CorruptFileError, SeriesGeometryError, TooFewSlicesError, UnsupportedInputError
from hyperct.io import geometry, quality
from hyperct.io.dicom_scan import file_kind, is_regular_file, open_regular
from hyperct.volume import CTVolume, QCWarning

AIR_HU = -1000.0
AFFINE_ATOL = 1e-3  # max abs difference of sform vs qform matrix entries (mm per voxel)
AFFINE_ORIGIN_ATOL_MM = 0.05
_CHUNK = 1 << 20
_HEADER_READ = 1 << 16  # NRRD/MHA header text is read from the first 64 KiB
MAX_DATA_FILES = 100_000  # a detached header naming more data files than this is refused


def _corrupt(path: Path, what: str, hint: str = "the file is truncated or damaged") -> CorruptFileError:
    return CorruptFileError(what, path=path, hint=hint)


def _declared_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """The 3-D shape of a header's declared size, checked against the reader's limit before allocating."""
    shape = tuple(int(n) for n in shape)
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise UnsupportedInputError(
            f"image has shape {shape}; a single 3-D CT volume is expected",
            path=path,
            hint="split 4-D/multi-volume files and open one 3-D volume",
        )
    geometry.check_volume_size(shape[:3], str(path), path=path)
    return shape[:3]  # type: ignore[return-value]


def _gunzip(fp: Any, path: Path, need: int, *, keep: bool) -> bytearray | int:
    """Inflate a gzip stream (all members) in chunks, checking its CRC and that it holds exactly ``need``
    bytes without ever holding more than that. Returns the data (``keep``) or its length."""
    out = bytearray() if keep else None
    total = 0
    try:
        with gzip.GzipFile(fileobj=fp, mode="rb") as gz:
            while True:
                chunk = gz.read(min(_CHUNK, need - total) if total < need else 1)
                if not chunk:
                    break  # end of the stream: GzipFile has checked the CRC and length of every member
                total += len(chunk)
                if total > need:
                    raise _corrupt(
                        path,
                        f"holds more image data than its header declares ({need:,} bytes)",
                        "the header's dimensions or data type do not match the data; re-export or re-convert it",
                    )
                if out is not None:
                    out += chunk
    except CorruptFileError:
        raise
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile (CRC, length, garbage) is an OSError
        raise _corrupt(path, f"the gzip data is damaged or cut short ({type(exc).__name__}: {exc})") from exc
    if total < need:
        raise _corrupt(path, f"holds {total:,} bytes of image data, but its header declares {need:,}")
    return out if out is not None else total


def _count_inflated(fp: Any, path: Path, need: int, kind: str) -> int:
    """Bytes a zlib/gzip (``kind`` "zlib") or bzip2 stream inflates to, stopping once it exceeds ``need``
    (nothing is kept); a damaged or cut-short stream raises ``CorruptFileError``."""
    d: Any = bz2.BZ2Decompressor() if kind == "bzip2" else zlib.decompressobj(47)  # zlib or gzip header
    total = 0
    try:
        while not d.eof:
            raw = fp.read(_CHUNK)
            if not raw and (kind == "bzip2" or not d.unconsumed_tail):
                break
            if kind == "bzip2":
                buf = raw
                while True:
                    total += len(d.decompress(buf, _CHUNK))
                    buf = b""
                    if total > need or d.eof or d.needs_input:
                        break
            else:
                total += len(d.decompress(d.unconsumed_tail + raw, _CHUNK))
            if total > need:
                return total
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise _corrupt(path, f"the compressed data is damaged ({type(exc).__name__}: {exc})") from exc
    if not d.eof:
        raise _corrupt(path, "the compressed data is cut short (no end-of-stream marker)")
    return total


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
            f"image has shape {shape}; a single 3-D CT volume is expected",
            path=path,
            hint="split 4-D/multi-volume files and open one 3-D volume",
        )
    return raw.reshape(shape[:3]) if len(shape) > 3 else raw


def _check_orthogonal(affine_lps: np.ndarray, path: Path) -> None:
    m = affine_lps[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if np.any(norms <= 0) or not np.all(np.isfinite(m)):
        raise SeriesGeometryError(
            "the voxel-to-world affine is singular (a zero voxel size or NaN)",
            path=path,
            hint="fix the file's header (sform/qform, pixdim) or re-convert it from DICOM",
        )
    u = m / norms
    gram = u.T @ u - np.eye(3)
    if float(np.max(np.abs(gram))) > 1e-3:
        raise SeriesGeometryError(
            "the voxel-to-world affine is sheared (its axes are not perpendicular; e.g. a gantry-tilt "
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
            f"volume {source_shape[::-1]} has only {n_slices} slice(s) along its shortest axis; a chest "
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
            f"image data cannot be read ({type(exc).__name__}: {exc})",
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


def _check_scaling(dtype: np.dtype, slope: float, intercept: float, path: Path, what: str) -> None:
    """Refuse a scaling that turns stored integers into infinite float32 HU."""
    if dtype.kind not in "iu":
        return
    info = np.iinfo(dtype)
    largest = max(abs(float(info.min)), abs(float(info.max)))
    if abs(slope) * largest + abs(intercept) > float(np.finfo(np.float32).max):
        raise _corrupt(
            path,
            f"{what} {slope:g}/{intercept:g} overflow: stored values would become infinite HU",
            "the header's scaling is damaged; fix it (e.g. with nibabel) or re-convert the volume",
        )


def _nifti_data(
    path: Path, shape: tuple[int, int, int], dtype: np.dtype, offset: int, need: int, img: Any
) -> Any:
    """The stored voxels (index order i, j, k), after checking that the file holds exactly the declared data.

    .nii.gz: inflated once here (CRC and length checked; memory grows only with data actually present).
    .nii: the file size must be ``vox_offset`` + the declared bytes; nibabel then maps the data."""
    if str(path).lower().endswith(".gz"):
        with open_regular(path) as fp:
            data = _gunzip(fp, path, offset + need, keep=True)
        assert isinstance(data, bytearray)
        arr = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=offset)
        return arr.reshape(shape, order="F")
    size = os.stat(path).st_size
    if size < offset + need:
        raise _corrupt(
            path, f"holds {max(size - offset, 0):,} bytes of image data, but its header declares {need:,}"
        )
    if size > offset + need:
        raise _corrupt(
            path,
            f"holds {size - offset:,} bytes of image data, more than its header declares ({need:,})",
            "the header's dimensions or data type do not match the data; re-export or re-convert it",
        )
    proxy = img.dataobj
    return _squeeze(proxy.get_unscaled() if hasattr(proxy, "get_unscaled") else np.asanyarray(proxy), path)


def read_nifti(path: Path, *, rescale: tuple[float, float] | None, min_slices: int) -> CTVolume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        hdr = img.header
        sform, scode = hdr.get_sform(coded=True)
        qform, qcode = hdr.get_qform(coded=True)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for damaged files
        raise CorruptFileError(
            f"not a readable NIfTI file ({type(exc).__name__}: {exc})",
            path=path,
            hint="the file is truncated or damaged, or not NIfTI",
        ) from exc
    if scode and qcode:
        diff = np.abs(np.asarray(sform) - np.asarray(qform))
        if diff[:3, :3].max() > AFFINE_ATOL or diff[:3, 3].max() > AFFINE_ORIGIN_ATOL_MM:
            raise SeriesGeometryError(
                f"the sform and qform affines disagree (by up to {diff[:3, :3].max():.3g} mm/voxel and "
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
            "neither sform nor qform is set (codes 0), so the patient orientation is unknown",
            path=path,
            hint="re-convert from DICOM (e.g. dcm2niix), or set the affine with nibabel",
        )
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise SeriesGeometryError(
            f"the {which} affine is singular (determinant 0) or not finite",
            path=path,
            hint="fix the header (voxel sizes, sform/qform) or re-convert from DICOM",
        )
    try:
        proxy = img.dataobj  # the header as read from the file (img.header is a copy with offset 0)
        shape = _declared_shape(getattr(proxy, "shape", hdr.get_data_shape()), path)
        dtype = np.dtype(getattr(proxy, "dtype", hdr.get_data_dtype()))
        offset = int(getattr(proxy, "offset", hdr.get_data_offset()))
        need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if rescale is not None:
            slope, intercept = float(rescale[0]), float(rescale[1])
        else:
            s_, i_ = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)  # nibabel moves scl_* here
            slope, intercept = float(s_), float(i_)
            if not (np.isfinite(slope) and np.isfinite(intercept)) or slope == 0:
                raise _corrupt(path, f"scl_slope/scl_inter {s_!r}/{i_!r} are not usable")
            _check_scaling(dtype, slope, intercept, path, "scl_slope/scl_inter")
        raw = _nifti_data(path, shape, dtype, offset, need, img)
    except (UnsupportedInputError, CorruptFileError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise CorruptFileError(
            f"image data cannot be read ({type(exc).__name__}: {exc})",
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


_MHA_DATA_KEY = re.compile(r"^\s*ElementDataFile\s*=\s*(.*?)\s*$", re.IGNORECASE)
_NRRD_DATA_KEY = re.compile(r"^\s*data\s?file\s*:\s*(.*?)\s*$", re.IGNORECASE)


def _header_fields(path: Path, fmt: str) -> tuple[dict[str, str], list[str], int | None]:
    """(fields, data-file entries, byte offset where attached data starts or None) of an NRRD/MHA header."""
    with open_regular(path) as fp:
        head = fp.read(_HEADER_READ)
    fields: dict[str, str] = {}
    entries: list[str] = []
    lines = head.split(b"\n")
    pos = 0
    data_start = None
    listing = False
    for i, raw in enumerate(lines):
        line_end = pos + len(raw) + 1
        text = raw.decode("latin-1").rstrip("\r")
        pos = line_end
        if listing:
            if text.strip():
                entries.append(text.strip())
            continue
        if fmt == "nrrd":
            if i == 0:
                continue  # the NRRD000x magic
            if not text.strip():
                data_start = line_end if line_end <= len(head) else None
                break
            if text.startswith("#"):
                continue
            m = _NRRD_DATA_KEY.match(text)
            key, _, value = text.partition(":")
        else:
            m = _MHA_DATA_KEY.match(text)
            key, _, value = text.partition("=")
        fields[key.strip().lower()] = value.strip().lstrip("=").strip()
        if m:
            value = m.group(1)
            if fmt == "mha" and value.upper() == "LOCAL":
                data_start = line_end if line_end <= len(head) else None
                break
            if value.split()[:1] and value.split()[0].upper() == "LIST":
                listing = True
                continue
            entries.append(value)
            if fmt == "mha":
                break  # ElementDataFile is the last field of a MetaImage header
    return fields, entries, data_start


def _expand(entry: str) -> list[str]:
    """A data-file entry: a name, or a printf pattern with first, last and step numbers."""
    parts = entry.split()
    if "%" in entry and len(parts) >= 4:
        try:
            first, last, step = int(parts[1]), int(parts[2]), int(parts[3])
        except ValueError:
            return [entry]
        if step == 0 or (last - first) // step + 1 > MAX_DATA_FILES:
            raise ValueError(f"the data file pattern '{entry}' names too many files")
        return [parts[0] % n for n in range(first, last + (1 if step > 0 else -1), step)]
    return [entry]


def _data_files(path: Path, fmt: str, entries: list[str]) -> list[Path]:
    """Detached data files named by the header: regular files inside the header's own folder."""
    folder = os.path.realpath(path.parent)
    out = []
    for entry in entries:
        try:
            names = _expand(entry)
        except (ValueError, TypeError) as exc:
            raise _corrupt(path, f"the header's data file entry cannot be used ({exc})") from exc
        if len(out) + len(names) > MAX_DATA_FILES:
            raise _corrupt(path, f"the header names more than {MAX_DATA_FILES:,} data files")
        for name in names:
            target = os.path.realpath(os.path.join(folder, name))
            if os.path.isabs(name) or os.path.commonpath([folder, target]) != folder:
                raise UnsupportedInputError(
                    f"the header's data file '{name}' is outside the header's folder; only data files "
                    "beside the header are read",
                    path=path,
                    hint="put the data file in the same folder as the header and name it without a folder",
                )
            if not os.path.exists(target):
                raise _corrupt(
                    path,
                    f"the data file '{name}' named by the header is missing",
                    "copy the data file next to the header",
                )
            if not is_regular_file(target):
                raise UnsupportedInputError(
                    f"the header's data file '{name}' is {file_kind(target)}, not a regular file; only "
                    "regular files are read",
                    path=path,
                    hint="point the header at the image data file",
                )
            out.append(Path(target))
    return out


def _check_itk_header(
    path: Path,
    fmt: str,
    shape_kji: tuple[int, int, int],
    itemsize: int,
    header: tuple[dict[str, str], list[str], int | None],
    files: list[Path],
) -> None:
    """Declared size vs the reader's limit and the bytes actually present, before SimpleITK allocates."""
    geometry.check_volume_size(shape_kji, str(path), path=path)
    fields, _, data_start = header
    n_voxels = int(np.prod(shape_kji, dtype=np.int64))
    need = n_voxels * itemsize
    if fmt == "nrrd":
        enc = fields.get("encoding", "raw").lower()
        kind = {
            "raw": "raw",
            "gzip": "zlib",
            "gz": "zlib",
            "bzip2": "bzip2",
            "bz2": "bzip2",
            "ascii": "text",
            "text": "text",
            "txt": "text",
            "hex": "hex",
        }.get(enc, "")
    else:
        kind = "zlib" if fields.get("compresseddata", "false").lower() == "true" else "raw"
    sources: list[tuple[Path, int]] = [(f, 0) for f in files]
    if not files:
        if data_start is None:
            return  # header not understood here: SimpleITK reads (or refuses) it within the size limit
        sources = [(path, data_start)]
    present = 0
    for f, start in sources:
        if kind in ("zlib", "bzip2"):
            with open_regular(f) as fp:
                fp.seek(start)
                present += _count_inflated(fp, path, need - present, kind)
        else:
            present += max(os.stat(f).st_size - start, 0)
        if present >= need:
            return
    least = {"raw": need, "zlib": need, "bzip2": need, "text": n_voxels, "hex": 2 * need}.get(kind)
    if least is not None and present < least:
        raise _corrupt(
            path,
            f"holds {present:,} bytes of image data, but its header declares {' x '.join(map(str, shape_kji[::-1]))} "
            f"voxels of {itemsize} byte(s)",
        )


def _unreadable_itk(path: Path, fmt: str, exc: Exception) -> CorruptFileError:
    text = str(exc).strip()  # SimpleITK raises RuntimeError with ITK's text: its last line says why
    return CorruptFileError(
        f"not a readable {fmt.upper()} file ({text.splitlines()[-1] if text else exc})",
        path=path,
        hint="the file (or its detached data file) is missing, truncated or damaged",
    )


def read_itk(path: Path, fmt: str, *, rescale: tuple[float, float] | None, min_slices: int) -> CTVolume:
    import SimpleITK as sitk

    # the header's data-file entries are checked before SimpleITK opens anything they name
    header = _header_fields(path, fmt)
    files = _data_files(path, fmt, header[1])
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        size = tuple(int(n) for n in reader.GetSize())
        n_comp = int(reader.GetNumberOfComponents())
    except Exception as exc:  # noqa: BLE001 - SimpleITK raises RuntimeError with ITK's text
        raise _unreadable_itk(path, fmt, exc) from exc
    if n_comp != 1:
        raise UnsupportedInputError(
            f"image has {n_comp} components per voxel; a greyscale CT is expected", path=path
        )
    if len(size) not in (3, 4):
        raise UnsupportedInputError(f"image is {len(size)}-D; a 3-D CT volume is expected", path=path)
    try:
        itemsize = sitk.GetArrayViewFromImage(sitk.Image([1] * len(size), reader.GetPixelID())).itemsize
    except Exception:  # noqa: BLE001 - an unusual pixel type: assume the widest
        itemsize = 8
    _check_itk_header(path, fmt, _declared_shape(size, path)[::-1], itemsize, header, files)
    try:
        img = reader.Execute()
    except Exception as exc:  # noqa: BLE001 - SimpleITK raises RuntimeError with ITK's text
        raise _unreadable_itk(path, fmt, exc) from exc
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise UnsupportedInputError(
            f"image has {img.GetNumberOfComponentsPerPixel()} components per voxel; a greyscale CT is expected",
            path=path,
        )
    dim = img.GetDimension()
    if dim not in (3, 4):
        raise UnsupportedInputError(f"image is {dim}-D; a 3-D CT volume is expected", path=path)
    if dim == 4:
        if img.GetSize()[3] != 1:
            raise UnsupportedInputError(f"image is 4-D with {img.GetSize()[3]} volumes", path=path)
        img = img[:, :, :, 0]
    spacing = np.array(img.GetSpacing(), dtype=np.float64)
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = img.GetOrigin()
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise SeriesGeometryError(
            "the voxel-to-world matrix is singular or not finite", path=path, hint="fix the header"
        )
    raw_kji = sitk.GetArrayViewFromImage(img)
    slope, intercept = (float(rescale[0]), float(rescale[1])) if rescale is not None else (1.0, 0.0)
    meta: dict[str, Any] = {}
    if rescale is not None:
        meta["RescaleOverride"] = [slope, intercept]
    vol = _to_volume(raw_kji, affine, slope, intercept, path, fmt, min_slices=min_slices, metadata=meta)
    del raw_kji, img
    return vol
