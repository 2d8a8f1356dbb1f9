"""Assembling one DICOM series (already chosen and geometry-checked) into a canonical ``CTVolume``.

Each slice is decoded once (uncompressed little-endian pixel data is read directly at the offset
found by the header scan; anything else through ``pydicom.pixels.pixel_array``), rescaled with its own
RescaleSlope/Intercept, padding set to -1000 HU, de-sheared if a gantry tilt is being resampled, and
written straight into its place on the canonical float32 grid: no second full-size copy is made.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pydicom
from pydicom.pixels import get_decoder, pixel_array
from scipy import ndimage

from hyperct.errors import CorruptFileError, MissingCodecError, NotCTError
from hyperct.io import geometry, quality
from hyperct.io.dicom_scan import SliceHeader, open_regular
from hyperct.io.dicom_series import Candidate, series_label
from hyperct.volume import CTVolume, QCWarning

AIR_HU = -1000.0

# Transfer syntax UID prefix/exact -> package(s) that decode it with pydicom.
_CODEC_PACKAGES = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg + pylibjpeg-libjpeg (or Pillow)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg + pylibjpeg-libjpeg (or Pillow)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg + pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg + pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pyjpegls (or pylibjpeg + pylibjpeg-libjpeg)",
    "1.2.840.10008.1.2.4.81": "pyjpegls (or pylibjpeg + pylibjpeg-libjpeg)",
    "1.2.840.10008.1.2.4.90": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg + pylibjpeg-rle",
}


def codec_package(transfer_syntax: str) -> str:
    return _CODEC_PACKAGES.get(
        transfer_syntax, "a pydicom pixel-data plugin for this transfer syntax (or GDCM)"
    )


def check_decoders(slices: list[SliceHeader], where: str) -> None:
    """Raise ``MissingCodecError`` (naming the package) if a transfer syntax cannot be decoded."""
    for ts in sorted({h.transfer_syntax for h in slices if h.transfer_syntax}):
        example = next(h.path for h in slices if h.transfer_syntax == ts)
        name = pydicom.uid.UID(ts).name
        try:
            decoder = get_decoder(ts)
        except NotImplementedError:
            raise MissingCodecError(
                f"pixel data in '{example}' uses transfer syntax {name} ({ts}), which no installed "
                "Python decoder supports",
                where=where,
                path=example,
                hint="convert the series to an uncompressed or JPEG/JPEG 2000 syntax (e.g. with dcmtk/gdcmconv)",
            ) from None
        except Exception:  # noqa: BLE001 - odd UID: let the decoder report it per file
            continue
        if not decoder.is_available:
            raise MissingCodecError(
                f"pixel data in '{example}' is compressed as {name} ({ts}) and no decoder is installed",
                where=where,
                path=example,
                hint=f"pip install {codec_package(ts).split(' (')[0].replace(' + ', ' ')}",
            )


def _read_native(h: SliceHeader, where: str) -> np.ndarray | None:
    """Uncompressed little-endian pixels read straight from the file (no second header parse).

    Same result as pydicom's native decoder: unsigned values masked to BitsStored, signed values
    sign-extended from BitsStored. ``None`` when the fast path does not apply.
    """
    if h.pixel_offset is None or h.bits_allocated not in (16, 32) or h.samples_per_pixel != 1:
        return None
    if not 1 <= h.bits_stored <= h.bits_allocated or h.pixel_representation not in (0, 1):
        return None
    nbytes = h.rows * h.cols * h.bits_allocated // 8
    if h.pixel_nbytes is None or h.pixel_nbytes < nbytes:
        return None  # let pydicom report the inconsistency
    try:
        with open_regular(h.path) as f:
            f.seek(h.pixel_offset)
            buf = f.read(nbytes)
    except OSError as exc:
        raise _corrupt(h, where, exc) from exc
    if len(buf) < nbytes:
        raise CorruptFileError(
            f"pixel data of '{h.name}' is cut short ({len(buf)} of {nbytes} bytes)",
            where=where,
            path=h.path,
            hint="the file is truncated; copy the series again from the source media or PACS",
        )
    kind = "i" if h.pixel_representation == 1 else "u"
    arr = np.frombuffer(buf, dtype=f"<{kind}{h.bits_allocated // 8}").reshape(h.rows, h.cols)
    unused = h.bits_allocated - h.bits_stored
    if unused:
        if kind == "i":
            arr = (arr << unused) >> unused
        else:
            arr = arr & ((1 << h.bits_stored) - 1)
    return arr


def _decoder_available(transfer_syntax: str | None) -> bool:
    try:
        return bool(transfer_syntax) and get_decoder(transfer_syntax).is_available
    except Exception:  # noqa: BLE001 - unknown or odd UID: no decoder
        return False


def _decode(h: SliceHeader, where: str) -> np.ndarray:
    if h.frame is None:
        fast = _read_native(h, where)
        if fast is not None:
            return fast
    try:
        with open_regular(h.path) as fp:
            arr = pixel_array(fp) if h.frame is None else pixel_array(fp, index=h.frame)
    except NotImplementedError as exc:
        raise _missing_codec(h, where, exc, f"install {codec_package(h.transfer_syntax)}") from exc
    except RuntimeError as exc:
        # pydicom says "plugins" both when no decoder is installed and when every installed one failed
        # on damaged data: only the first is a missing codec
        if ("missing dependencies" in str(exc) or "plugins" in str(exc)) and not _decoder_available(
            h.transfer_syntax
        ):
            package = codec_package(h.transfer_syntax).split(" (")[0].replace(" + ", " ")
            raise _missing_codec(h, where, exc, f"pip install {package}") from exc
        raise _corrupt(h, where, exc) from exc
    except Exception as exc:  # noqa: BLE001 - anything else is a damaged file
        raise _corrupt(h, where, exc) from exc
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        raise NotCTError(f"'{h.name}' holds a colour image, not a CT slice", where=where, path=h.path)
    if arr.shape != (h.rows, h.cols):
        raise CorruptFileError(
            f"'{h.name}' decodes to shape {arr.shape}, but its header says {h.rows}x{h.cols}",
            where=where,
            path=h.path,
            hint="the file is damaged; copy the series again",
        )
    return arr


def _missing_codec(h: SliceHeader, where: str, exc: Exception, hint: str) -> MissingCodecError:
    return MissingCodecError(f"cannot decode '{h.name}': {exc}", where=where, path=h.path, hint=hint)


def _corrupt(h: SliceHeader, where: str, exc: Exception) -> CorruptFileError:
    return CorruptFileError(
        f"pixel data of '{h.name}' cannot be decoded ({type(exc).__name__}: {exc})",
        where=where,
        path=h.path,
        hint="the file is truncated or damaged; copy the series again from the source media or PACS",
    )


def assemble(
    cand: Candidate,
    source: str,
    *,
    rescale: tuple[float, float] | None = None,
) -> CTVolume:
    """Decode, rescale and reorient the slices of ``cand`` into a ``CTVolume``."""
    geom = cand.geometry
    assert geom is not None
    info = cand.info
    where = f"{series_label(info.uid, info.description, info.series_number)} in {source}"
    slices = [cand.slices[i] for i in geom.order]
    check_decoders(slices, where)
    n, rows, cols = len(slices), slices[0].rows, slices[0].cols
    source_shape = (n, rows, cols)
    source_affine = geom.affine()
    geometry.check_volume_size(source_shape, where, path=slices[0].path)
    layout = geometry.canonical_layout(source_affine, source_shape, where)
    reo = layout.reorientation
    slice_axis = reo.perm.index(0)  # canonical axis that runs along the slices
    hu = np.empty(layout.shape, dtype=np.float32)
    plane = np.empty((rows, cols), dtype=np.float32)
    cache: tuple[str, np.ndarray] | None = None  # decoded multi-frame file

    for s, h in enumerate(slices):
        if h.frame is None:
            raw = _decode(h, where)
        else:
            if cache is None or cache[0] != h.path:
                cache = (h.path, _decode_all_frames(h, where))
            raw = cache[1][h.frame]
        slope, intercept = rescale if rescale is not None else (h.slope, h.intercept)
        np.multiply(raw, slope, out=plane, casting="unsafe")
        plane += np.float32(intercept)
        if not np.isfinite(plane).all():
            raise CorruptFileError(
                f"rescaling '{h.name}' (slope {slope:g}, intercept {intercept:g}) gives infinite or NaN HU",
                where=where,
                path=h.path,
                hint="the RescaleSlope/RescaleIntercept values are damaged; copy the series again, or override "
                "them (read_ct(..., rescale=(slope, intercept)))",
            )
        if h.padding is not None:
            lo, hi = h.padding
            plane[(raw >= lo) & (raw <= hi)] = AIR_HU
        out_plane = plane
        if geom.is_sheared:
            out_plane = ndimage.shift(plane, geom.shift_px[s], order=1, mode="constant", cval=AIR_HU)
        index = (n - 1 - s) if reo.flip[slice_axis] else s
        dest: list[Any] = [slice(None)] * 3
        dest[slice_axis] = slice(index, index + 1)
        hu[tuple(dest)] = reo.apply(out_plane[None])
    cache = None

    canonical_slices = slices[::-1] if reo.flip[slice_axis] else slices
    meta = dict(slices[0].meta)
    meta["ReferencedInstances"] = _referenced(canonical_slices)
    meta["TransferSyntaxUID"] = slices[0].transfer_syntax
    if rescale is not None:
        meta["RescaleOverride"] = [float(rescale[0]), float(rescale[1])]
    vol = CTVolume(
        hu=hu,
        spacing=layout.spacing,
        origin=layout.origin,
        direction=layout.direction,
        metadata=meta,
        source_paths=list(dict.fromkeys(h.path for h in slices)),
        source_format="dicom",
        source_affine=source_affine,
        source_shape=source_shape,
        reorientation=reo,
    )
    if geom.is_sheared:
        vol.warnings.append(
            QCWarning(
                quality.TILT_RESAMPLED,
                f"gantry tilt of {geom.tilt_deg:.1f} degrees resampled onto an orthogonal grid (linear "
                "interpolation, -1000 HU outside the acquired field); positions are approximate near the edges",
            )
        )
        meta["GantryTiltResampledDegrees"] = round(geom.tilt_deg, 3)
    if not any(h.has_rescale for h in slices) and rescale is None:
        meta["RescaleMissing"] = True
    return vol


def _decode_all_frames(h: SliceHeader, where: str) -> np.ndarray:
    try:
        with open_regular(h.path) as fp:
            arr = pixel_array(fp)
    except Exception as exc:  # noqa: BLE001
        raise _corrupt(h, where, exc) from exc
    if arr.ndim != 3 or arr.shape[1:] != (h.rows, h.cols):
        raise CorruptFileError(
            f"'{h.path}' decodes to shape {arr.shape}, not frames of {h.rows}x{h.cols}",
            where=where,
            path=h.path,
        )
    return arr


def _referenced(slices: list[SliceHeader]) -> list[dict[str, str]]:
    out, seen = [], set()
    for h in slices:
        if h.sop_instance_uid in seen:
            continue
        seen.add(h.sop_instance_uid)
        out.append({"SOPClassUID": h.sop_class_uid, "SOPInstanceUID": h.sop_instance_uid})
    return out
