"""scripts/keep_progress.sh: a run's resume state copied where git keeps it, within a size limit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "keep_progress.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(run: Path, dest: Path, **extra_env: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        PROGRESS=str(dest),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        **extra_env,
    )
    return subprocess.run(
        ["bash", str(SCRIPT), str(run)], capture_output=True, text=True, env=env, cwd=run.parent
    )


def _fake_run(folder: Path, epoch: int, extra_bytes: int = 0) -> Path:
    (folder / "last").mkdir(parents=True)
    (folder / "last" / "state.json").write_text(json.dumps({"epoch": epoch}))
    (folder / "last" / "model.safetensors").write_bytes(b"w" * 1000 + b"x" * extra_bytes)
    (folder / "log.jsonl").write_text('{"epoch": 1}\n')
    (folder / "train.log").write_text("progress bars")
    return folder


def test_the_resume_state_is_copied_and_a_second_copy_replaces_the_first(tmp_path):
    run = _fake_run(tmp_path / "runs" / "bb", epoch=3)
    done = _run(run, tmp_path / "progress")
    assert done.returncode == 0, done.stderr
    kept = tmp_path / "progress" / "bb"
    assert json.loads((kept / "last" / "state.json").read_text())["epoch"] == 3
    assert (kept / "log.jsonl").read_text() == '{"epoch": 1}\n'
    assert not (kept / "train.log").exists()  # logs of the terminal stay behind
    assert "epoch 3" in done.stdout
    (run / "last" / "state.json").write_text(json.dumps({"epoch": 4}))
    (run / "log.jsonl").unlink()
    assert _run(run, tmp_path / "progress").returncode == 0
    assert json.loads((kept / "last" / "state.json").read_text())["epoch"] == 4
    assert not (kept / "log.jsonl").exists()  # the copy is the run as it is now, nothing left over


def test_a_folder_without_resume_state_or_too_large_is_refused(tmp_path):
    empty = tmp_path / "runs" / "empty"
    empty.mkdir(parents=True)
    done = _run(empty, tmp_path / "progress")
    assert done.returncode == 2 and "no resume state" in done.stderr
    big = _fake_run(tmp_path / "runs" / "big", epoch=1, extra_bytes=17 * 2**20)
    done = _run(big, tmp_path / "progress")
    assert done.returncode == 2 and "too large" in done.stderr
    assert not (tmp_path / "progress" / "big").exists()


def test_another_limit_can_be_asked_for(tmp_path):
    big = _fake_run(tmp_path / "runs" / "stage2", epoch=9, extra_bytes=20 * 2**20)
    assert _run(big, tmp_path / "progress", LIMIT_MB="18").returncode == 2
    done = _run(big, tmp_path / "progress", LIMIT_MB="40")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "progress" / "stage2" / "last" / "model.safetensors").stat().st_size > 20 * 2**20
