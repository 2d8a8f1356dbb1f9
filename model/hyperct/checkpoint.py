"""HyperCT checkpoints: a folder with ``model.safetensors`` + ``manifest.json``. Loading never unpickles.

``manifest.json`` (format_version 1) records: model name and version, the findings (task order),
the architecture (``HyperCTConfig`` incl. the backbone configuration), where the backbone weights
come from (``included`` in this folder's safetensors, or ``external``: a DINOv3 folder the user
passes, with its sha256 when known), training hyperparameters, per-finding thresholds, the
training-data description, metrics, intended use, and the sha256 of ``model.safetensors``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hyperct import INTENDED_USE, __version__
from hyperct.errors import BackboneWeightsError, CheckpointError
from hyperct.filemodes import set_default_modes
from hyperct.findings import catalogue
from hyperct.model.backbone import (
    backbone_config,
    build_backbone,
    config_to_dict,
    load_backbone,
    load_backbone_state,
)
from hyperct.model.network import HyperCT, HyperCTConfig

FORMAT = "hyperct-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Manifest:
    """The parsed ``manifest.json`` (``raw`` keeps every field, including unknown ones)."""

    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.raw.get("model_name", "HyperCT")

    @property
    def version(self) -> str:
        return str(self.raw.get("model_version", "0"))

    @property
    def findings(self) -> list[str]:
        return list(self.raw["findings"])

    @property
    def thresholds(self) -> dict[str, float]:
        return {k: float(v) for k, v in (self.raw.get("thresholds") or {}).items()}

    @property
    def weights_sha256(self) -> str:
        return self.raw["weights_sha256"]

    @property
    def architecture(self) -> HyperCTConfig:
        return HyperCTConfig.from_dict(self.raw["architecture"])

    @property
    def backbone(self) -> dict:
        return dict(self.raw.get("backbone") or {})


def build_manifest(
    model: HyperCT,
    *,
    model_name: str,
    model_version: str,
    backbone_weights: str,
    backbone_source: str,
    thresholds: dict[str, float] | None = None,
    threshold_method: str = "default 0.5 (not calibrated)",
    training: dict | None = None,
    training_data: str = "",
    metrics: dict | None = None,
    intended_use: str = INTENDED_USE,
    backbone_sha256: str | None = None,
    extra: dict | None = None,
) -> dict:
    ids = catalogue().ids
    arch = model.config.to_dict()
    arch["backbone"] = config_to_dict(model.backbone.config)
    backbone_name = model.config.backbone if isinstance(model.config.backbone, str) else None
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "model_version": model_version,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "software": {"name": "hyperct-viewer", "version": __version__},
        "findings": ids,
        "catalogue_version": catalogue().version,
        "architecture": arch,
        "backbone": {
            "config_name": backbone_name or _guess_config_name(arch["backbone"]),
            "weights": backbone_weights,
            "source": backbone_source,
            "trained": model.backbone_trainable,
            **({"sha256": backbone_sha256} if backbone_sha256 else {}),
        },
        "parameters": model.parameter_counts(),
        "thresholds": {k: float((thresholds or {}).get(k, 0.5)) for k in ids},
        "threshold_method": threshold_method,
        "training": training or {},
        "training_data": training_data,
        "metrics": metrics or {},
        "intended_use": intended_use,
        "weights_file": WEIGHTS,
    }
    if extra:
        manifest.update(extra)
    return manifest


def _guess_config_name(cfg: dict) -> str:
    from hyperct.model.backbone import BACKBONE_CONFIGS

    for name, values in BACKBONE_CONFIGS.items():
        if all(cfg.get(k) == v for k, v in values.items()):
            return name
    return "custom"


def model_tensors(model: HyperCT, *, include_backbone: bool) -> dict[str, torch.Tensor]:
    from hyperct.model.backbone import backbone_state_for_saving

    tensors = {f"hypernet.{k}": v for k, v in model.hypernet.state_dict().items()}
    tensors.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    if include_backbone:
        tensors.update({f"backbone.{k}": v for k, v in backbone_state_for_saving(model.backbone).items()})
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def save_checkpoint(
    model: HyperCT,
    directory: str | Path,
    manifest: dict,
    *,
    overwrite: bool = False,
    extra_files: dict[str, str | bytes] | None = None,
) -> Path:
    """Write the checkpoint folder atomically (temp folder, then rename). Refuses to overwrite unless asked."""
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise CheckpointError(
            "the checkpoint folder already exists", path=directory, hint="pass overwrite=True (--overwrite)"
        )
    include_backbone = manifest["backbone"]["weights"] == "included"
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file(
            model_tensors(model, include_backbone=include_backbone),
            str(tmp / WEIGHTS),
            metadata={"format": "pt"},
        )
        manifest = dict(manifest, weights_sha256=sha256_file(tmp / WEIGHTS))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        for name, content in (extra_files or {}).items():
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(tmp / name, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
                f.write(content)
        set_default_modes(tmp)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_manifest(directory: str | Path) -> Manifest:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(
            "checkpoint folder does not exist",
            path=directory,
            hint="pass a folder with manifest.json + model.safetensors",
        )
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"{MANIFEST} is missing",
            path=directory,
            hint="a HyperCT checkpoint folder holds manifest.json and model.safetensors",
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{MANIFEST} is not valid JSON ({exc})", path=path) from exc
    if raw.get("format") != FORMAT:
        raise CheckpointError(
            f"{MANIFEST} is not a HyperCT manifest (format={raw.get('format')!r})", path=path
        )
    if int(raw.get("format_version", -1)) > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format_version {raw.get('format_version')} is newer than this software supports ({FORMAT_VERSION})",
            path=path,
            hint="upgrade hyperct-viewer",
        )
    for key in ("findings", "architecture", "backbone", "weights_sha256"):
        if key not in raw:
            raise CheckpointError(f"{MANIFEST} lacks the field {key!r}", path=path)
    ids = catalogue().ids
    if list(raw["findings"]) != ids:
        raise CheckpointError(
            f"checkpoint findings ({len(raw['findings'])}) differ from this software's 25-finding catalogue",
            path=path,
            hint="use a checkpoint trained on the HyperCT findings catalogue, in catalogue order",
        )
    return Manifest(raw)


def load_checkpoint(
    directory: str | Path,
    *,
    backbone_dir: str | Path | None = None,
    map_location: str | torch.device = "cpu",
    verify_sha256: bool = True,
) -> tuple[HyperCT, Manifest]:
    """Rebuild a ``HyperCT`` from a checkpoint folder (safetensors only; nothing is unpickled)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    weights = directory / manifest.raw.get("weights_file", WEIGHTS)
    if not weights.is_file():
        raise CheckpointError(f"{weights.name} is missing", path=directory)
    if verify_sha256:
        digest = sha256_file(weights)
        if digest != manifest.weights_sha256:
            raise CheckpointError(
                f"{weights.name} sha256 {digest[:12]}... does not match the manifest ({manifest.weights_sha256[:12]}...)",
                path=weights,
                hint="the weights file is corrupted or was replaced; re-copy the checkpoint folder",
            )
    try:
        with safe_open(str(weights), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{weights.name} cannot be read ({exc})", path=weights) from exc

    arch = manifest.architecture
    bb = manifest.backbone
    if bb.get("weights") == "included":
        backbone = build_backbone(backbone_config(arch.backbone))
        load_backbone_state(
            backbone,
            {k[len("backbone.") :]: v for k, v in tensors.items() if k.startswith("backbone.")},
            source=str(weights),
        )
    else:
        if backbone_dir is None:
            raise CheckpointError(
                f"this checkpoint uses external backbone weights ({bb.get('source', 'DINOv3')})",
                path=directory,
                hint="pass the local DINOv3 folder with --backbone DIR (config.json + model.safetensors)",
            )
        backbone = load_backbone(backbone_dir)
        want = backbone_config(arch.backbone)
        have = backbone.config
        for key in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "patch_size",
            "num_register_tokens",
        ):
            if getattr(want, key) != getattr(have, key):
                raise BackboneWeightsError(
                    f"backbone {key}={getattr(have, key)} but the checkpoint was trained with {getattr(want, key)}",
                    path=backbone_dir,
                    hint=f"use the backbone the checkpoint names: {bb.get('source', 'see manifest.json')}",
                )
        if bb.get("sha256"):
            digest = sha256_file(Path(backbone_dir) / "model.safetensors")
            if digest != bb["sha256"]:
                raise BackboneWeightsError(
                    f"backbone model.safetensors sha256 {digest[:12]}... differs from the one the checkpoint was "
                    f"trained with ({bb['sha256'][:12]}...)",
                    path=backbone_dir,
                    hint=f"use {bb.get('source', 'the backbone named in manifest.json')}",
                )
    model = HyperCT(arch, backbone=backbone)
    model.config.backbone = arch.backbone
    for prefix, module in (("hypernet.", model.hypernet), ("head.", model.head)):
        part = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        expected = module.state_dict()
        missing = sorted(set(expected) - set(part))
        unexpected = sorted(set(part) - set(expected))
        if missing or unexpected:
            raise CheckpointError(
                f"{weights.name}: {prefix[:-1]} tensors do not match the architecture "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})",
                path=weights,
            )
        for k, v in part.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise CheckpointError(
                    f"{weights.name}: tensor {prefix}{k} has shape {tuple(v.shape)}, architecture needs {tuple(expected[k].shape)}",
                    path=weights,
                )
        module.load_state_dict(part)
    model.set_backbone_trainable(False)
    return model.to(map_location).eval(), manifest


# Fields that describe the weights themselves: never changed by ``update_manifest``.
_FROZEN_FIELDS = (
    "format",
    "format_version",
    "findings",
    "architecture",
    "backbone",
    "weights_sha256",
    "weights_file",
)


def update_manifest(directory: str | Path, **fields: Any) -> dict:
    """Rewrite ``manifest.json`` with ``fields`` changed (atomic: temp file + rename).

    For metadata such as thresholds, metrics or notes; the weights file is not touched, and the
    fields that describe it (architecture, backbone, findings, weights_sha256, ...) may not change.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    frozen = sorted(set(fields) & set(_FROZEN_FIELDS))
    if frozen:
        raise CheckpointError(
            f"update_manifest cannot change {', '.join(frozen)} (they describe the weights)",
            path=directory,
            hint="save a new checkpoint with save_checkpoint instead",
        )
    if "thresholds" in fields:
        ids = catalogue().ids
        th = {k: float(v) for k, v in dict(fields["thresholds"]).items()}
        unknown = sorted(set(th) - set(ids))
        if unknown:
            raise CheckpointError(f"thresholds for unknown findings: {', '.join(unknown)}", path=directory)
        bad = [k for k, v in th.items() if not 0.0 <= v <= 1.0]
        if bad:
            raise CheckpointError(
                f"thresholds must be probabilities in [0, 1] ({bad[0]}: {th[bad[0]]})", path=directory
            )
        fields["thresholds"] = {k: th.get(k, manifest.thresholds.get(k, 0.5)) for k in ids}
    raw = dict(manifest.raw, **fields)
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(raw, indent=2) + "\n")
        set_default_modes(tmp)
        os.replace(tmp, directory / MANIFEST)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return raw
