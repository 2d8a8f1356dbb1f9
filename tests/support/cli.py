"""The ``hyperct`` command run in-process, its output captured, and the settings of a test site."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperct.cli.main import main


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``hyperct ARGV``: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def site_settings(root: Path, link_key: str) -> Iterator[pytest.MonkeyPatch]:
    """For the ``with`` block: one site's link key, and a private configuration folder under ``root``
    (nothing is read from or written into the real user's); yields the monkeypatch for more settings."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYPERCT_LINK_KEY", link_key)
        mp.setenv("HYPERCT_CONFIG_DIR", str(root / "config"))
        yield mp


FEW_FINDINGS = "cardiomegaly,emphysema"  # two tasks keep the tiny model's passes short


def predict_options(root: Path) -> list[str]:
    """``--model ROOT/ckpt --device cpu --findings cardiomegaly,emphysema``: the tiny checkpoint that
    a test saved under ``root``, on the CPU, scoring two findings."""
    return ["--model", str(root / "ckpt"), "--device", "cpu", "--findings", FEW_FINDINGS]
