"""Start a phantom-worker pool, print its worker's pid, then die without shutting the pool down
(what a training run killed with SIGTERM does). Run as ``python -m tests.support.orphan_pool
[busy|starting]``: ``busy`` dies while the worker runs a job, ``starting`` while it is still
starting up (before its initialiser has run)."""

from __future__ import annotations

import os
import sys
import time

from hyperct.training.datasets.phantoms import worker_pool


def _pid(_):
    return os.getpid()


if __name__ == "__main__":
    pool = worker_pool(1)
    if sys.argv[1:] == ["starting"]:
        pool.submit(time.sleep, 60)
        print(*pool._processes, flush=True)  # spawned by submit; still importing
        os._exit(1)
    print(pool.submit(_pid, 0).result(), flush=True)
    pool.submit(time.sleep, 60)  # the worker is busy when its parent dies
    time.sleep(0.5)
    os._exit(1)
