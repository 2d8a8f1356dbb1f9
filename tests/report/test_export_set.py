"""One scan's files are a set (issue 15): a killed run is recognisable and resumable, its temporary
files are cleaned, writers of one stem take turns, files under one stem come from one report, the
no-overwrite guarantee holds without hard links, and the link key is never read empty."""

from __future__ import annotations

import errno
import importlib
import json
import multiprocessing as mp
import os

import pytest

from hyperct.errors import ExportError
from hyperct.report import atomic, deid, export
from tests.support.results import make_result
from tests.support.volumes import make_volume

CTX = mp.get_context("fork")
export_mod = importlib.import_module("hyperct.report.export")  # the module (the package exports the function)


def _visible(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


def _killed_export(out, key, kill_after: int) -> None:
    """Child: export JSON, PDF and SR; die (as from SIGKILL: no cleanup) after ``kill_after`` files."""
    os.environ["HYPERCT_LINK_KEY"] = key
    real, n = export_mod.place, [0]

    def dying_place(tmp, path, *, overwrite):
        if n[0] == kill_after:
            os._exit(9)
        n[0] += 1
        real(tmp, path, overwrite=overwrite)

    export_mod.place = dying_place
    vol = make_volume()
    export(make_result(vol), vol, None, out, ("json", "pdf", "sr"), stem="case")


def test_a_killed_export_is_resumed_without_overwrite_and_its_temp_files_cleaned(link_env, tmp_path):
    p = CTX.Process(target=_killed_export, args=(tmp_path, "test-site-key", 1))
    p.start()
    p.join(60)
    assert p.exitcode == 9
    left = os.listdir(tmp_path)
    assert _visible(tmp_path) == ["case.hyperct.sr.dcm"]  # the SR first, the JSON last
    assert any(n.endswith(".tmp") for n in left)  # the killed run's temporary files
    rec = json.loads((tmp_path / ".case.hyperct.set").read_text())
    assert rec["complete"] is False  # recognisably incomplete
    vol = make_volume()
    paths = export(make_result(vol), vol, None, tmp_path, ("json", "pdf", "sr"), stem="case")  # no overwrite
    assert _visible(tmp_path) == sorted(p.name for p in paths.values())
    assert sorted(os.listdir(tmp_path)) == sorted(_visible(tmp_path) + [".case.hyperct.set"])  # no .tmp
    assert json.loads((tmp_path / ".case.hyperct.set").read_text())["complete"] is True
    with pytest.raises(ExportError, match="already exists"):  # a complete set is protected again
        export(make_result(vol), vol, None, tmp_path, ("json",), stem="case")


def _killed_at_fsync(out, key, k: int) -> None:
    """Child: export JSON, PDF and SR and die (no cleanup) at the k-th fsync: a kill at any point."""
    os.environ["HYPERCT_LINK_KEY"] = key
    real, n = os.fsync, [0]

    def dying_fsync(fd):
        n[0] += 1
        if n[0] == k:
            os._exit(9)
        real(fd)

    os.fsync = dying_fsync
    vol = make_volume()
    export(make_result(vol), vol, None, out, ("json", "pdf", "sr"), stem="case")


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_a_run_killed_anywhere_is_completed_by_the_next_run_without_overwrite(link_env, tmp_path, k):
    p = CTX.Process(target=_killed_at_fsync, args=(tmp_path, "test-site-key", k))
    p.start()
    p.join(60)
    assert p.exitcode == 9
    vol = make_volume()
    paths = export(make_result(vol), vol, None, tmp_path, ("json", "pdf", "sr"), stem="case")
    assert _visible(tmp_path) == sorted(p.name for p in paths.values())
    assert not [n for n in os.listdir(tmp_path) if n.endswith((".tmp", ".lock"))]


def test_temp_files_of_killed_runs_of_other_scans_are_removed_too(link_env, tmp_path):
    stale = [".other.hyperct.pdf.ab12cd34.tmp", ".other.saliency.emphysema.nii.gz.zz99yy88.tmp"]
    for n in stale:
        (tmp_path / n).write_bytes(b"half")
    (tmp_path / ".notes.txt.ab12cd34.tmp").write_bytes(b"not ours")
    vol = make_volume()
    export(make_result(vol), vol, None, tmp_path, ("json",), stem="case")
    assert not any((tmp_path / n).exists() for n in stale)
    assert (tmp_path / ".notes.txt.ab12cd34.tmp").exists()  # not an export's temp file: left alone


def test_a_running_export_keeps_its_temp_files(link_env, tmp_path):
    (tmp_path / ".busy.hyperct.json.ab12cd34.tmp").write_bytes(b"being written")
    with atomic.stem_lock(tmp_path, "busy"):  # an export of "busy" is running
        export_mod.clean_stale_temps(tmp_path, "case")
        assert (tmp_path / ".busy.hyperct.json.ab12cd34.tmp").exists()


def test_one_stem_holds_one_report_after_writers_with_different_formats(link_env, tmp_path):
    vol = make_volume()
    a, b = make_result(vol), make_result(vol)
    export(a, vol, None, tmp_path, ("json", "pdf"), stem="case")
    with pytest.raises(ExportError, match="another report of this scan"):
        export(b, vol, None, tmp_path, ("sr",), stem="case")  # would sit beside A's JSON and PDF
    export(b, vol, None, tmp_path, ("json", "sr"), stem="case", overwrite=True)
    assert _visible(tmp_path) == ["case.hyperct.json", "case.hyperct.sr.dcm"]  # A's PDF is gone
    assert json.loads((tmp_path / "case.hyperct.json").read_text())["report_id"] == b.report_id
    export(b, vol, None, tmp_path, ("pdf",), stem="case")  # the same report: one more format is fine
    assert len(_visible(tmp_path)) == 3


def _writer(out, letter: str, keys, n: int) -> None:
    for _ in range(n):
        files = {k: (out / f"s{export_mod.SUFFIXES[k]}", letter * 1000) for k in keys}
        export_mod.write_set(out, "s", files, report_id=letter, overwrite=True)


def test_concurrent_writers_of_one_stem_never_interleave(tmp_path):
    procs = [
        CTX.Process(target=_writer, args=(tmp_path, "A", ("json", "pdf"), 30)),
        CTX.Process(target=_writer, args=(tmp_path, "B", ("json", "sr"), 30)),
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    contents = {(tmp_path / n).read_text()[0] for n in _visible(tmp_path)}
    assert len(contents) == 1 and len(_visible(tmp_path)) == 2
    assert not [n for n in os.listdir(tmp_path) if n.endswith((".tmp", ".lock"))]


def test_a_held_lock_makes_a_second_writer_wait_then_give_up(tmp_path):
    with atomic.stem_lock(tmp_path, "s"):
        p = CTX.Process(target=_lock_once, args=(tmp_path,))
        p.start()
        p.join(30)
        assert p.exitcode == 3  # refused: "another export is writing"
    with atomic.stem_lock(tmp_path, "s", wait_s=0):  # released (and the lock file removed)
        pass
    assert os.listdir(tmp_path) == []


def _lock_once(out) -> None:
    try:
        with atomic.stem_lock(out, "s", wait_s=0.3):
            os._exit(0)
    except ExportError as exc:
        os._exit(3 if "another export is writing" in str(exc) else 4)


def test_a_failure_while_placing_names_what_was_written_and_a_retry_completes(
    link_env, tmp_path, monkeypatch
):
    real, n = export_mod.place, [0]

    def failing(tmp, path, *, overwrite):
        n[0] += 1
        if n[0] == 2:
            os.unlink(tmp)
            raise ExportError("writing failed ([Errno 5] Input/output error)", path=path)
        real(tmp, path, overwrite=overwrite)

    monkeypatch.setattr(export_mod, "place", failing)
    vol = make_volume()
    with pytest.raises(ExportError) as err:
        export(make_result(vol), vol, None, tmp_path, ("json", "pdf", "sr"), stem="case")
    assert set(err.value.written) == {"sr"} and "written case.hyperct.sr.dcm" in str(err.value)
    assert "not written case.hyperct.pdf, case.hyperct.json" in str(err.value)
    assert [x for x in os.listdir(tmp_path) if x.endswith(".tmp")] == []
    monkeypatch.setattr(export_mod, "place", real)
    export(make_result(vol), vol, None, tmp_path, ("json", "pdf", "sr"), stem="case")  # no --overwrite
    assert len(_visible(tmp_path)) == 3


def test_without_hard_links_an_existing_file_is_still_never_replaced(tmp_path, monkeypatch):
    target = tmp_path / "a.json"

    def no_link_and_a_racer(src, dst):
        target.write_bytes(b"someone else")  # appears after the check, before the move
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "link", no_link_and_a_racer)
    with pytest.raises(ExportError, match="already exists"):
        atomic.write_atomic(target, b"mine")
    assert target.read_bytes() == b"someone else"
    assert os.listdir(tmp_path) == ["a.json"]
    monkeypatch.setattr(atomic.os, "link", lambda s, d: (_ for _ in ()).throw(OSError(errno.EPERM, "x")))
    atomic.write_atomic(tmp_path / "b.json", b"mine")  # without a racer it is written
    assert (tmp_path / "b.json").read_bytes() == b"mine"


def test_a_racing_creator_of_the_link_key_is_never_read_empty(monkeypatch, tmp_path):
    """Another process makes the key while this one is creating it: both use one complete key."""
    monkeypatch.delenv("HYPERCT_LINK_KEY", raising=False)
    monkeypatch.setenv("HYPERCT_CONFIG_DIR", str(tmp_path / "cfg"))
    real = deid.secrets.token_hex
    seen = []

    def racing_token(n):
        if not seen:
            seen.append(None)
            seen[0] = deid.link_key()  # the other process wins the race meanwhile
        return real(n)

    monkeypatch.setattr(deid.secrets, "token_hex", racing_token)
    mine = deid.link_key()
    assert mine.key and mine.key == seen[0].key
    assert (tmp_path / "cfg" / "link.key").stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path / "cfg") == ["link.key"]


def _read_key(cfg, q) -> None:
    os.environ.pop("HYPERCT_LINK_KEY", None)
    os.environ["HYPERCT_CONFIG_DIR"] = cfg
    try:
        q.put(deid.link_key().key)
    except ExportError as exc:
        q.put(str(exc))


def test_six_processes_creating_the_link_key_agree(tmp_path):
    for trial in range(8):
        cfg = str(tmp_path / f"cfg{trial}")
        q = CTX.Queue()
        procs = [CTX.Process(target=_read_key, args=(cfg, q)) for _ in range(6)]
        for p in procs:
            p.start()
        keys = [q.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        assert len(set(keys)) == 1 and isinstance(keys[0], bytes) and len(keys[0]) == 64


def test_the_link_key_without_hard_links(monkeypatch, tmp_path):
    monkeypatch.delenv("HYPERCT_LINK_KEY", raising=False)
    monkeypatch.setenv("HYPERCT_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setattr(deid.os, "link", lambda s, d: (_ for _ in ()).throw(OSError(errno.EPERM, "x")))
    key = deid.link_key()
    assert len(key.key) == 64 and deid.link_key().key == key.key
    assert os.listdir(tmp_path / "cfg") == ["link.key"]
