"""Subprocess side of the reader mutation fuzz (``test_io_mutation_fuzz``): reads one input per request.

``Worker`` is the test side; the process runs as ``python -m tests.support.fuzz_worker LIMIT_BYTES``.
The address space is limited first (so a reader that allocates for a size it only read from a header
fails here with ``MemoryError`` instead of taking the machine), then each stdin line
``{"path": ..., "min_slices": n}`` is answered on stdout with one JSON line:
``{"outcome": "ok", "source_shape": [...], ...}``, ``{"outcome": "typed", "type": ..., "message": ...}``
for a ``hyperct.errors.InputError``, or ``{"outcome": "untyped", ...}`` with the traceback for
anything else (``MemoryError`` included).
"""

from __future__ import annotations

import json
import os
import resource
import select
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _answer(request: dict) -> dict:
    import numpy as np

    from hyperct.errors import InputError
    from hyperct.io import read_ct

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom/nibabel warn about the damaged values we wrote
            vol = read_ct(request["path"], min_slices=int(request.get("min_slices", 16)))
    except InputError as exc:
        return {"outcome": "typed", "type": type(exc).__name__, "message": str(exc)}
    except BaseException as exc:  # noqa: BLE001 - this is what the fuzz is looking for
        return {
            "outcome": "untyped",
            "type": type(exc).__name__,
            "message": str(exc)[:2000],
            "traceback": traceback.format_exc()[-4000:],
        }
    return {
        "outcome": "ok",
        "source_shape": [int(n) for n in vol.source_shape],
        "finite": bool(np.isfinite(vol.hu).all()),
        "spacing_ok": bool(np.all(np.isfinite(vol.spacing)) and all(s > 0 for s in vol.spacing)),
        "origin_ok": bool(np.all(np.isfinite(vol.origin))),
        "warnings": [w.code for w in vol.warnings],
    }


class Worker:
    """One ``fuzz_worker`` process; restarted after a hang or a crash."""

    def __init__(self, *, memory_bytes: int = 2 << 30, timeout_s: float = 60.0) -> None:
        self.proc: subprocess.Popen | None = None
        self.memory_bytes = memory_bytes
        self.timeout_s = timeout_s

    def start(self) -> None:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fuzz_worker", str(self.memory_bytes)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        ready = self._line(120.0)
        assert ready is not None and json.loads(ready)["outcome"] == "ready", "fuzz worker did not start"

    def _line(self, timeout: float) -> str | None:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        return self.proc.stdout.readline() or None

    def ask(self, path: str | os.PathLike[str], min_slices: int = 16) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"path": str(path), "min_slices": min_slices}) + "\n")
        self.proc.stdin.flush()
        start = time.monotonic()
        line = self._line(self.timeout_s)
        if line is None:
            hung = self.proc.poll() is None
            self.stop()
            return {"outcome": "hang" if hung else "crash", "seconds": round(time.monotonic() - start, 1)}
        return json.loads(line)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def main() -> None:
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import hyperct.io  # noqa: F401 - import before the first request, so that the per-case timeout is for reading

    print(json.dumps({"outcome": "ready"}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = _answer(json.loads(line))
        except BaseException as exc:  # noqa: BLE001 - never die silently: say what went wrong
            reply = {"outcome": "untyped", "type": type(exc).__name__, "message": str(exc)[:2000]}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
