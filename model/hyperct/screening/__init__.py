"""``hyperct.screening``: score every chest CT of an archive (``hyperct screen``).

* ``index``: the index pass (headers only): files -> studies -> the series to score, by the rules of
  ``hyperct.io.selection`` plus non-contrast first where the header says so;
* ``run``: reading in worker processes overlapped with batched scoring, one atomic part file per
  completed study (resumable), ``torchrun`` sharding by rank, rank 0 merging;
* ``tables``: the results, index and summary tables (Parquet + CSV, JSON + text).

API::

    screen(Source(root), ScreenOptions(out=Path(...)), model_dir=None, device="auto") -> ScreenOutcome
"""

from hyperct.screening.index import Source, StudyEntry
from hyperct.screening.run import ScreenInterrupted, ScreenOptions, ScreenOutcome, screen

__all__ = ["Source", "StudyEntry", "ScreenOptions", "ScreenOutcome", "ScreenInterrupted", "screen"]
