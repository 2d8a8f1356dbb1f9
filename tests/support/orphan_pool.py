"""Start a phantom-worker pool, print its worker's pid, then die without shutting the pool down
(what a training run killed with SIGTERM does). Run as ``python -m tests.support.orphan_pool
[busy|starting]``: ``busy`` dies while the worker runs a job, ``starting`` while it is still
starting up (before its initialiser has run)."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from hyperct.training.datasets.phantoms import _quiet_worker


def _pid(_):
    return os.getpid()


if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_quiet_worker)
    if sys.argv[1:] == ["starting"]:
        pool.submit(time.sleep, 60)
        print(*pool._processes, flush=True)  # spawned by submit; still importing
        os._exit(1)
    print(pool.submit(_pid, 0).result(), flush=True)
    pool.submit(time.sleep, 60)  # the worker is busy when its parent dies
    time.sleep(0.5)
    os._exit(1)
