"""Atomic file writes that never replace an existing file unless told to.

A file is written to a temporary name in the target's own folder (same file system), flushed and
fsync'ed, then moved over the target with ``os.replace``: a reader sees either the old file or the
complete new one, never a half-written file, and an interrupted export leaves no partial target.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from hyperct.errors import ExportError
from hyperct.filemodes import UMASK


def check_targets(paths: Iterable[str | os.PathLike[str]], *, overwrite: bool) -> None:
    """Raise ``ExportError`` naming the first target that exists (unless ``overwrite``)."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            raise ExportError("the output path is a folder", path=p, hint="choose another --out or stem")
        if p.exists() and not overwrite:
            raise ExportError(
                "the output file already exists",
                path=p,
                hint="pass --overwrite (overwrite=True) to replace it, or choose another --out folder",
            )


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; refuse to replace an existing file unless ``overwrite``."""
    path = Path(path)
    check_targets([path], overwrite=overwrite)
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ExportError(f"cannot write to the folder ({exc})", path=path.parent) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644 & ~UMASK)
        if not overwrite:
            # A file may have appeared meanwhile: link() fails if it exists, so nothing is replaced.
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise ExportError(
                    "the output file already exists",
                    path=path,
                    hint="pass --overwrite (overwrite=True) to replace it",
                ) from None
            except OSError:  # file system without hard links: plain replace after the check above
                os.replace(tmp, path)
            else:
                os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except ExportError:
        _remove(tmp)
        raise
    except OSError as exc:
        _remove(tmp)
        raise ExportError(f"writing failed ({exc})", path=path) from exc
    except BaseException:
        _remove(tmp)
        raise
    return path


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
