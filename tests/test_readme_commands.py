"""The README's two quick-start commands are what users and CI run."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _line_after(marker: str) -> str:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    return next(lines[i + 1] for i, line in enumerate(lines) if line.startswith(marker))


def test_quick_start_has_exactly_two_setup_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = quick.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2
    assert "hyperct-viewer --sample" in _line_after("# 1. ") and "torch==2.13.0" in _line_after("# 1. ")
    assert _line_after("# 2. ").endswith("python -m pytest") and "[viewer,test]" in _line_after("# 2. ")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    extract = next(line for line in ci.splitlines() if line.startswith("test_cmd="))
    script = extract.split("=", 1)[1].strip("$()")
    out = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == _line_after("# 2. ")
    assert "torch==2.13.0" in out
