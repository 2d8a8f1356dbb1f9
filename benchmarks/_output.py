"""Shared by the benchmark scripts: print the result as JSON, and keep a copy when asked."""

from __future__ import annotations

import json
from pathlib import Path


def emit_json(result: dict, out: str | None) -> None:
    """Print ``result`` as indented JSON; also write it to ``out`` (folders created) when given, first,
    so that a closed pipe on stdout (``| head``) does not lose the file."""
    text = json.dumps(result, indent=2)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    print(text)
