"""Ordinary permissions for files and folders written through temporary names.

``tempfile.mkstemp`` / ``mkdtemp`` (and safetensors' own atomic writes) create 0600 files and 0700
folders. Renamed into place as they are, a checkpoint or cache written by one user could not be read by
colleagues or a service account sharing the folder, unlike every other file the user writes. After
writing, give them the mode a plain ``open()`` / ``mkdir()`` would have (0666 / 0777 minus the umask).
"""

from __future__ import annotations

import os
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0o022)  # read once at import (os.umask can only be read by setting it)
    os.umask(mask)
    return mask


UMASK = _read_umask()
FILE_MODE = 0o666 & ~UMASK
DIR_MODE = 0o777 & ~UMASK


def set_default_modes(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the modes of a plain open()/mkdir()."""
    path = Path(path)
    if path.is_dir():
        os.chmod(path, DIR_MODE)
        for child in path.rglob("*"):
            os.chmod(child, DIR_MODE if child.is_dir() else FILE_MODE)
    else:
        os.chmod(path, FILE_MODE)
