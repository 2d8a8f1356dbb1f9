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
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

METHOD_TEXT = (
    "Shareable export: patient name, birth date, patient ID, other IDs, accession number, referring "
    "physician and file paths removed; IDs replaced by link IDs (HMAC-SHA256 with the site's link key, "
    f"first {LINK_ID_HEX} hex digits). Study/Series Instance UIDs and the study date are kept."
)


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
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ExportError(
            f"the link key file cannot be read ({exc})",
            path=path,
            hint=f"fix its permissions, or set the environment variable {LINK_KEY_ENV}",
        ) from exc
    if not text:
        raise ExportError(
            "the link key file is empty",
            path=path,
            hint=f"delete it (a new key is made) or set {LINK_KEY_ENV}",
        )
    return LinkKey(text.encode("utf-8"), "key file")


def _create_key_file(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process made it first: use theirs
    except OSError as exc:
        raise ExportError(
            f"cannot create the link key file ({exc})",
            path=path,
            hint=f"set the environment variable {LINK_KEY_ENV} (or {CONFIG_DIR_ENV} to a writable folder)",
        ) from exc
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secrets.token_hex(32) + "\n")


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
