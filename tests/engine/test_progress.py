"""The step loop shared by the CLI and scripts, device helpers, and JSON-ready values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hyperct.device import autocast_for, task_chunks
from hyperct.jsonable import jsonable
from hyperct.progress import Cancelled, Progress, progress_enabled, run_steps


def _steps(log):
    try:
        for k in range(3):
            yield Progress(k, 3, "work", f"step {k}")
            log.append(k)
        return "result"
    finally:
        log.append("closed")


def test_run_steps_returns_the_result_and_reports_every_step():
    log, seen = [], []
    assert run_steps(_steps(log), progress=seen.append) == "result"
    assert [s.done for s in seen] == [0, 1, 2] and log == [0, 1, 2, "closed"]


def test_cancel_stops_between_steps_and_closes_the_generator():
    log = []
    with pytest.raises(Cancelled, match="analysis cancelled by the user"):
        run_steps(_steps(log), cancel=lambda: len(log) >= 1, what="analysis")
    assert log == [0, "closed"]  # step 1's work never ran


def test_progress_switch(monkeypatch):
    for value, on in (("", True), ("0", True), ("1", False), ("yes", False), ("TRUE", False)):
        monkeypatch.setenv("HYPERCT_NO_PROGRESS", value)
        assert progress_enabled() is on


def test_task_chunks_cover_every_task_once_in_order():
    assert task_chunks(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert task_chunks([4, 9], 25) == [[4, 9]] and task_chunks([], 5) == []
    assert task_chunks([1, 2], 0) == [[1], [2]]  # a chunk is at least one task


def test_autocast_bf16_only_where_asked():
    cpu = torch.device("cpu")
    x = torch.ones(2, 2)
    for amp, dtype in (("auto", torch.float32), ("off", torch.float32), ("bf16", torch.bfloat16)):
        with autocast_for(cpu, amp):
            assert (x @ x).dtype == dtype


def test_jsonable_gives_plain_finite_values():
    out = jsonable({"a": np.float32(0.5), "b": (np.int64(2), math.nan), "c": np.array([1.0, np.inf])})
    assert out == {"a": 0.5, "b": [2, None], "c": [1.0, None]}
    assert type(out["a"]) is float and type(out["b"][0]) is int
