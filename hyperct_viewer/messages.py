"""Messages for the user, cause first: napari's collapsed toast shows only the start of a message.

Qt-free (the reader uses it too).
"""

from __future__ import annotations

import re

_CAUSES = (  # (error class name, what to say first); most specific first
    ("NoValidScoreError", "No valid score"),
    ("TooFewSlicesError", "Too few slices"),
    ("SeriesGeometryError", "Slices do not form one volume"),
    ("MissingCodecError", "Missing image decoder"),
    ("CorruptFileError", "Damaged file"),
    ("NoImageDataError", "No CT images"),
    ("UnsupportedInputError", "Not a supported CT file"),
    ("SeriesSelectionError", "Series not found"),
    ("CheckpointError", "Checkpoint cannot be used"),
    ("BackboneWeightsError", "Backbone weights cannot be used"),
    ("ExportError", "Export failed"),
)


def error_cause(exc: BaseException) -> str:
    """A short cause to lead a message with ("MR, not CT", "Damaged file", ...)."""
    names = [c.__name__ for c in type(exc).__mro__]
    if "NotCTError" in names:
        m = re.search(r"is ([^,]{1,40}), not CT", str(exc))
        return f"{m.group(1)}, not CT" if m else "Not CT"
    for name, cause in _CAUSES:
        if name in names:
            return cause
    if "HyperCTError" in names:
        return "HyperCT"
    return type(exc).__name__


def user_message(exc: BaseException) -> str:
    """``"<cause>: <message>"``: napari's collapsed toast shows the start, so the cause comes first
    and the file (inside the engine's message) after it."""
    text = str(exc).strip() or type(exc).__name__
    return f"{error_cause(exc)}: {text}"
