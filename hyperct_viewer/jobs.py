"""Background jobs of a HyperCT widget: one at a time, stale results dropped, errors told to the user.

Every widget that runs engine work (loading a model, analysing a scan, computing saliency,
exporting, the task-embedding statistics) goes through one ``Jobs`` object:

- one job at a time: ``start`` refuses while a job runs, unless ``queue=True`` (the latest queued
  job starts when the running one has finished; an earlier queued one is dropped);
- a generation counter: ``invalidate()`` (what changed makes running work meaningless) and
  ``cancel()`` bump it; a job's result, progress or error arriving from an older generation is
  dropped, so nothing computed for what the user has left is ever shown;
- cancel: generator jobs stop at their next step; plain functions run to the end and are dropped;
- errors to the user: a job's error goes to its ``on_error`` and, unless that returns True,
  to a napari error notification that leads with the cause (``user_message``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal

from hyperct_viewer.messages import user_message


@dataclass
class _Job:
    name: str
    func: Callable
    args: tuple
    on_done: Callable[[Any], None] | None
    on_progress: Callable[[Any], None] | None
    on_error: Callable[[BaseException], bool | None] | None
    on_aborted: Callable[[], None] | None


class Jobs(QObject):
    """One background job at a time for one widget (see the module docstring)."""

    busy_changed = Signal(bool)
    failed = Signal(str)  # the message shown to the user

    def __init__(self, parent: QObject | None = None, *, notify: bool = True) -> None:
        super().__init__(parent)
        self.generation = 0
        self.notify = notify
        self.worker = None  # the running napari worker (None when idle)
        self.name: str | None = None  # what it is doing
        self._queued: _Job | None = None

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(
        self,
        name: str,
        func: Callable,
        *args: Any,
        on_done: Callable[[Any], None] | None = None,
        on_progress: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], bool | None] | None = None,
        on_aborted: Callable[[], None] | None = None,
        queue: bool = False,
    ):
        """Run ``func(*args)`` in a thread (a generator function yields progress and returns its
        result). Returns the worker, or None when a job runs (then queued if ``queue``)."""
        job = _Job(name, func, args, on_done, on_progress, on_error, on_aborted)
        if self.worker is not None:
            if queue:
                self._queued = job
            return None
        return self._run(job)

    def _run(self, job: _Job):
        gen = self.generation
        worker = create_worker(job.func, *job.args, _start_thread=False, _ignore_errors=True)

        def current() -> bool:
            return gen == self.generation

        def returned(value):
            if current() and job.on_done is not None:
                job.on_done(value)

        def errored(exc):
            if not current():
                return
            handled = job.on_error(exc) if job.on_error is not None else None
            msg = user_message(exc)
            self.failed.emit(msg)
            if not handled and self.notify:
                from napari.utils.notifications import show_error

                show_error(msg)

        def aborted():
            if current() and job.on_aborted is not None:
                job.on_aborted()

        def yielded(step):
            if current() and job.on_progress is not None:
                job.on_progress(step)

        worker.returned.connect(returned)
        worker.errored.connect(errored)
        if hasattr(worker, "yielded"):
            worker.yielded.connect(yielded)
            worker.aborted.connect(aborted)
        worker.finished.connect(lambda: self._finished(worker))
        self.worker, self.name = worker, job.name
        self.busy_changed.emit(True)
        worker.start()
        return worker

    def _finished(self, worker) -> None:
        if worker is not self.worker:
            return
        self.worker, self.name = None, None
        job, self._queued = self._queued, None
        if job is not None:
            self._run(job)
        else:
            self.busy_changed.emit(False)

    def clear_queue(self) -> None:
        self._queued = None

    def invalidate(self) -> None:
        """Whatever runs now is stale: drop its result and the queued job (the thread may finish)."""
        self.generation += 1
        self._queued = None
        if self.worker is not None:
            self.worker.quit()

    def cancel(self) -> None:
        """The user's Cancel: the running job stops (generators at their next step) and is dropped."""
        self.invalidate()
