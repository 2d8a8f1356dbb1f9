"""Add HU windows to a stage-1 run between two epochs, so that ``hyperct pretrain --resume`` goes on
with them as if the backbone had always had them.

The run folder's backbone (``config.json``'s ``hu_windows``, ``model.safetensors``) and its resume
state (``last/model.safetensors``, ``last/optimizer.safetensors``: the patch embedding's weights and
their AdamW moments) are widened by ``hyperct.network.windows.widen_window_tensors``: the new windows
start at zero weight and zero moments, so the backbone computes exactly what it did, and training
then learns what the new windows show. Why (issue 18): a CNN given a narrow window around the blood /
myocardium contrast (45 +- 60 HU) learns the LV findings, the same CNN without it does not
(``benchmarks/reading_cnn_oracle.py --channels hu``); the demo backbone's soft-tissue window is
W400 L40.

A run with a conv stem (``hyperct.training.run_stem``) gets the new windows in its stem too: the stem's
first convolution reads every window, and its columns for the new ones start at zero.

Each of the four files is replaced atomically, the set is not: keep a copy of the run folder (as
``progress/`` does) until the command has reported the new windows.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save

from hyperct.atomic import replace_file
from hyperct.errors import CheckpointError
from hyperct.network.conv_stem import widen_stem_input
from hyperct.network.windows import check_windows, widen_window_tensors
from hyperct.training.pretrain import STATE_DIR
from hyperct.training.state import _read_tensors

EMBED = "embeddings.patch_embeddings"


def _widen(
    tensors: dict,
    prefix: str,
    old: int,
    new: int,
    suffix: str = "",
    *,
    stem: bool = False,
    moments: bool = False,
) -> None:
    w, q = f"{prefix}{EMBED}.weight{suffix}", f"{prefix}{EMBED}.pooled.weight{suffix}"
    if w not in tensors or q not in tensors:
        raise CheckpointError(f"no windowed patch embedding ({w}) in the run's tensors")
    tensors[w], tensors[q] = widen_window_tensors(tensors[w], tensors[q], old, new)
    if stem:  # the conv stem reads every window too
        s = f"{prefix}{EMBED}.stem.blocks.0.weight{suffix}"
        if s not in tensors and moments:  # a stem added since the last epoch has no moments yet
            return
        if s not in tensors:
            raise CheckpointError(f"the run's config has a conv stem, its tensors do not ({s})")
        try:
            tensors[s] = widen_stem_input(tensors[s], old, new)
        except ValueError as exc:
            raise CheckpointError(f"{s}: {exc}") from None


def _write(tensors: dict, path: Path) -> None:
    replace_file(path, save({k: v.contiguous() for k, v in tensors.items()}))


def run_folder(run: Path) -> tuple[Path, Path, dict]:
    """A stage-1 run folder's ``config.json`` path, its resume state folder and the backbone config;
    CheckpointError where either is missing or the config is not a JSON object."""
    cfg_path = run / "config.json"
    state = run / STATE_DIR
    if not (cfg_path.is_file() and (state / "state.json").is_file()):
        raise CheckpointError(
            f"{run} is not a stage-1 run folder with resume state (config.json, last/state.json)"
        )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path} is not readable JSON ({exc})"[:300]) from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path} does not hold a backbone configuration (a JSON object)")
    return cfg_path, state, cfg


def add_windows_to_run(run: str | Path, windows) -> list:
    """Append ``windows`` ([[lo, hi], ...] HU) to the HU windows of the stage-1 run in ``run`` (its
    backbone and its resume state). Returns the run's windows after. Refuses a run without windows,
    without resume state, or one that has any of ``windows`` already."""
    run = Path(run)
    windows = [list(w) for w in check_windows(windows)]
    cfg_path, state, cfg = run_folder(run)
    old = [list(map(float, w)) for w in cfg.get("hu_windows") or []]
    if not old:
        raise CheckpointError(f"{run}'s backbone has no HU windows to add to (see init_hu_windows)")
    if any(w in old for w in windows):
        raise CheckpointError(f"{run} has one of {windows} already: {old}")
    new = len(old) + len(windows)
    stem = bool(cfg.get("conv_stem"))
    backbone = _read_tensors(run / "model.safetensors")
    _widen(backbone, "", len(old), new, stem=stem)
    model = _read_tensors(state / "model.safetensors")
    _widen(model, "backbone.", len(old), new, stem=stem)
    optim = _read_tensors(state / "optimizer.safetensors")
    for moment in ("exp_avg", "exp_avg_sq"):
        _widen(optim, "backbone.", len(old), new, f"::{moment}", stem=stem, moments=True)
    _write(backbone, run / "model.safetensors")
    _write(model, state / "model.safetensors")
    _write(optim, state / "optimizer.safetensors")
    cfg["hu_windows"] = old + windows
    replace_file(cfg_path, json.dumps(cfg, indent=2))
    return cfg["hu_windows"]
