"""The tiny HyperCT used across the tests: same structure as the real backbones, small enough for
unit tests (random weights; no trained model needed)."""

from __future__ import annotations

from pathlib import Path

import torch

from hyperct.checkpoint import build_manifest, save_checkpoint
from hyperct.network import HyperCT, HyperCTConfig
from hyperct.network.backbone import BACKBONE_CONFIGS

TINY_BACKBONE = dict(
    BACKBONE_CONFIGS["demo"], hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2
)


def tiny_model(
    seed: int = 0, *, random_lora: bool = True, rank: int = 4, patch: int = 16, hu_windows=None
) -> HyperCT:
    torch.manual_seed(seed)
    backbone = dict(TINY_BACKBONE, patch_size=patch)
    if hu_windows:
        backbone["hu_windows"] = [list(w) for w in hu_windows]
    model = HyperCT(
        HyperCTConfig(
            backbone=backbone,
            task_dim=16,
            pos_dim=8,
            hyper_hidden=16,
            rank=rank,
            alpha=rank,
        )
    )
    if random_lora:
        # Non-zero B (trained-like) so every task has its own, clearly different update.
        with torch.no_grad():
            for kind, head in model.hypernet.heads.items():
                n_a = model.hypernet.rank * model.hypernet.dims[kind][0]
                head.weight[n_a:].normal_(0, 0.2)
                head.bias[n_a:].normal_(0, 0.2)
    return model.eval()


def save_tiny_checkpoint(
    path: Path,
    *,
    seed: int = 0,
    model_name: str = "HyperCT-tiny",
    model_version: str = "0.0.1",
    backbone_source: str = "random",
    hu_windows=None,
) -> Path:
    """``tiny_model(seed, hu_windows=...)`` saved as a checkpoint folder with its backbone included;
    returns the folder."""
    model = tiny_model(seed, hu_windows=hu_windows)
    manifest = build_manifest(
        model,
        model_name=model_name,
        model_version=model_version,
        backbone_weights="included",
        backbone_source=backbone_source,
    )
    return save_checkpoint(model, path, manifest)


def assert_same_hidden_states(a, b, pixel_values, atol: float = 1e-6) -> None:
    """Backbones ``a`` and ``b`` give the same last hidden states for ``pixel_values`` (within
    ``atol``): e.g. a backbone and its copy given a window or a stem that starts at zero."""
    with torch.no_grad():
        torch.testing.assert_close(
            a(pixel_values=pixel_values).last_hidden_state,
            b(pixel_values=pixel_values).last_hidden_state,
            rtol=0,
            atol=atol,
        )
