"""The job runner every HyperCT widget uses: one job at a time, stale results dropped, errors told."""

from __future__ import annotations

import threading

import pytest

pytestmark = pytest.mark.gui


def _runner(qtbot):
    from hyperct_viewer.jobs import Jobs

    return Jobs(notify=False)


def _wait_idle(jobs, qtbot):
    qtbot.waitUntil(lambda: not jobs.busy, timeout=10000)
    qtbot.wait(20)


def test_one_job_at_a_time_and_the_latest_queued_runs_next(qtbot):
    jobs = _runner(qtbot)
    gate = threading.Event()
    got = []
    assert jobs.start("slow", gate.wait, 5, on_done=lambda v: got.append(("slow", v))) is not None
    assert jobs.busy and jobs.name == "slow"
    assert jobs.start("refused", lambda: 1, on_done=got.append) is None  # not queued: dropped
    jobs.start("first", lambda: "first", on_done=got.append, queue=True)
    jobs.start("second", lambda: "second", on_done=got.append, queue=True)  # replaces "first"
    gate.set()
    qtbot.waitUntil(lambda: len(got) == 2, timeout=10000)
    _wait_idle(jobs, qtbot)
    assert got == [("slow", True), "second"]


def test_a_result_progress_or_error_of_an_older_generation_is_dropped(qtbot):
    jobs = _runner(qtbot)
    gate = threading.Event()
    got, errors, steps = [], [], []

    def steps_then_fail():
        yield 1
        gate.wait(5)
        yield 2
        raise ValueError("stale failure")

    jobs.start("gen", steps_then_fail, on_progress=steps.append, on_error=errors.append)
    qtbot.waitUntil(lambda: steps == [1], timeout=10000)
    jobs.invalidate()  # e.g. the model changed
    gate.set()
    _wait_idle(jobs, qtbot)
    assert steps == [1] and errors == []

    gate2 = threading.Event()
    jobs.start("func", lambda: gate2.wait(5) and "old", on_done=got.append)
    jobs.cancel()  # a plain function runs to its end; its result is not delivered
    gate2.set()
    _wait_idle(jobs, qtbot)
    assert got == []


def test_errors_reach_the_user_with_the_cause_first(qtbot, monkeypatch):
    import napari.utils.notifications as notifications

    from hyperct.errors import CorruptFileError
    from hyperct_viewer.jobs import Jobs

    shown, failed, handled = [], [], []
    monkeypatch.setattr(notifications, "show_error", shown.append)
    jobs = Jobs()
    jobs.failed.connect(failed.append)

    def boom():
        raise CorruptFileError("truncated pixel data", path="/data/ct/IM7")

    jobs.start("read", boom, on_error=handled.append)
    _wait_idle(jobs, qtbot)
    assert len(handled) == 1 and isinstance(handled[0], CorruptFileError)
    assert failed == shown == ["Damaged file: truncated pixel data (/data/ct/IM7)"]
