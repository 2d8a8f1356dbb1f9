"""Typed errors. Every message says what is wrong, where (file or series), and what to do."""

from __future__ import annotations

from pathlib import Path


class HyperCTError(Exception):
    """Base class of every error the engine raises on purpose.

    ``str(e)`` leads with the cause, then where (the series or part of the input, and the file),
    then what to do: ``"cause (where; path) -> hint"`` (a place the cause already names is not
    repeated). napari's collapsed toast and a terminal's first glance show the start of a message,
    so the cause comes first everywhere. ``cause``, ``where``, ``path`` and ``hint`` keep the parts.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        hint: str | None = None,
        where: str | None = None,
    ):
        self.cause = message
        self.path = str(path) if path is not None else None
        self.hint = hint
        self.where = where
        super().__init__(error_text(message, self.path, hint, where=where))

    def __reduce__(self):  # keep the parts across processes (DataLoader workers, multiprocessing)
        return (_rebuild, (type(self), self.cause, self.path, self.hint, self.where, dict(self.__dict__)))


def _rebuild(cls, cause, path, hint, where, state):
    exc = cls.__new__(cls)
    HyperCTError.__init__(exc, cause, path=path, hint=hint, where=where)
    exc.__dict__.update(state)
    return exc


def error_text(
    cause: str, path: str | None = None, hint: str | None = None, *, where: str | None = None
) -> str:
    """``"cause (where; path) -> hint"``: the one form of every error message (each part optional;
    a place that the cause, or ``where`` for the path, already names is left out)."""
    places = [w for w in (where,) if w and w not in cause]
    if path and path not in cause and not (where and path in where):
        places.append(path)
    text = f"{cause} ({'; '.join(places)})" if places else cause
    return f"{text} -> {hint}" if hint else text


def naming(label: str, exc: BaseException) -> str:
    """``str(exc)`` for the console and tables, with the input ``label`` named when neither the
    message nor the error's path already names it (e.g. an error about a model pass)."""
    text = str(exc)
    if label and label not in text and not getattr(exc, "path", None):
        cause, sep, hint = text.partition(" -> ")
        text = f"{cause} ({label})" + (f" -> {hint}" if sep else "")
    return text


# --- input (reader) ---------------------------------------------------------------------------


class InputError(HyperCTError):
    """The input cannot be turned into a CT volume."""


class UnsupportedInputError(InputError):
    """Not a file type the reader handles (or the path does not exist)."""


class CorruptFileError(InputError):
    """The file is truncated, not valid DICOM/NIfTI, or has unreadable header values."""


class MissingCodecError(InputError):
    """The pixel data uses a compressed transfer syntax whose decoder is not installed."""


class NoImageDataError(InputError):
    """The folder/files hold no usable CT image series."""


class NotCTError(InputError):
    """The series is not CT (e.g. MR, secondary capture)."""


class SeriesGeometryError(InputError):
    """The slices do not form one regular 3-D volume (missing/duplicate slices, tilt, mixed sizes...)."""


class TooFewSlicesError(SeriesGeometryError):
    """Fewer slices than a chest CT volume needs."""


class SeriesSelectionError(InputError):
    """A requested series is not in the input."""


# --- model ------------------------------------------------------------------------------------


class ModelError(HyperCTError):
    """The model or its weights cannot be built or loaded."""


class CheckpointError(ModelError):
    """A HyperCT checkpoint folder is missing, incomplete, inconsistent or corrupted."""


class BackboneWeightsError(ModelError):
    """A DINOv3 backbone folder is missing, incomplete or has tensors of the wrong shape."""


# --- data / training / export -----------------------------------------------------------------


class DatasetError(HyperCTError):
    """A training/evaluation dataset description is invalid."""


class ConfigError(HyperCTError):
    """A configuration file or value is invalid."""


class ExportError(HyperCTError):
    """A report cannot be written (e.g. target exists, SR for non-DICOM input)."""


class OutputExistsError(ExportError):
    """An output file or folder exists and replacing it was not asked for (``--overwrite``)."""
