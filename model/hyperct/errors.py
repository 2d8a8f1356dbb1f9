"""Typed errors. Every message says what is wrong, where (file or series), and what to do."""

from __future__ import annotations

from pathlib import Path


class HyperCTError(Exception):
    """Base class of every error the engine raises on purpose."""

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None):
        self.path = str(path) if path is not None else None
        self.hint = hint
        text = message
        if self.path and self.path not in message:
            text = f"{self.path}: {message}"
        if hint:
            text = f"{text} -> {hint}"
        super().__init__(text)


def cause_first(label: str, exc: BaseException) -> str:
    """'cause (file) -> what to do' for the console and tables: the error's 'path: cause -> hint'
    reordered so the cause leads; ``label`` (the input) is named when the cause does not name it."""
    text = str(exc)
    path = getattr(exc, "path", None)
    where = None
    if path and text.startswith(f"{path}: "):
        text, where = text[len(path) + 2 :], path
    cause, sep, hint = text.partition(" -> ")
    if where is None and label not in cause:
        where = label
    return cause + (f" ({where})" if where else "") + (f" -> {hint}" if sep else "")


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
