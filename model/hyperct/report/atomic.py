"""Export writes: atomic (``hyperct.atomic``), and never replacing an existing file unless told to.

A file is written to a temporary name in the target's own folder (same file system), flushed and
fsync'ed, then moved over the target with ``os.replace``: a reader sees either the old file or the
complete new one, never a half-written file, and an interrupted export leaves no partial target.

Without ``overwrite`` the complete file only takes a free name (``hyperct.atomic.publish``: a hard
link, or where the file system has none an exclusive-create claim), so nothing is ever replaced;
a target that exists is an ``OutputExistsError``. Errors of the file system are ``ExportError``.

Temporary files are named ``.<final name>.<8 random characters>.tmp``; ``temp_pattern`` recognises
them, so an export can remove those a killed run left behind. ``stem_lock`` serialises the writers
of one scan's files in one folder (``hyperct.report.export``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from hyperct.atomic import publish, remove_quietly, stage_file
from hyperct.errors import ExportError, OutputExistsError
from hyperct.filemodes import UMASK

FILE_MODE = 0o644 & ~UMASK  # report files: readable by all, writable by the owner


def check_targets(paths: Iterable[str | os.PathLike[str]], *, overwrite: bool) -> None:
    """Raise ``OutputExistsError`` naming the first target that exists (unless ``overwrite``)."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            raise ExportError("the output path is a folder", path=p, hint="choose another --out or stem")
        if p.exists() and not overwrite:
            raise exists_error(p, also="or choose another --out folder")


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; refuse to replace an existing file unless ``overwrite``."""
    path = Path(path)
    check_targets([path], overwrite=overwrite)
    place(stage(path, data), path, overwrite=overwrite)
    return path


def stage(path: str | os.PathLike[str], data: bytes | str) -> str:
    """Write ``data`` to a temporary file beside ``path`` (flushed, fsync'ed); return its name.

    On failure (e.g. a full disk) the temporary file is removed and ``ExportError`` raised.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot write to the folder ({exc})", path=path.parent) from exc
    try:
        return stage_file(path, data, mode=FILE_MODE)
    except OSError as exc:
        raise ExportError(f"writing failed ({exc})", path=path) from exc


def exists_error(path: Path, also: str = "") -> OutputExistsError:
    return OutputExistsError(
        "the output file already exists",
        path=path,
        hint="pass --overwrite (overwrite=True) to replace it" + (f", {also}" if also else ""),
    )


def place(tmp: str, path: str | os.PathLike[str], *, overwrite: bool) -> None:
    """Move the staged file ``tmp`` to ``path`` (never replacing a file unless ``overwrite``).

    ``tmp`` is gone afterwards, on success and on failure.
    """
    path = Path(path)
    try:
        if overwrite:
            os.replace(tmp, path)
        elif not publish(tmp, path):
            raise exists_error(path)
    except ExportError:
        raise
    except OSError as exc:
        raise ExportError(f"writing failed ({exc})", path=path) from exc
    finally:
        remove_quietly(tmp)


def temp_pattern(name: str) -> re.Pattern[str]:
    """The names ``stage`` gives the temporary files of a target called ``name``."""
    return re.compile(r"\." + re.escape(name) + r"\.[A-Za-z0-9_]{8}\.tmp")


TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp")
LOCK_WAIT_S = 120.0
LOCK_STALE_S = 600.0  # only without fcntl: an O_EXCL lock file older than this is from a dead run


@contextlib.contextmanager
def stem_lock(folder: str | os.PathLike[str], stem: str, *, wait_s: float | None = None) -> Iterator[None]:
    """Hold the lock of one scan's files (``.<stem>.hyperct.lock`` in ``folder``) while writing them.

    ``fcntl.flock`` where available (released by the system when a process dies); the lock file is
    removed on release, and a writer that locked a removed file tries again. Elsewhere an
    exclusive-create lock file, taken over when older than ``LOCK_STALE_S``. Waits up to ``wait_s``
    (default ``LOCK_WAIT_S``) seconds, then raises ``ExportError``; ``wait_s=0`` tries once.
    """
    folder = Path(folder)
    lock = folder / f".{stem}.hyperct.lock"
    wait = LOCK_WAIT_S if wait_s is None else wait_s
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot write to the folder ({exc})", path=folder) from exc
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None
    deadline = time.monotonic() + wait
    busy = ExportError(
        f"another export is writing this scan's files (lock held for {wait:.0f} s)",
        path=lock,
        hint="wait for it to finish and try again, or choose another --out folder",
    )
    if fcntl is None:  # pragma: no cover - Windows
        yield from _exclusive_lock(lock, deadline, busy)
        return
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise ExportError(f"cannot create the lock file ({exc})", path=lock) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise ExportError(f"cannot lock ({exc})", path=lock) from exc
            if time.monotonic() > deadline:
                raise busy from None
            time.sleep(0.05)
            continue
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if not same:  # the holder before us removed the file: lock the new one
            os.close(fd)
            continue
        break
    try:
        yield
    finally:
        remove_quietly(lock)
        os.close(fd)  # closing releases the flock


def _exclusive_lock(lock: Path, deadline: float, busy: ExportError):  # pragma: no cover - Windows
    while True:
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(fd)
            break
        except FileExistsError:
            try:
                if time.time() - lock.stat().st_mtime > LOCK_STALE_S:
                    remove_quietly(lock)
                    continue
            except FileNotFoundError:
                continue
            if time.monotonic() > deadline:
                raise busy from None
            time.sleep(0.05)
    try:
        yield
    finally:
        remove_quietly(lock)
