"""Values made fit for JSON: plain Python numbers, lists and dicts, no NaN or Infinity."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def jsonable(x: Any) -> Any:
    """``x`` with NumPy scalars and arrays turned into Python numbers and lists, tuples into lists,
    and non-finite floats (NaN, +-inf) into None (JSON has no NaN); dict keys are kept."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
