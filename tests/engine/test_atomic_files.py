"""hyperct.atomic: a reader sees the old file/folder or the complete new one, never a part."""

from __future__ import annotations

import errno
import os

import pytest

from hyperct import atomic
from hyperct.filemodes import DIR_MODE, FILE_MODE


def test_replace_file_writes_bytes_text_or_a_writer_with_ordinary_modes(tmp_path):
    a = atomic.replace_file(tmp_path / "sub" / "a.txt", "é\n")
    assert a.read_bytes() == "é\n".encode()
    atomic.replace_file(a, lambda f: f.write(b"new"), fsync=False)
    assert a.read_bytes() == b"new"
    assert a.stat().st_mode & 0o777 == FILE_MODE
    assert os.listdir(a.parent) == ["a.txt"]


def test_a_failed_replace_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "t.json"
    target.write_bytes(b"old")

    def writer(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic.replace_file(target, writer)
    monkeypatch.setattr(atomic.os, "replace", lambda s, d: (_ for _ in ()).throw(OSError(5, "I/O")))
    with pytest.raises(OSError, match="I/O"):
        atomic.replace_file(target, b"new")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["t.json"]


@pytest.mark.parametrize("hard_links", [True, False])
def test_publish_takes_a_free_name_and_never_replaces(tmp_path, monkeypatch, hard_links):
    if not hard_links:
        monkeypatch.setattr(atomic.os, "link", lambda s, d: (_ for _ in ()).throw(OSError(errno.EPERM, "x")))
    free = tmp_path / "free"
    assert atomic.publish(atomic.stage_file(free, b"mine", mode=0o600), free) is True
    assert free.read_bytes() == b"mine" and free.stat().st_mode & 0o777 == 0o600
    taken = tmp_path / "taken"
    taken.write_bytes(b"theirs")
    assert atomic.publish(atomic.stage_file(taken, b"mine"), taken) is False
    assert taken.read_bytes() == b"theirs"
    assert sorted(os.listdir(tmp_path)) == ["free", "taken"]  # no temporary file left


def test_replacing_folder_swaps_in_the_complete_folder(tmp_path):
    target = tmp_path / "ckpt"
    with atomic.replacing_folder(target) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1" and target.stat().st_mode & 0o777 == DIR_MODE
    with atomic.replacing_folder(target) as tmp:
        (tmp / "b").write_text("2")
        assert (target / "a").exists()  # the old folder is whole while the new one is written
    assert os.listdir(target) == ["b"] and os.listdir(tmp_path) == ["ckpt"]


def test_a_failure_inside_replacing_folder_keeps_the_old_folder(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic.replacing_folder(target) as tmp:
        (tmp / "a").write_text("new")
        raise RuntimeError("interrupted")
    assert (target / "a").read_text() == "old" and os.listdir(tmp_path) == ["ckpt"]
