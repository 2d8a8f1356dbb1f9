"""tqdm progress bars (loss, ETA), silenced by ``HYPERCT_NO_PROGRESS=1`` or on non-zero ranks."""

from __future__ import annotations

import sys

from hyperct.progress import progress_enabled

__all__ = ["progress_bar", "progress_enabled"]


def progress_bar(
    iterable=None, *, desc: str = "", total: int | None = None, unit: str = "it", enabled: bool = True
):
    from tqdm.auto import tqdm

    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        disable=not (enabled and progress_enabled()),
        dynamic_ncols=True,
        leave=False,
        file=sys.stderr,
    )
