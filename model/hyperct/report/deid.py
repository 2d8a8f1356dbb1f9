"""Export modes and the keyed hash that links de-identified exports of the same patient.

Two modes:

* ``shareable`` (the default for every file written to disk): the patient's name, birth date,
  patient ID, other IDs, accession number, the referring physician and the input's file paths are
  left out. Each identifier present in the input is replaced by a *link ID*: the first 32 hex digits
  (128 bits) of HMAC-SHA256(key, "<DICOM keyword>=<value>"). Without the key, a link ID cannot be
  turned back into the identifier (nor checked against a guessed one); with the same key, the same
  patient always gets the same link ID, so a site can join shareable exports of one patient.
* ``clinical``: the identifiers are kept as they are in the input (for filing in the patient's
  record).

The link key is, in order of preference:

1. the environment variable ``HYPERCT_LINK_KEY`` (any string; use one site-wide key so exports made
   by different users or machines link up);
2. a per-user key file created once with 32 random bytes (hex) and permissions 0600:
   ``$HYPERCT_CONFIG_DIR/link.key`` if that variable is set, otherwise
   ``$XDG_CONFIG_HOME/hyperct/link.key`` (default ``~/.config/hyperct/link.key``) on Linux,
   ``~/Library/Application Support/hyperct/link.key`` on macOS and ``%APPDATA%\\hyperct\\link.key``
   on Windows. Keep it private: anyone holding it can test a guessed patient ID against a link ID.
   The file is written under a temporary name and hard-linked into place, so a process racing
   to create it never reads an empty key (without hard links: exclusive create, and readers wait
   for the content).

What the shareable mode keeps, cleans or drops follows DICOM PS3.15 Annex E, the Basic Application
Level Confidentiality Profile (``PROFILE``), with the options in ``RETAINED_OPTIONS``:

* removed (Annex E action X/Z/D): patient name, birth date, IDs, other IDs, accession number,
  referring physician, Study ID, Study and Series Description, the input's file and folder names
  (output files get a pseudonymous stem), any text the reader quotes from the header or the file
  system (QC warnings are rebuilt from the project's own words, ``shareable_warnings``);
* replaced: Patient ID by its link ID (a keyed hash; Annex E allows a replacement value);
* kept, by option: Retain UIDs (113110): Study/Series/SOP Instance and Frame of Reference UIDs, so
  the SR can reference the images it reports on and a site can file the report next to them;
  Retain Longitudinal Temporal Information, Full Dates (113106): study date and time, because
  follow-up reports are compared by date; Retain Patient Characteristics (113108): sex and age,
  because a reader needs them to judge findings like cardiomegaly;
* kept, not in Annex E's list: manufacturer, scanner model, kernel and kVp (acquisition facts),
  unless their text contains a part of the patient's name or IDs;
* not done: Clean Pixel Data (113101). The PDF's key images show the CT pixels as stored; burned-in
  text, rare in CT, would show. The saliency maps hold only the model's map, no CT pixels.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperct.atomic import publish, stage_file
from hyperct.errors import ExportError
from hyperct.volume import PHI_KEYS

SHAREABLE, CLINICAL = "shareable", "clinical"
MODES = (SHAREABLE, CLINICAL)
LINK_KEY_ENV = "HYPERCT_LINK_KEY"
CONFIG_DIR_ENV = "HYPERCT_CONFIG_DIR"
KEY_FILE_NAME = "link.key"
LINK_ID_HEX = 32

# Identifiers removed in shareable mode: the patient identifiers of the volume plus names of people.
REMOVED_KEYS = tuple(PHI_KEYS) + ("ReferringPhysicianName",)
# Identifiers that get a link ID in shareable mode.
LINKED_KEYS = ("PatientID", "OtherPatientIDs", "AccessionNumber")

# DICOM PS3.15 Annex E profile and the options this export retains (CID 7050 codes).
PROFILE = ("113100", "DCM", "Basic Application Confidentiality Profile")
RETAINED_OPTIONS = (
    ("113110", "DCM", "Retain UIDs Option"),
    ("113106", "DCM", "Retain Longitudinal Temporal Information Full Dates Option"),
    ("113108", "DCM", "Retain Patient Characteristics Option"),
)
# De-identification Method (0012,0063) is LO: 64 characters at most.
METHOD_SHORT = "PS3.15 E basic; UIDs, dates, sex/age kept; IDs keyed-hashed"

METHOD_TEXT = (
    "Shareable export (DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile): patient "
    "name, birth date, patient ID, other IDs, accession number, referring physician, study ID, study and "
    "series descriptions, file and folder names removed; free text built from HyperCT's own words only; "
    "IDs replaced by link IDs (HMAC-SHA256 with the site's link key, "
    f"first {LINK_ID_HEX} hex digits). Retained options: UIDs (Study/Series/SOP Instance UIDs, so the "
    "report references its images), full dates (study date, for follow-up), patient characteristics "
    "(sex, age). Manufacturer, scanner model, kernel and kVp are kept. Pixel data are not cleaned: "
    "key images show the CT as stored."
)


def deidentification_block() -> dict:
    """The JSON export's statement of the profile and options (shareable mode)."""

    def code(c):
        return {"value": c[0], "scheme": c[1], "meaning": c[2]}

    return {
        "standard": "DICOM PS3.15 Annex E",
        "profile": code(PROFILE),
        "retained_options": [code(c) for c in RETAINED_OPTIONS],
        "removed": [
            "PatientName",
            "PatientBirthDate",
            "PatientID (replaced by its link ID)",
            "OtherPatientIDs",
            "AccessionNumber",
            "ReferringPhysicianName",
            "StudyID",
            "StudyDescription",
            "SeriesDescription",
            "file and folder names",
            "header and file-system text in warnings",
        ],
        "kept": [
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "FrameOfReferenceUID",
            "StudyDate",
            "StudyTime",
            "PatientSex",
            "PatientAge",
            "Manufacturer",
            "ManufacturerModelName",
            "ConvolutionKernel",
            "KVP",
        ],
        "pixel_data_cleaned": False,
    }


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ExportError(f"unknown export mode {mode!r}", hint=f"use one of: {', '.join(MODES)}")
    return mode


def config_dir() -> Path:
    """The per-user configuration folder of HyperCT (where the link key file lives)."""
    if os.environ.get(CONFIG_DIR_ENV):
        return Path(os.environ[CONFIG_DIR_ENV]).expanduser()
    if sys.platform.startswith("win"):
        base = os.environ.get("APPDATA") or str(Path.home() / "AppData" / "Roaming")
        return Path(base) / "hyperct"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "hyperct"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hyperct"


def key_file() -> Path:
    return config_dir() / KEY_FILE_NAME


@dataclass(frozen=True)
class LinkKey:
    key: bytes
    source: str  # "environment" or "key file"


def link_key(*, create: bool = True) -> LinkKey:
    """The link key: ``HYPERCT_LINK_KEY``, else the per-user key file (created on first use)."""
    env = os.environ.get(LINK_KEY_ENV)
    if env:
        return LinkKey(env.encode("utf-8"), "environment")
    path = key_file()
    if not path.is_file():
        if not create:
            raise ExportError("no link key", path=path, hint=f"set {LINK_KEY_ENV}")
        _create_key_file(path)
    deadline = time.monotonic() + KEY_WAIT_S
    while True:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ExportError(
                f"the link key file cannot be read ({exc})",
                path=path,
                hint=f"fix its permissions, or set the environment variable {LINK_KEY_ENV}",
            ) from exc
        if text or time.monotonic() > deadline:
            break
        time.sleep(0.02)  # made by an exclusive create on a file system without hard links: being written
    if not text:
        raise ExportError(
            "the link key file is empty",
            path=path,
            hint=f"delete it (a new key is made) or set {LINK_KEY_ENV}",
        )
    return LinkKey(text.encode("utf-8"), "key file")


KEY_WAIT_S = 2.0


def _create_key_file(path: Path) -> None:
    """Write a new key to a temporary file, then give it the name ``path`` only if that name is free
    (``hyperct.atomic.publish``): another process that made the key first wins, and its key is used.

    The key file never exists half-written; where the file system has no hard links it may exist
    empty for a moment, and ``link_key`` waits for the content.
    """
    hint = f"set the environment variable {LINK_KEY_ENV} (or {CONFIG_DIR_ENV} to a writable folder)"
    try:
        tmp = stage_file(path, secrets.token_hex(32) + "\n", mode=0o600)
        publish(tmp, path)  # False: another process made it first (complete: use theirs)
    except OSError as exc:
        raise ExportError(f"cannot create the link key file ({exc})", path=path, hint=hint) from exc


def link_id(keyword: str, value: Any, key: bytes) -> str:
    """Keyed hash of one identifier: 32 hex digits of HMAC-SHA256(key, "keyword=value")."""
    msg = f"{keyword}={str(value).strip()}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:LINK_ID_HEX]


def identifiers(metadata: dict[str, Any]) -> dict[str, str]:
    """The identifying values present in a volume's metadata (DICOM keyword -> text)."""
    return {k: str(metadata[k]) for k in REMOVED_KEYS if metadata.get(k) not in (None, "")}


def link_ids(metadata: dict[str, Any], key: bytes) -> dict[str, str]:
    return {k: link_id(k, metadata[k], key) for k in LINKED_KEYS if metadata.get(k) not in (None, "")}


def format_person_name(value: Any) -> str:
    """DICOM PN 'FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX' -> 'FAMILY, GIVEN MIDDLE' for display."""
    parts = [p.strip() for p in str(value).split("=")[0].split("^")]
    while len(parts) < 5:
        parts.append("")
    family, given, middle, prefix, suffix = parts[:5]
    first = " ".join(p for p in (prefix, given, middle) if p)
    text = ", ".join(p for p in (family, first) if p)
    return f"{text} {suffix}".strip() if suffix else text


def format_da(value: Any) -> str:
    """DICOM DA 'YYYYMMDD' -> 'YYYY-MM-DD' (other text unchanged)."""
    s = str(value).strip()
    if len(s) == 8 and s.isdigit():
        return f"{s[:4]}-{s[4:6]}-{s[6:]}"
    return s


# --- identifiers in free text --------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return re.findall(r"[0-9a-z]+", text.lower())


def identifier_tokens(metadata: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(words, squeezed values) of the patient's identifiers, lower case, any length.

    Words are the alphanumeric parts of each identifier ("NG^LI" -> ng, li; "ID 77" -> id, 77);
    squeezed values are whole identifiers without punctuation ("PID-775533" -> pid775533).
    Single characters (a middle initial) are not words: they would match everything.
    """
    words: set[str] = set()
    squeezed: set[str] = set()
    for key in REMOVED_KEYS:
        value = metadata.get(key)
        if value in (None, ""):
            continue
        for v in value if isinstance(value, list | tuple) else [value]:
            parts = _words(str(v))
            words.update(p for p in parts if len(p) >= 2)
            joined = "".join(parts)
            if len(joined) >= 3:
                squeezed.add(joined)
    return words, squeezed


def contains_identifier(text: str, metadata: dict[str, Any]) -> bool:
    """Whether ``text`` holds a part of the patient's name, an ID, the birth date or accession number.

    A word of the text equal to a name part or ID (any length: NG, LI, 77), a name part of four or
    more characters inside a word ("zygmuntowiczct"), or a whole identifier with its punctuation
    dropped ("PID775533" for "PID-775533", "19470321" for "1947-03-21").
    """
    words, squeezed = identifier_tokens(metadata)
    if not words and not squeezed:
        return False
    text_words = _words(str(text))
    flat = "".join(text_words)
    if any(w in words for w in text_words):
        return True
    if any(len(w) >= 4 and w in flat for w in words):
        return True
    return any(s in flat for s in squeezed)


def device_text(value: Any, metadata: dict[str, Any]) -> str | None:
    """A device descriptor (manufacturer, model, kernel) fit for a shareable export, else None.

    Annex E keeps these (they describe the scanner, not the patient); a value that is not short
    printable text or that holds a part of the patient's identifiers is dropped.
    """
    if value in (None, ""):
        return None
    text = str(value).strip()
    if not text or len(text) > 64 or not all(32 <= ord(c) < 127 for c in text):
        return None
    if contains_identifier(text, metadata):
        return None
    return text


# --- QC warnings rebuilt from the project's own words ---------------------------------------------

_N = r"-?\d+(?:\.\d+)?"
_D = r"(\d+)"
# (code, pattern matching the reader's message, text for shareable exports: only the numbers of the
# pattern's groups are carried over). A message that matches none gets its code's GENERIC text.
_QC_REWRITES: tuple[tuple[str, str, str], ...] = (
    (
        "thick_slices",
        rf"slice thickness ({_N}) mm \((SliceThickness|coarsest voxel spacing)\) is above ({_N}) mm; "
        r"the model expects thin-slice CT, small findings may be missed",
        r"slice thickness \1 mm (\2) is above \3 mm; the model expects thin-slice CT, small findings may be missed",
    ),
    ("implausible_hu", r"the volume holds no finite values", r"the volume holds no finite values"),
    ("implausible_hu", rf"the volume is constant \(({_N}) HU\)", r"the volume is constant (\1 HU)"),
    (
        "implausible_hu",
        rf"no air in the volume \(0\.5th percentile ({_N}) HU; air is -1000 HU\): the values look "
        r"unrescaled \(stored values without RescaleSlope/Intercept\) or the scan is cropped to tissue",
        r"no air in the volume (0.5th percentile \1 HU; air is -1000 HU): the values look unrescaled "
        r"(stored values without RescaleSlope/Intercept) or the scan is cropped to tissue",
    ),
    (
        "implausible_hu",
        rf"values from ({_N}) to ({_N}) HU are outside any CT scale",
        r"values from \1 to \2 HU are outside any CT scale",
    ),
    (
        "contrast",
        r"contrast agent recorded in the header \(ContrastBolusAgent .*\); the model is meant for non-contrast CT",
        r"contrast agent recorded in the header (ContrastBolusAgent); the model is meant for non-contrast CT",
    ),
    (
        "contrast",
        rf"a bright blood pool \(({_N}) mL connected at ({_N})-({_N}) HU\) suggests iodinated contrast; "
        r"the model is meant for non-contrast CT",
        r"a bright blood pool (\1 mL connected at \2-\3 HU) suggests iodinated contrast; the model is "
        r"meant for non-contrast CT",
    ),
    (
        "not_chest",
        r"no body found \(nothing denser than -500 HU\)",
        r"no body found (nothing denser than -500 HU)",
    ),
    (
        "not_chest",
        rf"little or no lung air \(lung-like air inside the body outline is ({_N}) % of the body volume, "
        rf"({_N}) mL\): this does not look like a chest CT",
        r"little or no lung air (lung-like air inside the body outline is \1 % of the body volume, \2 mL): "
        r"this does not look like a chest CT",
    ),
    (
        "oblique_snapped",
        rf"oblique acquisition \(({_N}) degrees off the patient axes\) shown on the nearest "
        r"axial/coronal/sagittal grid; positions in mm use the true orientation",
        r"oblique acquisition (\1 degrees off the patient axes) shown on the nearest axial/coronal/sagittal "
        r"grid; positions in mm use the true orientation",
    ),
    (
        "gantry_tilt_resampled",
        rf"gantry tilt of ({_N}) degrees resampled onto an orthogonal grid \(linear interpolation, -1000 HU "
        r"outside the acquired field\); positions are approximate near the edges",
        r"gantry tilt of \1 degrees resampled onto an orthogonal grid (linear interpolation, -1000 HU "
        r"outside the acquired field); positions are approximate near the edges",
    ),
    (
        "unreadable_files",
        rf"{_D} DICOM file\(s\) could not be read and were ignored.*",
        r"\1 DICOM file(s) could not be read and were ignored",
    ),
    (
        "nonfinite_values",
        rf"{_D} NaN/infinite voxel\(s\) in .* set to -1000 HU",
        r"\1 NaN/infinite voxel(s) set to -1000 HU",
    ),
    (
        "series_skipped",
        rf"a larger CT series was skipped: .* with {_D} slices \(.*\)",
        r"a larger CT series was skipped (\1 slices)",
    ),
)
QC_GENERIC = {
    "thick_slices": "slices thicker than 5 mm; the model expects thin-slice CT, small findings may be missed",
    "implausible_hu": "the values do not look like Hounsfield units",
    "contrast": "signs of iodinated contrast; the model is meant for non-contrast CT",
    "not_chest": "this does not look like a chest CT",
    "oblique_snapped": "oblique acquisition shown on the nearest axial/coronal/sagittal grid",
    "gantry_tilt_resampled": "gantry tilt resampled onto an orthogonal grid; positions are approximate near the edges",
    "unreadable_files": "DICOM files that could not be read were ignored",
    "nonfinite_values": "NaN/infinite voxels set to -1000 HU",
    "series_skipped": "a larger CT series was skipped",
}
QC_UNKNOWN = "quality-control warning (details in the clinical export)"


def shareable_warning(code: str, message: str) -> dict[str, str]:
    """A QC warning in the project's own words: numbers kept, quoted header text and paths never.

    The code is kept when it is one of the project's codes (lower-case letters and underscores);
    the message is rebuilt from the matching template, else the code's generic text.
    """
    code = str(code)
    if not re.fullmatch(r"[a-z_]{1,40}", code):
        code = "qc_warning"
    text = str(message)
    for c, pattern, template in _QC_REWRITES:
        if c != code:
            continue
        m = re.fullmatch(pattern, text, flags=re.DOTALL)
        if m:
            return {"code": code, "message": m.expand(template)}
    return {"code": code, "message": QC_GENERIC.get(code, QC_UNKNOWN)}


def shareable_warnings(warnings) -> list[dict[str, str]]:
    """``shareable_warning`` of each warning (QCWarning or {"code", "message"} dict)."""
    out = []
    for w in warnings:
        code = w["code"] if isinstance(w, dict) else w.code
        message = w["message"] if isinstance(w, dict) else w.message
        out.append(shareable_warning(code, message))
    return out
