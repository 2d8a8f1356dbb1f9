"""Load a HyperCT model for use: the embedded demo by default, on the best available device."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from hyperct.checkpoint import Manifest, load_checkpoint
from hyperct.device import resolve_device
from hyperct.errors import CheckpointError
from hyperct.findings import catalogue
from hyperct.network.hyperct import HyperCT


def demo_model_dir() -> Path:
    """The embedded demo checkpoint (trained on synthetic phantoms; not a medical device)."""
    return Path(str(resources.files("hyperct.assets").joinpath("demo_model")))


@dataclass
class LoadedModel:
    """A ready-to-use model with its manifest, on a device."""

    model: HyperCT
    manifest: Manifest
    directory: Path
    device: torch.device
    is_demo: bool

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def weights_sha256(self) -> str:
        return self.manifest.weights_sha256

    @property
    def thresholds(self) -> np.ndarray:
        th = self.manifest.thresholds
        return np.array([th.get(fid, 0.5) for fid in catalogue().ids], dtype=np.float64)

    def describe(self) -> str:
        tag = " [DEMO: synthetic training data, no clinical validity]" if self.is_demo else ""
        return f"{self.name} v{self.version} on {self.device}{tag}"


def load_model(
    model_dir: str | Path | None = None,
    *,
    backbone_dir: str | Path | None = None,
    device: str | torch.device | None = "auto",
) -> LoadedModel:
    """Load a checkpoint folder (default: the embedded demo) onto ``device``."""
    dev = resolve_device(device)
    is_demo = model_dir is None
    directory = demo_model_dir() if is_demo else Path(model_dir)
    if is_demo and not (directory / "manifest.json").is_file():
        raise CheckpointError(
            "the embedded demo model is missing from this installation",
            path=directory,
            hint="reinstall hyperct-viewer, or pass --model DIR with a trained checkpoint",
        )
    model, manifest = load_checkpoint(directory, backbone_dir=backbone_dir, map_location=dev)
    return LoadedModel(
        model=model,
        manifest=manifest,
        directory=directory,
        device=dev,
        is_demo=bool(is_demo or manifest.raw.get("demo")),
    )
