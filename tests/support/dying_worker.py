"""A stand-in for a phantom-generating worker that dies (killed, out of memory) without a word.

Importable by spawned worker processes (tests and their support modules are on the inherited path).
"""

from __future__ import annotations

import os


def die(_job) -> None:
    os._exit(9)
