"""Load a HyperCT model for use: the embedded demo by default, on the best available device, with
fp32 (default) or bf16 backbone weights on a CPU (``WEIGHTS_DTYPES``)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from hyperct.checkpoint import Manifest, load_checkpoint
from hyperct.device import cpu_has_native_bf16, resolve_device
from hyperct.errors import CheckpointError
from hyperct.findings import catalogue
from hyperct.network.hyperct import HyperCT

# Backbone weight dtypes for inference (``load_model(dtype=...)``, ``--dtype``). "bf16" is for CPUs:
# the backbone runs in bf16 end to end (``HyperCT.to_inference_dtype``), 1.6-5x faster than fp32 on
# CPUs with bf16 matmuls, probabilities within ~0.04 of fp32 (demo v0.10: 0.025 at most, v0.9: 0.035, v0.8: 0.029; inference_cpu_demo_v010.json);
# a call within that of its threshold can flip. On a GPU the pass already runs under bf16 autocast.
WEIGHTS_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


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
    weights_dtype: str = "fp32"  # the backbone's weights: "fp32" or "bf16" (``WEIGHTS_DTYPES``)

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
        weights = ", bf16 backbone weights" if self.weights_dtype == "bf16" else ""
        return f"{self.name} v{self.version} on {self.device}{weights}{tag}"


def load_model(
    model_dir: str | Path | None = None,
    *,
    backbone_dir: str | Path | None = None,
    device: str | torch.device | None = "auto",
    dtype: str = "fp32",
) -> LoadedModel:
    """Load a checkpoint folder (default: the embedded demo) onto ``device``.

    ``dtype`` "bf16" puts the backbone's weights in bf16 on a CPU (``WEIGHTS_DTYPES``; inference
    only). On a GPU it changes nothing (the pass runs under bf16 autocast there): the weights stay
    fp32 and ``weights_dtype`` says so; the CLI refuses ``--dtype bf16`` with an explicit
    ``--device cuda``.
    """
    if dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(WEIGHTS_DTYPES)}, got {dtype!r}")
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
    weights_dtype = dtype if dev.type == "cpu" else "fp32"
    if weights_dtype != "fp32":
        model.to_inference_dtype(WEIGHTS_DTYPES[weights_dtype])
    return LoadedModel(
        model=model,
        manifest=manifest,
        directory=directory,
        device=dev,
        is_demo=bool(is_demo or manifest.raw.get("demo")),
        weights_dtype=weights_dtype,
    )


def dtype_note(requested: str, loaded: LoadedModel, cpuinfo: str | None = None) -> str | None:
    """A line for stderr when ``--dtype bf16`` was asked for but the weights stayed fp32 (the model
    went to a GPU with ``--device auto``), or when they are bf16 on a CPU without bf16 matmuls
    (``cpu_has_native_bf16``: there bf16 is several times slower than fp32); None otherwise."""
    if requested != "bf16":
        return None
    if loaded.weights_dtype != "bf16":
        return (
            f"--dtype bf16 ignored: the model runs on {loaded.device}, where the pass already uses bf16 "
            "autocast (backbone weights stay fp32)"
        )
    return slow_bf16_note(cpuinfo)


def slow_bf16_note(cpuinfo: str | None = None) -> str | None:
    """A line for stderr when bf16 weights will run on this CPU without bf16 matmul instructions
    (``cpu_has_native_bf16``); None where it has them or that cannot be told."""
    if cpu_has_native_bf16(cpuinfo) is False:
        return (
            "--dtype bf16 is slow on this CPU: it has no bf16 matmul instructions (no AVX512-BF16 or "
            "AMX flag), so PyTorch emulates them, several times slower than fp32; leave --dtype out"
        )
    return None
