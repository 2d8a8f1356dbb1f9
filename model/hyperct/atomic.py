"""Atomic replacement of files and folders: a reader sees the old one or the complete new one.

A file is written to a temporary name beside its target (``.<name>.<8 random characters>.tmp``,
same folder, so the same file system), flushed and fsync'ed, given its final mode, then renamed
over the target (``replace_file``) or given the target's name only if that name is free
(``publish``: a hard link, which fails if the name exists; where the file system has none, an
exclusive-create claim of the name that the complete file then replaces). A folder is filled under
a temporary name and then swapped in (``replacing_folder``). On any failure the temporary file or
folder is removed and the target is left as it was.

Who uses what: checkpoints and resume states (``replacing_folder``), the checkpoint manifest, the
screening tables and part files, the preprocessing cache (``replace_file``), the export set and the
link key (``stage_file`` + ``publish`` / ``os.replace``, in ``hyperct.report``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from hyperct.filemodes import FILE_MODE, set_default_modes

Content = bytes | str | Callable[[BinaryIO], object]

# link() errors that mean "this file system has no hard links" (FAT/exFAT, some SMB mounts).
NO_HARDLINK_ERRNOS = {
    getattr(errno, n)
    for n in ("EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS", "EMLINK", "EXDEV")
    if hasattr(errno, n)
}


def stage_file(
    path: str | os.PathLike[str], content: Content, *, mode: int = FILE_MODE, fsync: bool = True
) -> str:
    """Write ``content`` (bytes, text as UTF-8, or a function writing to the open binary file) to a
    temporary file beside ``path``; flush (and fsync), give it ``mode``; return its name.

    The folder is created if needed. On failure the temporary file is removed and the error raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        remove_quietly(tmp)
        raise
    return tmp


def replace_file(
    path: str | os.PathLike[str], content: Content, *, mode: int = FILE_MODE, fsync: bool = True
) -> Path:
    """Write ``path`` atomically, replacing what is there (see ``stage_file`` for the arguments)."""
    path = Path(path)
    tmp = stage_file(path, content, mode=mode, fsync=fsync)
    try:
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    return path


def publish(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Give the complete file ``tmp`` the name ``path`` only if no file has that name; return False
    (``path`` untouched) if one has. ``tmp`` is gone afterwards, on success and on failure.

    A hard link (atomic, fails if the name exists). Where the file system has no hard links the name
    is claimed with an exclusive create and the complete file replaces that empty claim: nothing is
    ever replaced, and a reader may see an empty file for a moment.
    """
    try:
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in NO_HARDLINK_ERRNOS:
                raise
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        os.close(fd)
        os.replace(tmp, path)
        return True
    finally:
        remove_quietly(tmp)


@contextlib.contextmanager
def replacing_folder(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Fill a new temporary folder beside ``directory`` (yielded); on leaving the block it gets the
    modes of a plain mkdir/open and replaces ``directory`` (an existing one is moved aside to
    ``.<name>.old`` and removed). On an error in the block the temporary folder is removed and
    ``directory`` is left as it was."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield tmp
        set_default_modes(tmp)
        old = directory.with_name(f".{directory.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_quietly(path: str | os.PathLike[str]) -> None:
    """Remove a file if it is there (errors ignored: used when cleaning up after a failure)."""
    with contextlib.suppress(OSError):
        os.unlink(path)
