"""Atomic writes: complete file or nothing, and never a silent overwrite."""

from __future__ import annotations

import os

import pytest

from hyperct.errors import ExportError
from hyperct.report import atomic
from hyperct.report.atomic import check_targets, write_atomic


def test_writes_the_bytes_and_leaves_no_temporary_file(tmp_path):
    p = write_atomic(tmp_path / "sub" / "a.json", '{"x": 1}')
    assert p.read_text() == '{"x": 1}'
    assert sorted(os.listdir(tmp_path / "sub")) == ["a.json"]


def test_refuses_to_overwrite_and_names_the_file(tmp_path):
    target = tmp_path / "a.pdf"
    target.write_bytes(b"old")
    with pytest.raises(ExportError) as err:
        write_atomic(target, b"new")
    assert str(target) in str(err.value) and "--overwrite" in str(err.value)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.pdf"]


def test_overwrite_replaces(tmp_path):
    target = tmp_path / "a.pdf"
    target.write_bytes(b"old")
    write_atomic(target, b"new", overwrite=True)
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["a.pdf"]


def test_a_failed_write_leaves_neither_target_nor_temporary(tmp_path, monkeypatch):
    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", broken_fsync)
    with pytest.raises(ExportError, match="No space left"):
        write_atomic(tmp_path / "a.json", b"x" * 1000)
    assert os.listdir(tmp_path) == []


def test_a_failed_replace_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    target.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(ExportError, match="I/O error"):
        write_atomic(target, b"new", overwrite=True)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.json"]


def test_a_file_appearing_during_the_write_is_not_replaced(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    real_fsync = os.fsync

    def racing_fsync(fd):
        real_fsync(fd)
        target.write_bytes(b"someone else")

    monkeypatch.setattr(atomic.os, "fsync", racing_fsync)
    with pytest.raises(ExportError, match="already exists"):
        write_atomic(target, b"mine")
    assert target.read_bytes() == b"someone else"
    assert os.listdir(tmp_path) == ["a.json"]


def test_check_targets_refuses_a_folder_even_with_overwrite(tmp_path):
    (tmp_path / "x.pdf").mkdir()
    with pytest.raises(ExportError, match="is a folder"):
        check_targets([tmp_path / "x.pdf"], overwrite=True)
