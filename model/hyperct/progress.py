"""Progress of long engine work: the ``Progress`` step a generator yields, and the loop that drives one.

Long work (scoring a scan, its task features) is written once as a generator that yields
``Progress`` between steps and returns its result. The viewer hands such a generator to a napari
worker (progress bar, cancel between steps); scripts and the CLI call ``run_steps``, which drives it
to the end with an optional callback and cancel test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

from hyperct.errors import HyperCTError

R = TypeVar("R")

NO_PROGRESS_ENV = "HYPERCT_NO_PROGRESS"


class Cancelled(HyperCTError):
    """The user cancelled the work."""


@dataclass(frozen=True)
class Progress:
    """One step of a long job: ``done`` of ``total`` steps, the stage's name and a message."""

    done: int
    total: int
    stage: str
    message: str


def run_steps(
    steps: Generator[Progress, None, R],
    *,
    progress: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    what: str = "the work",
) -> R:
    """Drive a generator of ``Progress`` to its end and return what it returns.

    ``progress(step)`` is called with every step; ``cancel()`` returning True closes the generator
    between steps and raises ``Cancelled`` ("<what> cancelled by the user").
    """
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        if progress:
            progress(step)
        if cancel and cancel():
            steps.close()
            raise Cancelled(f"{what} cancelled by the user")


def progress_enabled() -> bool:
    """False when ``HYPERCT_NO_PROGRESS`` is 1/true/yes: no progress bars or lines on the console."""
    return os.environ.get(NO_PROGRESS_ENV, "").strip().lower() not in ("1", "true", "yes")
