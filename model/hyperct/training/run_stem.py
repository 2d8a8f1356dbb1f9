"""Add a conv stem to the patch embedding of a stage-1 run between two epochs, so that ``hyperct
pretrain --resume`` goes on with it (``hyperct.network.conv_stem``: why, and what it computes).

The stem's tensors (its output projection at zero: the backbone computes exactly what it did) are
added to the run's backbone (``model.safetensors``, ``config.json``'s ``conv_stem``) and to its
resume state (``last/model.safetensors``); AdamW starts their moments at zero on the resume. Each
file is replaced atomically, the set is not: keep a copy of the run folder (as ``progress/`` does)
until the command has reported the stem.
"""

from __future__ import annotations

import json
from pathlib import Path

from hyperct.atomic import replace_file
from hyperct.errors import CheckpointError
from hyperct.network.conv_stem import check_stem_width, new_stem
from hyperct.training.run_windows import EMBED, _write, run_folder
from hyperct.training.state import _read_tensors


def add_conv_stem_to_run(run: str | Path, width: int, *, seed: int = 0) -> int:
    """Give the stage-1 run in ``run`` a conv stem of ``width`` (its blocks initialised from
    ``seed``). Returns the width. Refuses a run without HU windows or resume state, one with a stem,
    or a width or patch size the stem does not take."""
    run = Path(run)
    cfg_path, state, cfg = run_folder(run)
    if cfg.get("conv_stem"):
        raise CheckpointError(f"{run}'s backbone has a conv stem already (width {cfg['conv_stem']})")
    windows = cfg.get("hu_windows") or []
    if not windows:
        raise CheckpointError(
            f"{run}'s backbone has no HU windows, which the conv stem reads (see --add-hu-window)"
        )
    try:
        check_stem_width(width, int(cfg.get("patch_size", 0)))
        channels, hidden = int(cfg["num_channels"]) * (1 + len(windows)), int(cfg["hidden_size"])
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    except (KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{cfg_path}: patch_size, num_channels, hidden_size must be numbers ({exc!r})"
        ) from None
    stem = {k: v.detach() for k, v in new_stem(channels, width, hidden, seed=seed).state_dict().items()}
    backbone = _read_tensors(run / "model.safetensors")
    model = _read_tensors(state / "model.safetensors")
    for tensors, prefix in ((backbone, ""), (model, "backbone.")):
        weight = tensors.get(f"{prefix}{EMBED}.weight")
        if weight is None or weight.shape[1] != channels:
            raise CheckpointError(
                f"{run}: the tensors do not hold the windowed patch embedding config.json names"
            )
        tensors.update({f"{prefix}{EMBED}.stem.{k}": v.to(weight.dtype) for k, v in stem.items()})
    _write(backbone, run / "model.safetensors")
    _write(model, state / "model.safetensors")
    cfg["conv_stem"] = width
    replace_file(cfg_path, json.dumps(cfg, indent=2))
    return width
